"""An upload's cheap tasks travel as one request on the real broker: with one worker it
carries the others and their results are merged together; with workers that each run some of
them (``DARKROOM_TASKS``), the worker that gets the bundle forwards what it does not run and the
asset still completes with every result."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.kafka.broker import free_port
from agents.kafka.producer import OutputProducer
from schemas.records import TaskRequest, UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import PG_URL, TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_faults import pg_database  # noqa: F401 - a fixture
from tests.integration.streams.test_pipeline import photo
from tests.integration.streams.test_poison_pipeline import wait_ready

pytestmark = pytest.mark.integration

CHEAP = ("validate-image", "blurhash", "dominant-colors")
CONFIG = "postprocesses:\n" + "".join(
    f"  - {{name: {t}, task: {t}, trigger: \"format contains JPEG\"}}\n" for t in CHEAP)


def upload(w: WorkerEnv, prefix: str) -> str:
    path = photo(w.inbox / f"b-{uuid.uuid4().hex[:6]}.jpg", seed=5)
    ev = UploadEvent(asset_id=f"b-{uuid.uuid4().hex[:8]}", uri=LocalStorage.uri_for(path),
                     filename=path.name, content_type="image/jpeg", uploaded_at=now_ms())
    p = OutputProducer(w.bootstrap)
    p.send(f"{prefix}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    return ev.asset_id


def started(bootstrap: str, base: Path, extra: dict[str, str]) -> WorkerEnv:
    port = free_port()
    w = start_worker(bootstrap, base, extra_env={**extra, "DARKROOM_WEB_PORT": str(port)})
    w.extra["web"] = f"http://127.0.0.1:{port}"
    return w


def env(prefix: str, config: Path, **more: str) -> dict[str, str]:
    return {"DARKROOM_TOPIC_PREFIX": prefix, "DARKROOM_WORKER_ID": f"darkroom-{prefix}",
            "DARKROOM_POSTPROCESS_CONFIG": str(config), "DARKROOM_TASK_TIMEOUT_S": "20", **more}


def test_one_worker_runs_the_bundle_as_one_request(kafka_bootstrap: str, tmp_path: Path,
                                                   read_topic: Callable[[str], TopicReader]
                                                   ) -> None:
    prefix = f"bun{uuid.uuid4().hex[:4]}"
    config = tmp_path / "pp.yaml"
    config.write_text(CONFIG)
    w = started(kafka_bootstrap, tmp_path, env(prefix, config))
    try:
        wait_ready(w)
        aid = upload(w, prefix)
        asset = w.wait_assets([aid])[aid]
        assert asset.status == "complete", asset.to_json()
        assert {k: v["status"] for k, v in asset.results.items()} == dict.fromkeys(CHEAP, "ok")
        # the results, flushed together, make one version when one fetch brings them to the
        # sink (the usual case) and two when a fetch splits them: never one each
        assert asset.version in (2, 3)
        carrier = read_topic(f"{prefix}.tasks.{CHEAP[0]}")
        mine = [m for m in carrier.read_until(
            lambda ms: any(m.key() == aid.encode() for m in ms), timeout=30)
            if m.key() == aid.encode()]
        assert len(mine) == 1
        members = TaskRequest.from_bytes(mine[0].value()).members()
        assert sorted(m.task for m in members) == sorted(CHEAP[1:])
    finally:
        stop_worker(w)


def test_members_a_worker_does_not_run_are_forwarded(kafka_bootstrap: str, tmp_path: Path,
                                                     pg_database: str) -> None:  # noqa: F811
    prefix = f"bunf{uuid.uuid4().hex[:4]}"
    config = tmp_path / "pp.yaml"
    config.write_text(CONFIG)
    # two worker processes share one database: PostgreSQL (SQLite locks under load)
    db = {"DARKROOM_DATABASE_URL": f"{PG_URL.rsplit('/', 1)[0]}/{pg_database}"}
    a = started(kafka_bootstrap, tmp_path / "a", env(
        prefix, config, DARKROOM_TASKS='["validate-image"]', **db))
    b = started(kafka_bootstrap, tmp_path / "b", env(
        prefix, config, DARKROOM_TASKS='["blurhash", "dominant-colors"]', **db,
        DARKROOM_AGENTS='["tasks"]', DARKROOM_DATA_DIR=str(a.data_dir),
        DARKROOM_FILE_ROOTS=f'["{a.inbox}"]'))
    try:
        wait_ready(a)
        wait_ready(b)
        aid = upload(a, prefix)
        asset = a.wait_assets([aid])[aid]
        assert asset.status == "complete", asset.to_json() + a.log_tail() + b.log_tail()
        assert {k: v["status"] for k, v in asset.results.items()} == dict.fromkeys(CHEAP, "ok")
    finally:
        stop_worker(b)
        stop_worker(a)
