"""The split guard's decision and identities (the real-broker test: tests/integration/streams/
test_split_guard.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from agents.composition import Runtime
from agents.members import FIX, Heartbeat, Resource, conflicts, database_identity, refusal
from agents.members import storage_identity as storage_of
from agents.settings import Settings
from tests.conftest import PG_URL, _pg_available

DB, OTHER_DB = Resource("db1", "postgresql://u@h/db"), Resource("db2", "SQLite file /x on h2")
ST = Resource("local:1", "local folder /o on h")


def hb(nonce: str, state: str = "member", age_s: float = 0.0, db: Resource = DB,
       storage: Resource = ST, now: int = 1_000_000) -> Heartbeat:
    return Heartbeat(worker=f"h:{nonce}", host="h", nonce=nonce, state=state,
                     at_ms=now - int(age_s * 1000), interval_s=5.0, database=db, storage=storage)


def test_only_live_workers_with_other_resources_conflict() -> None:
    mine = hb("me", "joining")
    seen = {"me": mine, "same": hb("same"), "gone": hb("gone", "left", db=OTHER_DB),
            "stale": hb("stale", age_s=16, db=OTHER_DB), "other": hb("other", age_s=14,
                                                                    db=OTHER_DB),
            "store": hb("store", storage=Resource("s3 x/b", "s3 x/b"))}
    assert [h.nonce for h in conflicts(mine, seen, 1_000_000)] == ["other", "store"]
    text = refusal(mine, conflicts(mine, seen, 1_000_000), "darkroom", 1_000_000)
    assert "SQLite file /x on h2" in text and "heartbeat 14s ago" in text and FIX in text
    assert "DARKROOM_DATABASE_URL" in FIX and "PostgreSQL" in FIX and "S3" in FIX


def test_heartbeats_round_trip_and_junk_is_ignored() -> None:
    h = hb("a")
    assert Heartbeat.from_bytes(h.to_bytes()) == h
    for junk in (None, b"", b"{}", b"[1]", b"\xff", b'{"worker": 1}'):
        assert Heartbeat.from_bytes(junk) is None


def test_sqlite_files_differ_and_one_file_agrees(tmp_path: Path) -> None:
    a = Runtime(Settings(data_dir=tmp_path / "a"))
    b = Runtime(Settings(data_dir=tmp_path / "b"))
    a2 = Runtime(Settings(data_dir=tmp_path / "a"))
    try:
        ida, idb, ida2 = database_identity(a), database_identity(b), database_identity(a2)
        assert ida.id != idb.id and ida == ida2
        assert str((tmp_path / "a" / "darkroom.db").resolve()) in ida.where
        sa_, sb, sa2 = storage_of(a), storage_of(b), storage_of(a2)
        assert sa_.id != sb.id and sa_ == sa2
        s3 = Runtime(Settings(data_dir=tmp_path / "c", storage_backend="s3",
                              s3_endpoint="http://S3.example:9000/", s3_bucket="media"))
        assert storage_of(s3).id == "s3 http://s3.example:9000/media"
    finally:
        for rt in (a, b, a2):
            rt.close()


def test_two_urls_of_one_postgresql_agree() -> None:
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    name = f"darkroom_members_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    base = PG_URL.rsplit("/", 1)[0]
    try:
        one = Runtime(Settings(database_url=f"{base}/{name}"))
        two = Runtime(Settings(database_url=f"{base.replace('127.0.0.1', 'localhost')}/{name}"))
        try:
            assert database_identity(one).id == database_identity(two).id
        finally:
            one.close()
            two.close()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
