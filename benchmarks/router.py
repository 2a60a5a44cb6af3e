"""Router throughput: upload events/s through the Faust router with 5 rule-bearing post-processes,
against a raw confluent-kafka consumer reading the same topic (ratio measured in the same run).

    uv run python benchmarks/router.py [--events 50000]

Three figures from one run on the embedded broker: the raw consumer, a bare Faust agent that
only counts events (Faust's own ceiling on this machine), and the router.
The router side runs a real worker process with only the router agent; its rate is taken from the
broker timestamps of the TaskRequests it wrote (steady state: the middle 80%, so start-up and group
join are excluded; store writes and producer flushes are included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.kafka.broker import EmbeddedBroker  # noqa: E402
from agents.kafka.producer import OutputProducer  # noqa: E402
from agents.kafka.topics import all_topics, ensure_topics  # noqa: E402
from agents.settings import Settings  # noqa: E402
from processors.registry import load_all  # noqa: E402
from schemas.records import TaskRequest, UploadEvent, now_ms  # noqa: E402

CONFIG = """
postprocesses:
  - name: hash-large
    task: blurhash
    trigger: {all: ["width is larger than 100", "format contains JPEG, PNG"]}
  - name: hash-small
    task: blurhash
    trigger: {any: ["width is smaller or equal than 100", "height is smaller than 50"]}
  - name: colors
    task: dominant-colors
    trigger: "folder path starts with '/users'"
  - name: validate
    task: validate-image
    mode: sync
    trigger: "file size is smaller than 20000000"
    validation:
      - rule: "width is smaller than 500"
        action: notice
  - name: colors-archive
    task: dominant-colors
    trigger: ["folder path does not start with '/tmp'", "format does not contain GIF"]
"""


def sample_files(folder: Path) -> list[tuple[Path, tuple[int, int]]]:
    """Six small JPEGs whose sizes take every branch of the rules above."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for w, h in ((80, 60), (100, 40), (150, 45), (320, 240), (480, 300), (640, 480)):
        path = folder / f"{w}x{h}.jpg"
        Image.new("RGB", (w, h), (w % 256, h % 256, 90)).save(path, "JPEG", quality=80)
        out.append((path, (w, h)))
    return out


def planned_requests(db: Path, n: int) -> int:
    """The task rows of all ``n`` assets once the router has recorded them all."""
    import sqlite3

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as c:
                try:
                    if c.execute("select count(*) from assets").fetchone()[0] >= n:
                        return int(c.execute("select count(*) from asset_tasks").fetchone()[0])
                except sqlite3.OperationalError:
                    pass  # the schema is not there yet
        time.sleep(0.5)
    raise RuntimeError(f"the router did not record {n} assets within 600 s")


def requests_in(value: bytes) -> int:
    """The requests one task message carries: itself and its bundle (the cheap ones of an
    upload travel as one message: agents.streams.bundles)."""
    return 1 + len(TaskRequest.from_bytes(value).members())


def consume_all(bootstrap: str, topics: list[str], n: int,
                count: Callable[[bytes], int] = lambda _: 1) -> tuple[int, list[int]]:
    """Read ``topics`` until ``count`` of the messages adds up to ``n``; (that sum, the
    messages' broker timestamps)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0})
    md = c.list_topics(timeout=10)
    c.assign([TopicPartition(t, p, 0) for t in topics for p in md.topics[t].partitions])
    got, stamps = 0, []
    deadline = time.monotonic() + 600
    while got < n and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=0.5):
            if m.error() is None:
                got += count(m.value())
                stamps.append(m.timestamp()[1])
    c.close()
    return got, stamps


BARE_FAUST = """
import os, sys, time, faust
boot, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
del sys.argv[1:4]
app = faust.App("bench-bare", broker=f"kafka://{boot}", key_serializer="raw",
                value_serializer="raw", web_enabled=False, topic_allow_declare=False,
                topic_disable_leader=True, store="memory://", broker_session_timeout=6.0,
                broker_heartbeat_interval=1.0, consumer_auto_offset_reset="earliest")
state = {"n": 0, "t0": 0.0}

@app.agent(app.topic("darkroom.uploads", key_type=bytes, value_type=bytes))
async def count(stream):
    async for batch in stream.take_events(500, within=0.02):
        state["t0"] = state["t0"] or time.perf_counter()
        state["n"] += len(batch)
        if state["n"] >= n:
            with open(out, "w") as f:
                f.write(str(n / (time.perf_counter() - state["t0"])))
            os._exit(0)

