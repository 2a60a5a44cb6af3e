"""Names people give to face clusters, kept next to the face-cluster index
(:mod:`sinks.indexes.faces`) in the metadata database.

One table, ``face_cluster_names`` (cluster id -> name, updated_at), created on first use. A name
belongs to a cluster id; the index keeps ids stable across incremental adds and a recluster keeps
the id of the old cluster that gave a new group most of its members, so a name follows its
person. A cluster that disappears (its faces removed) keeps its row: the name comes back if the
id does; :func:`names` only answers for the ids asked about.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sinks.store.metadata import now_ms

MAX_NAME = 200
"""Longest cluster name, in characters."""

_meta = sa.MetaData()

face_cluster_names = sa.Table(
    "face_cluster_names",
    _meta,
    sa.Column("cluster_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(MAX_NAME), nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

_CREATED: weakref.WeakSet[Engine] = weakref.WeakSet()
_LOCK = threading.Lock()


def _ensure(engine: Engine) -> None:
    with _LOCK:
        if engine in _CREATED:
            return
        _meta.create_all(engine, checkfirst=True)
        _CREATED.add(engine)


def clean_name(name: str) -> str:
    """The name with surrounding blanks removed; ValueError when it is too long or holds
    control characters."""
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ValueError(f"a cluster name is at most {MAX_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("a cluster name must not contain control characters")
    return name


def set_name(engine: Engine, cluster_id: int, name: str) -> str | None:
    """Name cluster ``cluster_id`` (an empty name removes it); returns the stored name."""
    name = clean_name(name)
    _ensure(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(face_cluster_names)
                     .where(face_cluster_names.c.cluster_id == cluster_id))
        if not name:
            return None
        conn.execute(sa.insert(face_cluster_names).values(
            cluster_id=cluster_id, name=name, updated_at=now_ms()))
    return name


def names(engine: Engine, cluster_ids: Iterable[int]) -> dict[int, str]:
    """The names of those of ``cluster_ids`` that have one."""
    ids = sorted({int(c) for c in cluster_ids})
    if not ids:
        return {}
    _ensure(engine)
    out: dict[int, str] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(sa.select(face_cluster_names.c.cluster_id,
                                          face_cluster_names.c.name)
                                .where(face_cluster_names.c.cluster_id.in_(ids[start:start
                                                                               + 500])))
            out.update({int(r[0]): str(r[1]) for r in rows})
    return out
