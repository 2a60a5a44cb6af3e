"""Recovery from faults, on the real broker and PostgreSQL: the database unreachable mid-run (a
loopback proxy the test cuts — the shared server is never stopped), the embedded broker killed
and restarted mid-run, a worker killed with SIGKILL mid-run. In each case no worker exits or
hangs, every asset completes without a manual restart, and the metadata equals a clean run's
(every asset of the same picture has the same results).

The default suite runs a small version; ``DARKROOM_TEST_SCALE=full`` the issue's sizes (300
uploads, 2 workers, a 20 s outage)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image, ImageDraw

from agents.kafka.broker import EmbeddedBroker, free_port
from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import PG_URL, WorkerEnv, _pg_available, start_worker, stop_worker
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration

FULL = os.environ.get("DARKROOM_TEST_SCALE") == "full"
PICTURES = 6


def pictures(inbox: Path) -> list[Path]:
    out = []
    for i in range(PICTURES):
        img = Image.new("RGB", (96 + 8 * i, 64), (40 * i % 255, 90, 200 - 20 * i))
        ImageDraw.Draw(img).ellipse([10, 10, 50 + i * 5, 50], fill=(250, 200 - 30 * i, 20))
        path = inbox / f"pic{i}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def send_uploads(bootstrap: str, prefix: str, pics: list[Path], n: int) -> dict[str, int]:
    """n upload events cycling the pictures; asset id -> picture index."""
    p = OutputProducer(bootstrap)
    ids: dict[str, int] = {}
    for i in range(n):
        pic = pics[i % len(pics)]
        aid = f"f{i:04d}-{uuid.uuid4().hex[:6]}"
        ev = UploadEvent(asset_id=aid, uri=LocalStorage.uri_for(pic), filename=pic.name,
                         content_type="image/jpeg", uploaded_at=now_ms())
        p.send(f"{prefix}.uploads", aid, ev.to_bytes())
        ids[aid] = i % len(pics)
    p.flush_sync()
    return ids


def assert_like_a_clean_run(store: Any, ids: dict[str, int]) -> None:
    """Every asset complete, and assets of the same picture with identical results."""
    assets = store.get_assets(list(ids))
    assert len(assets) == len(ids)
    by_picture: dict[int, dict[str, Any]] = {}
    for aid, pic in ids.items():
        a = assets[aid]
        assert a.status == "complete", (aid, a.status, a.results)
        # (derived outputs are stored per asset: their URIs differ, their presence does not)
        data = {k: {f: (sorted(x) if f == "derived" else x) for f, x in (v["data"] or {}).items()}
                for k, v in a.results.items()}
        assert by_picture.setdefault(pic, data) == data, aid


def wait_done(store: Any, ids: dict[str, int], workers: list[WorkerEnv], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = store.get_assets(list(ids))
        pending = [a for a in found.values() if a.status == "pending"]
        if len(found) == len(ids) and not pending:
            return
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, f"a worker exited:\n" \
                f"{w.log_tail()}"
        assert time.monotonic() < deadline, (
            f"{len(pending)} pending, {len(ids) - len(found)} unknown after {timeout}s:\n"
            f"{workers[0].log_tail(80)}")
        time.sleep(0.5)


def wait_ready(workers: list[WorkerEnv], timeout: float = 90) -> None:
    """Until every worker has joined the group (they share one log file)."""
    deadline = time.monotonic() + timeout
    log = workers[0].log
    assert log is not None
    while log.read_text(errors="replace").count("Worker ready") < len(workers):
        assert time.monotonic() < deadline, workers[0].log_tail()
        time.sleep(0.2)


def done_count(store: Any, ids: dict[str, int]) -> int:
    return sum(1 for a in store.get_assets(list(ids)).values() if a.status != "pending")


@pytest.fixture
def pg_database() -> Iterator[str]:
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    name = f"darkroom_fault_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    yield name
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.slow
def test_a_database_outage_ends_with_every_asset_complete(
        kafka_bootstrap: str, tmp_path: Path, pg_database: str) -> None:
    n, outage, n_workers = (300, 20.0, 2) if FULL else (60, 8.0, 2)
    proxy = Proxy(("127.0.0.1", 5432))
    base_url = PG_URL.rsplit("/", 1)[0]
    via_proxy = base_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    prefix = f"dbout{uuid.uuid4().hex[:4]}"
    env = {"DARKROOM_TOPIC_PREFIX": prefix, "DARKROOM_DATABASE_URL": f"{via_proxy}/{pg_database}",
           "DARKROOM_TASK_TIMEOUT_S": "20"}
    workers = [start_worker(kafka_bootstrap, tmp_path, extra_env=env) for _ in range(n_workers)]
    store = workers[0].store()
    direct = type(store)(f"{base_url}/{pg_database}")  # the test's own view, not via the proxy
    try:
        pics = pictures(workers[0].inbox)
        ids = send_uploads(kafka_bootstrap, prefix, pics, n)
        deadline = time.monotonic() + 120
        while done_count(direct, ids) < n // 5:
            assert time.monotonic() < deadline, workers[0].log_tail()
            time.sleep(0.2)
        proxy.cut()
        time.sleep(outage)
        proxy.restore()
        wait_done(direct, ids, workers, timeout=300 if FULL else 180)
        assert_like_a_clean_run(direct, ids)
        with direct.engine.connect() as conn:  # store trouble was retried, never re-dispatched
            redispatched = conn.execute(sa.text(
                "select count(*) from asset_tasks where dispatches > 1")).scalar_one()
        assert redispatched == 0
    finally:
        for w in workers:
            stop_worker(w)
        direct.close()
        proxy.close()


@pytest.mark.slow
def test_a_restarted_embedded_broker_loses_nothing(tmp_path: Path) -> None:
    """Uploads go through the ingest path (placeholders), as the API's and `darkroom process`'s
    do: what the broker forgot, the database still has."""
    from agents.composition import Runtime
    from agents.ingest import UploadFields, ingest
    from agents.settings import Settings

    n = 120 if FULL else 40
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    env = {"DARKROOM_TOPIC_PREFIX": "brk", "DARKROOM_TASK_TIMEOUT_S": "10"}
    w = start_worker(broker.bootstrap, tmp_path, extra_env=env)
    settings = Settings(kafka_bootstrap=broker.bootstrap, data_dir=w.data_dir,
                        topic_prefix="brk", file_roots=[w.inbox])
    root = Runtime(settings)
    try:
        pics = pictures(w.inbox)
        ids: dict[str, int] = {}
        for i in range(n):
            done = ingest(root, pics[i % len(pics)], f"p{i}.jpg", UploadFields(folder="/brk"))
            ids[done.asset_id] = i % len(pics)
        store = w.store()
        deadline = time.monotonic() + 120
        while done_count(store, ids) < n // 4:
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.2)
        assert broker.proc is not None
        broker.proc.kill()  # everything in flight is gone with it
        broker.proc.wait()
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu2.log").start()
        wait_done(store, ids, [w], timeout=240)
        assert_like_a_clean_run(store, ids)
    finally:
        root.close()
        stop_worker(w)
        broker.stop()


def test_a_worker_killed_mid_run_loses_nothing(
        kafka_bootstrap: str, tmp_path: Path, pg_database: str) -> None:
    n = 200 if FULL else 60
    prefix = f"kill{uuid.uuid4().hex[:4]}"
    env = {"DARKROOM_TOPIC_PREFIX": prefix,
           "DARKROOM_DATABASE_URL": f"{PG_URL.rsplit('/', 1)[0]}/{pg_database}"}
    workers = [start_worker(kafka_bootstrap, tmp_path, extra_env=env) for _ in range(2)]
    store = workers[0].store()
    try:
        wait_ready(workers)
        ids = send_uploads(kafka_bootstrap, prefix, pictures(workers[0].inbox), n)
        deadline = time.monotonic() + 120
        while done_count(store, ids) < n // 4:
            assert time.monotonic() < deadline, workers[0].log_tail()
            time.sleep(0.2)
        victim = workers.pop()
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        wait_done(store, ids, workers, timeout=180)
        assert_like_a_clean_run(store, ids)
    finally:
        for w in workers:
            stop_worker(w)
        store.close()
