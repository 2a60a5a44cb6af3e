"""Post-process definitions and upload presets written over the API, in the metadata database.

Two tables, created on first use (like :mod:`sinks.indexes.face_names`):

``api_definitions``
    one row per (``kind``, ``key``): ``kind`` is ``postprocess`` or ``preset``, ``key`` the
    case-folded name, ``name`` the name as given, ``body_json`` the definition as the API
    accepted it (a JSON object), ``version`` (1 on create, + 1 per replace), timestamps.
``api_definitions_version``
    one row (``name = 'all'``): a counter moved by one in the same transaction as every create,
    replace and delete. Whoever holds a set of definitions knows it is current when the counter
    says the version it was loaded at; an upload records the counter it was accepted under.

Only portable SQL (SQLite and PostgreSQL). The checks (the post-process checker, the preset
model) happen before these functions are called: this module stores what it is given.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sinks.store.metadata import now_ms

Kind = Literal["postprocess", "preset"]
KINDS: tuple[Kind, ...] = ("postprocess", "preset")

_meta = sa.MetaData()

api_definitions = sa.Table(
    "api_definitions",
    _meta,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("body_json", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

api_definitions_version = sa.Table(
    "api_definitions_version",
    _meta,
    sa.Column("name", sa.String(16), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

_CREATED: weakref.WeakSet[Engine] = weakref.WeakSet()
_LOCK = threading.Lock()


class DefinitionExists(Exception):
    """A create named a definition that is already stored."""


class DefinitionMissing(Exception):
    """A replace or delete named a definition that is not stored."""


@dataclass(frozen=True)
class Stored:
    """One stored definition."""

    kind: Kind
    name: str
    body: dict[str, Any]
    version: int
    created_at: int
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "definition": self.body,
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class Snapshot:
    """Every stored definition at one counter value (read in one transaction)."""

    version: int
    postprocesses: tuple[Stored, ...]
    presets: tuple[Stored, ...]


def ensure(engine: Engine) -> None:
    """Create the tables and the counter row (idempotent; a lost creation race is fine)."""
    with _LOCK:
        if engine in _CREATED:
            return
        for attempt in range(5):
            try:
                _meta.create_all(engine, checkfirst=True)
                with engine.begin() as conn:
                    if conn.execute(sa.select(api_definitions_version.c.version).where(
                            api_definitions_version.c.name == "all")).first() is None:
                        conn.execute(sa.insert(api_definitions_version).values(
                            name="all", version=0))
                break
            except (sa.exc.IntegrityError, sa.exc.OperationalError,
                    sa.exc.ProgrammingError) as exc:
                text = str(exc).lower()
                if attempt == 4 or not ("already exists" in text or "duplicate" in text
                                        or "unique" in text):
                    raise
        _CREATED.add(engine)


def _row(kind: Kind, row: Any) -> Stored:
    return Stored(kind=kind, name=str(row.name), body=json.loads(row.body_json),
                  version=int(row.version), created_at=int(row.created_at),
                  updated_at=int(row.updated_at))


def _counter(conn: Connection) -> int:
    found = conn.execute(sa.select(api_definitions_version.c.version).where(
        api_definitions_version.c.name == "all")).scalar()
    return int(found or 0)


def _bump(conn: Connection) -> int:
    conn.execute(sa.update(api_definitions_version)
                 .where(api_definitions_version.c.name == "all")
                 .values(version=api_definitions_version.c.version + 1))
    return _counter(conn)


def current_version(engine: Engine) -> int:
    """The counter: moved by every create, replace and delete (0: nothing ever written)."""
    ensure(engine)
    with engine.connect() as conn:
        return _counter(conn)


def snapshot(engine: Engine) -> Snapshot:
    """Every stored definition and the counter they belong to, in creation order."""
    ensure(engine)
    with engine.begin() as conn:
        version = _counter(conn)
        rows = conn.execute(sa.select(api_definitions).order_by(
            api_definitions.c.created_at, api_definitions.c.key)).all()
    pps = tuple(_row("postprocess", r) for r in rows if r.kind == "postprocess")
    presets = tuple(_row("preset", r) for r in rows if r.kind == "preset")
    return Snapshot(version, pps, presets)


def get(engine: Engine, kind: Kind, name: str) -> Stored | None:
    ensure(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_definitions).where(
            api_definitions.c.kind == kind,
            api_definitions.c.key == name.casefold())).first()
    return None if row is None else _row(kind, row)


def list_all(engine: Engine, kind: Kind) -> list[Stored]:
    ensure(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(api_definitions).where(api_definitions.c.kind == kind)
                            .order_by(api_definitions.c.created_at, api_definitions.c.key)).all()
    return [_row(kind, r) for r in rows]


def create(engine: Engine, kind: Kind, name: str, body: dict[str, Any]) -> tuple[Stored, int]:
    """Store a new definition (version 1); the counter after it. :class:`DefinitionExists`
    when ``name`` (case-insensitive) is taken."""
    ensure(engine)
    ts = now_ms()
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(api_definitions).values(
                kind=kind, key=name.casefold(), name=name, body_json=json.dumps(body),
                version=1, created_at=ts, updated_at=ts))
            counter = _bump(conn)
    except sa.exc.IntegrityError as exc:
        raise DefinitionExists(f"{kind} {name!r} already exists") from exc
    return Stored(kind, name, body, 1, ts, ts), counter


def replace(engine: Engine, kind: Kind, name: str, body: dict[str, Any], *,
            create_missing: bool = False) -> tuple[Stored, int]:
    """Replace a stored definition (version + 1); with ``create_missing`` a missing one is
    created (version 1). The counter after it. :class:`DefinitionMissing` otherwise."""
    ensure(engine)
    ts = now_ms()
    key = name.casefold()
    with engine.begin() as conn:
        row = conn.execute(sa.select(api_definitions).where(
            api_definitions.c.kind == kind, api_definitions.c.key == key)).first()
        if row is None:
            if not create_missing:
                raise DefinitionMissing(f"no {kind} {name!r}")
        else:
            done = conn.execute(sa.update(api_definitions).where(
                api_definitions.c.kind == kind, api_definitions.c.key == key,
                api_definitions.c.version == row.version,
            ).values(name=name, body_json=json.dumps(body), version=row.version + 1,
                     updated_at=ts)).rowcount
            if done:
                counter = _bump(conn)
                return Stored(kind, name, body, int(row.version) + 1, int(row.created_at),
                              ts), counter
    if row is not None:  # a concurrent replace won the row: ours goes on top of it
        return replace(engine, kind, name, body, create_missing=create_missing)
    try:
        return create(engine, kind, name, body)
    except DefinitionExists:  # created concurrently: replace it
        return replace(engine, kind, name, body)


def delete(engine: Engine, kind: Kind, name: str) -> int:
    """Remove a stored definition; the counter after it. :class:`DefinitionMissing` when
    there is none."""
    ensure(engine)
    with engine.begin() as conn:
        done = conn.execute(sa.delete(api_definitions).where(
            api_definitions.c.kind == kind,
            api_definitions.c.key == name.casefold())).rowcount
        if not done:
            raise DefinitionMissing(f"no {kind} {name!r}")
        return _bump(conn)
