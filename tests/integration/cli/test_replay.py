"""Replay, dead letters, status and metrics on the real broker (issue: replay and operations)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from agents.kafka.broker import free_port
from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from sinks.store.metadata import asset_tasks
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker

pytestmark = pytest.mark.integration

PREFIX = "rptest"


class Ops:
    def __init__(self, bootstrap: str, base: Path) -> None:
        self.bootstrap, self.base = bootstrap, base
        self.web_port = free_port()
        self.worker = self.start("pp_replay_a.yaml")

    def start(self, config: str) -> WorkerEnv:
        env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-rptest",
               "DARKROOM_WEB_PORT": str(self.web_port)}
        return start_worker(self.bootstrap, self.base, config=ROOT / "tests/fixtures" / config,
                            extra_env=env)

    def restart(self, config: str) -> None:
        stop_worker(self.worker)
        self.worker = self.start(config)

    def upload(self, name: str, color: tuple[int, int, int] = (200, 20, 20),
               folder: str = "/r") -> UploadEvent:
        img = self.worker.inbox / f"{name}.png"
        Image.new("RGB", (120, 80), color).save(img)
        ev = UploadEvent(asset_id=f"{name}-{uuid.uuid4().hex[:6]}",
                         uri=LocalStorage.uri_for(img), filename=img.name, folder=folder,
                         uploaded_at=now_ms())
        p = OutputProducer(self.bootstrap)
        p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
        p.flush_sync()
        return ev

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agents.cli", *args], env=self.worker.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def replays_sent(self, ids: set[str]) -> list[str]:
        """Asset ids of replay events on the uploads topic, in order (repeats included)."""
        from tests.conftest import TopicReader

        r = TopicReader(self.bootstrap, f"{PREFIX}.uploads")
        msgs = _drain(r)
        r.close()
        out = []
        for m in msgs:
            ev = UploadEvent.from_bytes(m.value())
            if ev.replay and ev.asset_id in ids:
                out.append(ev.asset_id)
        return out


def _drain(reader: Any, idle: float = 2.0) -> list[Any]:
    last, seen = time.monotonic(), 0
    while time.monotonic() - last < idle:
        for m in reader.consumer.consume(500, timeout=0.2):
            if m.error() is None:
                reader.messages.append(m)
        if len(reader.messages) != seen:
            seen, last = len(reader.messages), time.monotonic()
    return list(reader.messages)


@pytest.fixture(scope="module")
def ops(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    o = Ops(kafka_bootstrap, tmp_path_factory.mktemp("ops"))
    yield o
    stop_worker(o.worker)


def test_replay_missing_runs_only_the_new_task_for_assets_lacking_it(ops: Ops) -> None:
    evs = [ops.upload(f"m{i}", (40 * i, 10, 10)) for i in range(3)]
    ids = [e.asset_id for e in evs]
    before = ops.worker.wait_assets(ids)
    assert all(set(a.results) == {"hash"} for a in before.values())
    ops.restart("pp_replay_b.yaml")  # a new task "colors" joins the configuration
    late = ops.upload("late", (1, 2, 3))  # processed with both tasks already
    ops.worker.wait_assets([late.asset_id])
    dry = ops.cli("replay", "--missing", "colors", "--folder", "/r", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(line.split()[2] for line in dry.stdout.splitlines()
                  if line.startswith("would replay")) == sorted(ids)
    out = ops.cli("replay", "--missing", "colors", "--folder", "/r")
    assert out.returncode == 0, out.stderr
    after = ops.worker.wait_assets(ids, done=lambda a: "colors" in a.results
                                   and a.results["colors"]["status"] == "ok")
    for aid in ids:
        assert after[aid].results["hash"] == before[aid].results["hash"]  # untouched
    assert sorted(ops.replays_sent(set(ids) | {late.asset_id})) == sorted(ids)


def test_replay_asset_restores_a_clean_run(ops: Ops) -> None:
    ev = ops.upload("clean", (9, 99, 199))
    clean = ops.worker.wait_assets([ev.asset_id])[ev.asset_id]
    store = ops.worker.store()
    with store.engine.begin() as conn:  # a bad processor version wrote garbage
        conn.execute(sa.update(asset_tasks).where(asset_tasks.c.asset_id == ev.asset_id,
                                                  asset_tasks.c.postprocess == "hash")
                     .values(data_json='{"blurhash": "garbage"}', result_hash="x"))
    out = ops.cli("replay", "--asset", ev.asset_id)
    assert out.returncode == 0, out.stderr
    fixed = ops.worker.wait_assets(
        [ev.asset_id], done=lambda a: a.results["hash"]["data"] != {"blurhash": "garbage"})
    a = fixed[ev.asset_id]
    assert a.results["hash"]["data"] == clean.results["hash"]["data"]
    assert a.results["colors"]["data"] == clean.results["colors"]["data"]
    assert a.info["blurhash"] == clean.info["blurhash"] and a.status == "complete"


def test_replay_of_a_time_window(ops: Ops) -> None:
    first = [ops.upload(f"w1-{i}", folder="/win") for i in range(2)]
    time.sleep(1.2)
    t_from = now_ms()
    middle = [ops.upload(f"w2-{i}", folder="/win") for i in range(3)]
    t_to = now_ms()
    time.sleep(1.2)
    last = [ops.upload(f"w3-{i}", folder="/win") for i in range(2)]
    everyone = first + middle + last
    ops.worker.wait_assets([e.asset_id for e in everyone])
    out = ops.cli("replay", "--from", str(t_from), "--to", str(t_to))
    assert out.returncode == 0, out.stderr
    sent = ops.replays_sent({e.asset_id for e in everyone})
    assert sorted(sent) == sorted(e.asset_id for e in middle)


def test_interrupted_replay_resumes_without_repeats(ops: Ops) -> None:
    evs = [ops.upload(f"int{i}", folder="/interrupt") for i in range(6)]
    ids = {e.asset_id for e in evs}
    ops.worker.wait_assets(list(ids))
    args = [sys.executable, "-m", "agents.cli", "replay", "--folder", "/interrupt",
            "--max-rate", "2", "--name", "int-test"]
    proc = subprocess.Popen(args, env=ops.worker.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    store = ops.worker.store()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = store.replay_state("int-test")
        if state and state["sent"] >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    first_part = store.replay_state("int-test")["sent"]  # type: ignore[index]
    assert 2 <= first_part < 6
    out = ops.cli("replay", "--folder", "/interrupt", "--name", "int-test")
    assert out.returncode == 0, out.stderr
    sent = ops.replays_sent(ids)
    assert sorted(sent) == sorted(ids), "each asset replayed exactly once"
    assert store.replay_state("int-test")["status"] == "done"  # type: ignore[index]


def test_requeued_dead_letter_succeeds_once_fixed(ops: Ops) -> None:
    missing = ops.worker.inbox / "later.png"
    ev = UploadEvent(asset_id=f"dl-{uuid.uuid4().hex[:6]}", uri=LocalStorage.uri_for(missing),
                     filename="later.png", content_type="image/png", width=120, height=80,
                     format="PNG", size_bytes=100, uploaded_at=now_ms())
    p = OutputProducer(ops.bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    broken = ops.worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert broken.status == "failed" and "not found" in broken.results["hash"]["error"]
    listed = ops.cli("dlq", "list", "blurhash")
    line = next(ln for ln in listed.stdout.splitlines() if ev.asset_id in ln)
    ref = line.split()[0]
    shown = json.loads(ops.cli("dlq", "show", "blurhash", ref).stdout)
    assert shown["original_schema"] == "TaskRequest"
    assert shown["original"]["asset_id"] == ev.asset_id
    Image.new("RGB", (120, 80), (5, 5, 5)).save(missing)  # the cause is fixed
    for task in ("blurhash", "dominant-colors"):
        out = ops.cli("dlq", "requeue", task, "--all")
        assert out.returncode == 0, out.stderr
    fixed = ops.worker.wait_assets([ev.asset_id], done=lambda a: a.status == "complete")
    assert fixed[ev.asset_id].results["hash"]["status"] == "ok"
    relisted = ops.cli("dlq", "list", "blurhash")
    assert ev.asset_id not in relisted.stdout  # requeued ones are hidden unless --all


def test_metrics_and_status(ops: Ops) -> None:
    def metric(name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{ops.web_port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    before = metric('darkroom_tasks_succeeded_total{task="blurhash"}')
    routed = metric("darkroom_events_routed_total")
    ev = ops.upload("metrics")
    ops.worker.wait_assets([ev.asset_id])
    deadline = time.monotonic() + 10
    while metric('darkroom_tasks_succeeded_total{task="blurhash"}') <= before:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert metric("darkroom_events_routed_total") > routed
    assert metric("darkroom_task_duration_seconds_count") > 0
    assert httpx.get(f"http://127.0.0.1:{ops.web_port}/readyz", timeout=5).status_code == 200
    out = ops.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["stalled"] == []
    rows = {r["task"]: r for r in body["tasks"]}
    counts = ops.worker.store().task_counts()
    for task in ("blurhash", "dominant-colors"):
        assert rows[task]["done"] == counts.get((task, "ok"), 0)
        assert rows[task]["failed"] == counts.get((task, "error"), 0)
    assert rows["blurhash"]["committed_requests"] > 0
