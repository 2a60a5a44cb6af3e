"""Sync upload latency: a 1 MP JPEG with validate-image + blurhash + dominant-colors, all sync.

    uv run python benchmarks/sync_upload.py [--requests 60]

Runs the embedded broker, one worker and one API process, then posts the same image N times in
sync mode, one request at a time, and prints p50/p99 of the response time and of the overhead =
response time - task compute time. The compute time of an upload is the longest of its sync
tasks' own durations (they run concurrently on different agents), as the processors report it.
Goal on this machine: overhead p50 <= 20 ms, p99 <= 100 ms, or the floor the broker's fetch
behaviour sets: the same run measures an *anchor* on the same broker, a raw confluent-kafka
request/reply over the same four hops (uploads -> tasks -> results -> reply: three relay threads in
a process of their own, each consuming with the worker's ``DARKROOM_FETCH_MAX_WAIT_MS`` and
sending each message at once, as the worker's agents flush a batch when it is done), with
nothing computed. ``--anchor-only`` runs only that.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.api.app import hash_key  # noqa: E402
from agents.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from agents.kafka.topics import all_topics, ensure_topics  # noqa: E402
from agents.settings import Settings  # noqa: E402
from processors.registry import load_all  # noqa: E402

CONFIG = """
postprocesses:
  - {name: validate-image, task: validate-image, mode: sync}
  - {name: blurhash, task: blurhash, mode: sync}
  - {name: dominant-colors, task: dominant-colors, mode: sync}
