"""Prebuilt statements for the store's hot paths (router, task start, merge, completion).

The one place for the store's fast statements: the memoised builders below and the driver's
executemany for bulk inserts (:func:`insert_many`).

Building a SQLAlchemy Core statement (``sa.update(t).where(t.c.x == v).values(...)``) for every
call costs more than SQLite's work on it: coercing each operand, then hashing the new construct
into a cache key to find its compiled form — about 200 µs for a one-row SELECT and 260 µs for
an UPDATE on this project's machines, against 80 and 40 µs for the same statement built once
with bound parameters (``benchmarks/store_ops.py``). The builders here are memoised per table
and column names, so each shape is built, keyed and compiled once per process; the values go
in as parameters (typed by their columns, as before).

Parameter names are prefixed (``w_`` for the WHERE keys, ``v_`` for the SET columns) because
SQLAlchemy reserves a column's own name for its automatic binding in ``VALUES``/``SET``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping


def _where(table: sa.Table, keys: tuple[str, ...]) -> list[sa.ColumnElement[bool]]:
    return [table.c[k] == sa.bindparam(f"w_{k}", type_=table.c[k].type) for k in keys]


@functools.cache
def select_by(table: sa.Table, keys: tuple[str, ...], for_update: bool = False) -> sa.Select[Any]:
    """``SELECT * FROM table WHERE k = :w_k AND ...`` (``FOR UPDATE`` where the database has it)."""
    stmt = sa.select(table).where(*_where(table, keys))
    return stmt.with_for_update() if for_update else stmt


@functools.cache
def select_in(table: sa.Table, key: str) -> sa.Select[Any]:
    """``SELECT * FROM table WHERE key IN :w_in`` (an expanding parameter: one cached shape
    for any number of values)."""
    return sa.select(table).where(table.c[key].in_(sa.bindparam("w_in", expanding=True)))


@functools.cache
def update_by(table: sa.Table, keys: tuple[str, ...], cols: tuple[str, ...]) -> sa.Update:
    """``UPDATE table SET c = :v_c, ... WHERE k = :w_k AND ...``."""
    return (sa.update(table).where(*_where(table, keys))
            .values({c: sa.bindparam(f"v_{c}", type_=table.c[c].type) for c in cols}))


def params(where: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {f"w_{k}": v for k, v in where.items()}
    if values:
        out.update({f"v_{k}": v for k, v in values.items()})
    return out


def rows(conn: Connection, table: sa.Table, *, for_update: bool = False,
         **where: Any) -> Sequence[RowMapping]:
    """The rows of ``table`` whose columns equal ``where``."""
    stmt = select_by(table, tuple(where), for_update)
    return conn.execute(stmt, params(where)).mappings().all()


def first(conn: Connection, table: sa.Table, *, for_update: bool = False,
          **where: Any) -> RowMapping | None:
    """The first row of ``table`` whose columns equal ``where`` (None: there is none)."""
    stmt = select_by(table, tuple(where), for_update)
    return conn.execute(stmt, params(where)).mappings().first()


def rows_in(conn: Connection, table: sa.Table, key: str,
            values: Sequence[Any]) -> Sequence[RowMapping]:
    """The rows of ``table`` whose ``key`` is one of ``values``."""
    if not values:
        return []
    return conn.execute(select_in(table, key), {"w_in": list(values)}).mappings().all()


def update(conn: Connection, table: sa.Table, where: Mapping[str, Any],
           values: Mapping[str, Any]) -> int:
    """``UPDATE table SET values WHERE where``; returns the number of rows matched."""
    stmt = update_by(table, tuple(where), tuple(values))
    return int(conn.execute(stmt, params(where, values)).rowcount)


def insert_many(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT many rows through the driver's executemany: SQLAlchemy's per-row parameter
    processing costs more than SQLite's insert itself on the router's hot path."""
    cols = [c.name for c in table.columns]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) "
           f"VALUES ({', '.join([mark] * len(cols))})")
    conn.exec_driver_sql(sql, [tuple(map(r.get, cols)) for r in rows])