app.main()
"""


def bare_faust_rate(bootstrap: str, n: int, tmp: Path) -> float:
    """Events/s of a Faust agent that does nothing but count (first batch to last)."""
    script = tmp / "bare_faust.py"
    script.write_text(BARE_FAUST)
    out = tmp / "bare_faust.out"
    with open(tmp / "bare_faust.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), bootstrap, str(n), str(out),
                                 "worker", "-l", "warn"], stdout=log, stderr=log, cwd=tmp)
        proc.wait(300)
    return float(out.read_text()) if out.exists() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    args = ap.parse_args()
    n = args.events
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    cfg = tmp / "pp.yaml"
    cfg.write_text(CONFIG)
    with EmbeddedBroker() as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp)
        ensure_topics(broker.bootstrap, all_topics(settings, load_all()), 3, 1)
        prod = OutputProducer(broker.bootstrap, **{"linger.ms": 20})
        folders = ["/users/1", "/archive", "/tmp/x"]
        # real files: the router reads each file's header (the file's properties win over the
        # event's hints), so the rules see what a real upload has
        files = sample_files(tmp / "files")
        for i in range(n):
            path, (w, h) = files[i % len(files)]
            ev = UploadEvent(asset_id=f"a{i:07d}", uri=path.as_uri(), filename=path.name,
                             folder=folders[i % 3], size_bytes=path.stat().st_size,
                             width=w, height=h, format="JPEG", uploaded_at=now_ms())
            prod.send("darkroom.uploads", ev.asset_id, ev.to_bytes())
        prod.flush_sync()

        # Baseline: a raw confluent-kafka consumer reading the same topic.
        t0 = time.perf_counter()
        got, _ = consume_all(broker.bootstrap, ["darkroom.uploads"], n)
        raw_s = time.perf_counter() - t0
        assert got == n, got
        raw_rate = n / raw_s
        faust_rate = bare_faust_rate(broker.bootstrap, n, tmp)

        env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": broker.bootstrap,
               "DARKROOM_DATA_DIR": str(tmp), "DARKROOM_POSTPROCESS_CONFIG": str(cfg),
               "DARKROOM_AGENTS": '["router"]', "DARKROOM_SESSION_TIMEOUT_S": "6",
               "DARKROOM_LOG_LEVEL": "warn", "DARKROOM_FILE_ROOTS": json.dumps(
                   [str(tmp / "files")])}
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "agents.cli", "worker"], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Every event selects 2 to 4 of the 5 post-processes: count what the router planned
            # (the store holds one task row per request it sends)
            expected = planned_requests(tmp / "darkroom.db", n)
            task_topics = [t for t in all_topics(settings, load_all()) if ".tasks." in t]
            got, stamps = consume_all(broker.bootstrap, task_topics, expected, requests_in)
        finally:
            worker.terminate()
            worker.wait(30)
        assert got == expected, f"{got} of {expected} task requests (see {tmp}/worker.log)"
        # Steady state: the middle 80% of the output by broker timestamp, so the group join and
        # the rebalance that follows the first fetches (seconds on tansu) are not counted.
        stamps.sort()
        lo, hi = stamps[len(stamps) // 10], stamps[len(stamps) * 9 // 10]
        router_rate = 0.8 * n / max((hi - lo) / 1000, 1e-3)
        whole_rate = n / max((stamps[-1] - stamps[0]) / 1000, 1e-3)
    print(json.dumps({"events": n, "task_requests": expected, "raw_consumer_events_per_s":
                      round(raw_rate), "bare_faust_events_per_s": round(faust_rate),
                      "router_events_per_s": round(router_rate),
                      "router_events_per_s_incl_rebalance": round(whole_rate)}))
    print(f"router: {router_rate:,.0f} events/s with 5 rule-bearing post-processes vs raw "
          f"confluent-kafka consumer {raw_rate:,.0f} events/s -> ratio "
          f"{router_rate / raw_rate:.3f} (goal >= 20,000 events/s per worker)")
    print(f"        a bare Faust agent that only counts reads {faust_rate:,.0f} events/s here "
          f"-> the router runs at {router_rate / faust_rate:.2f}x Faust's own ceiling")


if __name__ == "__main__":
    main()