"""


def photo_1mp() -> bytes:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1000, 0:1000]
    base = np.stack([x / 4, y / 4, (x + y) / 8], axis=-1) % 256
    img = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--anchor-only", action="store_true")
    ap.add_argument("--partitions", type=int, default=3, help="partitions per topic")
    ap.add_argument("--relay", nargs=3, metavar=("BOOTSTRAP", "WAIT_MS", "TOPICS"),
                    help=argparse.SUPPRESS)  # internal: the anchor's relay process
    args = ap.parse_args()
    if args.relay:
        relay(args.relay[0], int(args.relay[1]), args.relay[2].split(","))
        return
    if args.anchor_only:
        with EmbeddedBroker() as broker:
            report_anchor(anchor(broker.bootstrap, args.requests, args.warmup))
        return
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-sync-"))
    (tmp / "pp.yaml").write_text(CONFIG)
    key = "bench-key"
    image = photo_1mp()
    with EmbeddedBroker() as broker:
        port = free_port()
        env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": broker.bootstrap,
               "DARKROOM_DATA_DIR": str(tmp), "DARKROOM_POSTPROCESS_CONFIG": str(tmp / "pp.yaml"),
               "DARKROOM_SESSION_TIMEOUT_S": "6", "DARKROOM_LOG_LEVEL": "warn",
               "DARKROOM_PARTITIONS": str(args.partitions),
               "DARKROOM_API_PORT": str(port), "DARKROOM_API_KEY_HASHES": json.dumps(
                   [hash_key(key)])}
        settings = Settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp)
        ensure_topics(broker.bootstrap, all_topics(settings, load_all()), args.partitions, 1)
        procs = [subprocess.Popen([sys.executable, "-m", "agents.cli", cmd], env=env, cwd=ROOT,
                                  stdout=open(tmp / f"{cmd}.log", "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT) for cmd in ("worker", "api")]
        try:
            anchored = anchor(broker.bootstrap, args.requests, args.warmup)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                  headers={"X-API-Key": key}, timeout=60)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
            totals, overheads, computes = [], [], []
            sent_at: dict[str, tuple[float, float]] = {}  # asset -> wall ms sent, answered
            for i in range(args.warmup + args.requests):
                t0, wall0 = time.perf_counter(), time.time() * 1000
                r = client.post("/v1/assets", files={"file": ("photo.jpg", image)},
                                data={"mode": "sync"})
                elapsed = (time.perf_counter() - t0) * 1000
                assert r.status_code == 201, r.text
                results = r.json()["asset"]["results"]
                assert all(v["status"] == "ok" for v in results.values()), results
                if i < args.warmup:
                    continue  # the first uploads also wait for the group to settle
                got = client.get(r.json()["location"]).json()
                compute = max(v.get("duration_ms") or 0 for v in got["results"].values()) \
                    if "duration_ms" in next(iter(got["results"].values()), {}) else None
                if compute is None:
                    compute = max(_durations(tmp, r.json()["asset_id"]))
                totals.append(elapsed)
                computes.append(compute)
                overheads.append(elapsed - compute)
                sent_at[r.json()["asset_id"]] = (wall0, wall0 + elapsed)
            hops = hop_times(broker.bootstrap, sent_at)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    print(json.dumps({"requests": len(totals), "response_ms_p50": round(pct(totals, .5), 1),
                      "response_ms_p99": round(pct(totals, .99), 1),
                      "compute_ms_p50": round(statistics.median(computes), 1),
                      "overhead_ms_p50": round(pct(overheads, .5), 1),
                      "overhead_ms_p99": round(pct(overheads, .99), 1)}))
    print(f"sync upload (1 MP JPEG, 3 sync tasks): response p50 {pct(totals, .5):.1f} ms, p99 "
          f"{pct(totals, .99):.1f} ms; task compute p50 {statistics.median(computes):.1f} ms; "
          f"overhead p50 {pct(overheads, .5):.1f} ms, p99 {pct(overheads, .99):.1f} ms "
          f"(goal p50 <= 20 ms, p99 <= 100 ms)")
    print("per hop, p50 ms (message timestamps; 'task' includes the compute): " + ", ".join(
        f"{k} {statistics.median(v):.1f}" for k, v in hops.items() if v))
    report_anchor(anchored)
    print(f"overhead above the anchor's floor: p50 {pct(overheads, .5) - pct(anchored, .5):.1f} "
          f"ms, p99 {pct(overheads, .99) - pct(anchored, .99):.1f} ms")


def report_anchor(times: list[float]) -> None:
    print(json.dumps({"anchor_requests": len(times), "anchor_ms_p50": round(pct(times, .5), 1),
                      "anchor_ms_p99": round(pct(times, .99), 1)}))
    print(f"anchor (raw confluent-kafka request/reply, 4 hops, same broker and fetch wait): "
          f"p50 {pct(times, .5):.1f} ms, p99 {pct(times, .99):.1f} ms")


HOPS = ("uploads", "tasks", "results", "reply")


def hop_times(bootstrap: str, sent: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Where a sync upload's time goes, from the create timestamps of its messages: HTTP to
    upload event (API), upload to the last task request (router), request to the last result
    (task hop and compute), result to the reply (sink), reply to the answer (API)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hops-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "log_level": 3})
    md = c.list_topics(timeout=10)
    kinds = {"uploads": "upload", "tasks": "request", "results": "result", "replies": "reply"}
    tps = [TopicPartition(t, p, 0) for t in md.topics for p in md.topics[t].partitions
           if t.split(".")[1:2] and t.split(".")[1] in kinds]
    c.assign(tps)
    last: dict[tuple[str, str], float] = {}
    idle = 0
    while idle < 3:
        batch = c.consume(1000, timeout=1.0)
        idle = 0 if batch else idle + 1
        for m in batch:
            key = (m.key() or b"").decode()
            if m.error() is None and key in sent:
                kind = kinds[str(m.topic()).split(".")[1]]
                last[(key, kind)] = max(last.get((key, kind), 0.0), float(m.timestamp()[1]))
    c.close()
    steps = (("api", None, "upload"), ("router", "upload", "request"),
             ("task", "request", "result"), ("sink", "result", "reply"), ("answer", "reply", None))
    out: dict[str, list[float]] = {name: [] for name, _, _ in steps}
    for aid, (t_sent, t_answered) in sent.items():
        for name, a, b in steps:
            start = t_sent if a is None else last.get((aid, a))
            end = t_answered if b is None else last.get((aid, b))
            if start is not None and end is not None:
                out[name].append(end - start)
    return out


def _consumer(bootstrap: str, wait_ms: int, topic: str) -> Any:
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"anchor-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": wait_ms, "log_level": 3})
    c.assign([TopicPartition(topic, 0, OFFSET_END)])
    return c


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    # what the worker's OutputProducer uses on its hops (agents/kafka/producer.py)
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                     "enable.idempotence": True, "log_level": 3})


def relay(bootstrap: str, wait_ms: int, topics: list[str]) -> None:
    """Three threads, each forwarding every message of one topic to the next: the worker's
    router, processor and sink with nothing computed."""
    def forward(src: str, dst: str) -> None:
        c, p = _consumer(bootstrap, wait_ms, src), _producer(bootstrap)
        while True:
            msg = c.poll(1.0)
            if msg is not None and not msg.error():
                p.produce(dst, msg.value(), msg.key())
                # sent at once, as the worker's agents flush each batch when it is done (its
                # linger would otherwise add up to 2 ms per hop that the worker never waits)
                p.flush()

    for src, dst in itertools.pairwise(topics):
        threading.Thread(target=forward, args=(src, dst), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def anchor(bootstrap: str, requests: int, warmup: int) -> list[float]:
    """Round trips of a raw request/reply over four hops on ``bootstrap`` (ms)."""
    wait_ms = Settings().fetch_max_wait_ms
    topics = [f"anchor-{uuid.uuid4().hex[:8]}-{h}" for h in HOPS]
    ensure_topics(bootstrap, topics, 1, 1)
    proc = subprocess.Popen([sys.executable, __file__, "--relay", bootstrap, str(wait_ms),
                             ",".join(topics)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        replies, p = _consumer(bootstrap, wait_ms, topics[-1]), _producer(bootstrap)
        time.sleep(2.0)  # the relays' assignments settle
        times: list[float] = []
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            p.produce(topics[0], b"x" * 200, str(i).encode())
            p.flush(5)
            while True:
                msg = replies.poll(5.0)
                if msg is None:
                    raise RuntimeError("the anchor's reply did not come within 5 s")
                if not msg.error() and msg.key() == str(i).encode():
                    break
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
        replies.close()
        return times
    finally:
        proc.kill()
        proc.wait(10)


def _durations(tmp: Path, asset_id: str) -> list[float]:
    from sinks.store.metadata import MetadataStore

    asset = MetadataStore(f"sqlite:///{tmp / 'darkroom.db'}").get_asset(asset_id)
    assert asset is not None
    return [float(r["duration_ms"] or 0) for r in asset.results.values()]


if __name__ == "__main__":
    main()
