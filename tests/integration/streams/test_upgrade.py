"""A rolling upgrade on the real broker: messages encoded with the oldest published schemas (from
schemas/history) are processed by today's agents, and `darkroom replay` over an uploads topic that
holds old and new encodings reprocesses every asset."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from agents.kafka.producer import OutputProducer
from schemas import history
from schemas.records import AssetUpdate, TaskResult, UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import ROOT, TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "upgrade"


@pytest.fixture(scope="module")
def uworker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[WorkerEnv]:
    env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-upgrade"}
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("upgrade"), extra_env=env)
    yield wenv
    stop_worker(wenv)


def oldest(name: str) -> tuple[str, dict[str, Any]]:
    """The first published version of ``name`` (history is listed in publication order in
    git; the oldest is the one with the fewest fields)."""
    found = history.versions(name)
    fp = min(found, key=lambda k: len(found[k]["fields"]))
    return fp, found[fp]


def encode_with(name: str, record: dict[str, Any]) -> bytes:
    fp, raw = oldest(name)
    fields = {f["name"] for f in raw["fields"]}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(raw), {k: v for k, v in record.items() if k in fields})
    return b"\xc3\x01" + int(fp, 16).to_bytes(8, "little") + buf.getvalue()


def upload(w: WorkerEnv, old: bool) -> str:
    path = photo(w.inbox / f"u-{uuid.uuid4().hex[:6]}.jpg", seed=2)
    ev = UploadEvent(asset_id=f"{'old' if old else 'new'}-{uuid.uuid4().hex[:8]}",
                     uri=LocalStorage.uri_for(path), filename=path.name, folder="/upgrade",
                     content_type="image/jpeg", uploaded_at=now_ms())
    value = encode_with("UploadEvent", ev.to_dict()) if old else ev.to_bytes()
    p = OutputProducer(w.bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, value)
    p.flush_sync()
    return ev.asset_id


def test_the_oldest_encodings_are_processed_and_replayed(uworker: WorkerEnv) -> None:
    _fp, raw = oldest("UploadEvent")
    assert len(raw["fields"]) < 21  # really an older shape than today's
    t_from = now_ms()
    old = [upload(uworker, old=True) for _ in range(3)]
    new = [upload(uworker, old=False) for _ in range(2)]
    t_to = now_ms()
    done = uworker.wait_assets(old + new)
    assert all(a.status == "complete" for a in done.values()), {
        k: v.status for k, v in done.items()}

    # a result in the oldest TaskResult encoding: decoded and merged (a duplicate: no change)
    asset = done[old[0]]
    row = asset.results["blurhash"]
    res = TaskResult(request_id=_request_id(uworker, old[0]),
                     asset_id=old[0], task="blurhash", postprocess="blurhash", status="ok",
                     data_json=_json(row["data"]), finished_at=now_ms())
    p = OutputProducer(uworker.bootstrap)
    p.send(f"{PREFIX}.results.blurhash", old[0], encode_with("TaskResult", res.to_dict()))
    p.flush_sync()
    time.sleep(2)
    after = uworker.store().get_asset(old[0])
    assert after is not None and after.version == asset.version  # nothing changed, no error

    # an AssetUpdate in its oldest encoding reads as today's record
    upd = AssetUpdate(asset_id="a", version=3, status="complete", tags=["t"])
    assert AssetUpdate.from_bytes(encode_with("AssetUpdate", upd.to_dict())).tags == ["t"]

    # replay over a topic holding both encodings: every asset of the window again
    out = subprocess.run([sys.executable, "-m", "agents.cli", "replay", "--from", str(t_from),
                          "--to", str(t_to)], env=uworker.env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(_replayed(uworker, set(old + new))) == sorted(old + new)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _request_id(w: WorkerEnv, asset_id: str) -> str:
    import sqlalchemy as sa

    from sinks.store.metadata import asset_tasks

    with w.store().engine.connect() as conn:
        return str(conn.execute(sa.select(asset_tasks.c.request_id).where(
            asset_tasks.c.asset_id == asset_id,
            asset_tasks.c.postprocess == "blurhash")).scalar_one())


def _replayed(w: WorkerEnv, ids: set[str], idle: float = 3.0) -> list[str]:
    reader = TopicReader(w.bootstrap, f"{PREFIX}.uploads")
    try:
        last, seen = time.monotonic(), 0
        while time.monotonic() - last < idle:
            for m in reader.consumer.consume(500, timeout=0.2):
                if m.error() is None:
                    reader.messages.append(m)
            if len(reader.messages) != seen:
                seen, last = len(reader.messages), time.monotonic()
        out = []
        for m in reader.messages:
            ev = UploadEvent.from_bytes(m.value())
            if ev.replay and ev.asset_id in ids:
                out.append(ev.asset_id)
        return out
    finally:
        reader.close()
