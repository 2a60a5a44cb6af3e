"""Poison messages on the real broker: each class is dead-lettered with its reason, no agent stops,
the worker keeps running, and a canary upload sent right after completes within 30 s. A message
the store keeps failing on makes /readyz answer 503 naming topic, partition and offset."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from agents.kafka.broker import free_port
from schemas.records import DeadLetter, UploadEvent, WebhookDelivery, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import ROOT, TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "poison"


@pytest.fixture(scope="module")
def pworker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[WorkerEnv]:
    port = free_port()
    env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-poison",
           "DARKROOM_WEB_PORT": str(port), "DARKROOM_STALL_ATTEMPTS": "3",
           "DARKROOM_STALL_SECONDS": "5"}
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("poison"), extra_env=env)
    wenv.extra["web"] = f"http://127.0.0.1:{port}"
    wait_ready(wenv)  # topics created and partitions assigned before anything is produced
    yield wenv
    stop_worker(wenv)


def wait_ready(w: WorkerEnv, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if readyz(w).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert w.proc is not None and w.proc.poll() is None, w.log_tail()
        assert time.monotonic() < deadline, w.log_tail()
        time.sleep(0.3)


class Sent:
    """Where a produced message landed (its dead letter names the same position)."""

    def __init__(self) -> None:
        self.partition = -1
        self.offset = -1


def produce(bootstrap: str, topic: str, key: bytes | None, value: bytes | None) -> Sent:
    sent = Sent()

    def done(err: Any, m: Any) -> None:
        assert err is None, err
        sent.partition, sent.offset = m.partition(), m.offset()

    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4_000_000,
                  "log_level": 0})
    p.produce(topic, key=key, value=value, on_delivery=done)
    assert p.flush(10) == 0
    return sent


def dead_letter_of(bootstrap: str, topic: str, sent: Sent, timeout: float = 30) -> DeadLetter:
    reader = TopicReader(bootstrap, f"{PREFIX}.dlq.{topic}")
    try:
        def found(ms: list[Any]) -> bool:
            return any(_at(m, sent) for m in ms)

        msgs = reader.read_until(found, timeout)
        return next(DeadLetter.from_bytes(m.value()) for m in msgs if _at(m, sent))
    finally:
        reader.close()


def _at(m: Any, sent: Sent) -> bool:
    dl = DeadLetter.from_bytes(m.value())
    return (dl.source_partition, dl.source_offset) == (sent.partition, sent.offset)


def canary(w: WorkerEnv, name: str) -> None:
    path = photo(w.inbox / f"canary-{name}.jpg", seed=3)
    aid = f"canary-{uuid.uuid4().hex[:8]}"
    ev = UploadEvent(asset_id=aid, uri=LocalStorage.uri_for(path), filename=path.name,
                     content_type="image/jpeg", uploaded_at=now_ms())
    produce(w.bootstrap, f"{PREFIX}.uploads", aid.encode(), ev.to_bytes())
    started = time.monotonic()
    asset = w.wait_assets([aid], timeout=30)[aid]
    assert asset.status == "complete", asset.results
    assert time.monotonic() - started < 30
    assert w.proc is not None and w.proc.poll() is None, "the worker exited"


def event(w: WorkerEnv, **kw: Any) -> UploadEvent:
    path = photo(w.inbox / f"e-{uuid.uuid4().hex[:6]}.jpg", seed=1)
    base: dict[str, Any] = {"asset_id": uuid.uuid4().hex[:12], "uri": LocalStorage.uri_for(path),
                            "filename": path.name, "content_type": "image/jpeg",
                            "uploaded_at": now_ms()}
    return UploadEvent(**{**base, **kw})


CASES: list[tuple[str, str, str, Callable[[WorkerEnv], tuple[bytes | None, bytes | None]]]] = [
    # (id, topic suffix, dead-letter topic, (key, value) maker); reasons in REASONS
    ("tombstone-uploads", "uploads", "uploads", lambda w: (b"t1", None)),
    ("tombstone-tasks", "tasks.blurhash", "blurhash", lambda w: (b"t2", None)),
    ("tombstone-results", "results.blurhash", "results", lambda w: (b"t3", None)),
    ("tombstone-webhooks", "webhooks", "webhooks", lambda w: (b"t4", None)),
    ("empty-asset-id", "uploads", "uploads",
     lambda w: (b"", event(w, asset_id="").to_bytes())),
    ("nan-duration", "uploads", "uploads",
     lambda w: (b"n1", event(w, asset_id="n1", duration=math.nan).to_bytes())),
    ("inf-duration", "uploads", "uploads",
     lambda w: (b"n2", event(w, asset_id="n2", duration=math.inf).to_bytes())),
    ("invalid-reply-to", "uploads", "uploads",
     lambda w: (b"r1", event(w, asset_id="r1", mode="sync",
                             reply_to=f"{PREFIX}.replies.bad topic/x").to_bytes())),
    ("huge-tags", "uploads", "uploads",
     lambda w: (b"h1", event(w, asset_id="h1", tags=[f"t{i:05}" for i in range(9900)],
                             folder="/" + "f" * 964).to_bytes())),
    ("big-malformed-uploads", "uploads", "uploads",
     lambda w: (b"b1", b"\xc3\x01" + b"x" * 2_000_000)),
    ("big-malformed-tasks", "tasks.blurhash", "blurhash", lambda w: (b"b2", b"x" * 2_000_000)),
    ("big-malformed-results", "results.blurhash", "results",
     lambda w: (b"b3", b"\xc3\x01" + b"\x00" * 2_000_000)),
    ("big-malformed-webhooks", "webhooks", "webhooks", lambda w: (b"b4", b"y" * 2_000_000)),
]

REASONS = {
    "tombstone-uploads": "tombstone", "tombstone-tasks": "tombstone",
    "tombstone-results": "tombstone", "tombstone-webhooks": "tombstone",
    "empty-asset-id": "asset_id must be a non-empty string",
    "nan-duration": "duration must be a finite number",
    "inf-duration": "duration must be a finite number",
    "invalid-reply-to": "not a valid Kafka topic name",
    "huge-tags": "the limit is",
    "big-malformed-uploads": "malformed upload event", "big-malformed-tasks": "malformed task",
    "big-malformed-results": "malformed task result",
    "big-malformed-webhooks": "malformed webhook delivery",
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_poison_is_dead_lettered_and_the_pipeline_goes_on(
        pworker: WorkerEnv, case: tuple[str, str, str, Any]) -> None:
    name, topic, dlq, make = case
    key, value = make(pworker)
    sent = produce(pworker.bootstrap, f"{PREFIX}.{topic}", key, value)
    dl = dead_letter_of(pworker.bootstrap, dlq, sent)
    assert REASONS[name] in dl.error, dl.error
    assert dl.source_topic == f"{PREFIX}.{topic}"
    if value is None:
        assert dl.original_kind == "null"
    elif len(value) > 256 * 1024:
        assert dl.original_kind == "omitted" and dl.original == b""
        assert dl.original_size == len(value)
    else:
        assert dl.original == value
    canary(pworker, name)


def test_five_webhook_tombstones_do_not_end_the_worker(pworker: WorkerEnv) -> None:
    sent = [produce(pworker.bootstrap, f"{PREFIX}.webhooks", b"w", None) for _ in range(5)]
    for s in sent:
        assert "tombstone" in dead_letter_of(pworker.bootstrap, "webhooks", s).error
    bad_url = WebhookDelivery(delivery_id="d" * 10, asset_id="a1", version=1,
                              event="asset.completed", url="gopher://x", payload=b"{}")
    s = produce(pworker.bootstrap, f"{PREFIX}.webhooks", b"a1", bad_url.to_bytes())
    assert "http:// or https://" in dead_letter_of(pworker.bootstrap, "webhooks", s).error
    canary(pworker, "webhooks")


def test_declared_media_properties_are_hints_the_file_overrides(pworker: WorkerEnv) -> None:
    ev = event(pworker, width=1, height=1, format="PNG")  # a 640x480 JPEG in truth
    produce(pworker.bootstrap, f"{PREFIX}.uploads", ev.asset_id.encode(), ev.to_bytes())
    asset = pworker.wait_assets([ev.asset_id], timeout=30)[ev.asset_id]
    assert asset.properties["width"] == 640 and asset.properties["format"] == "JPEG"
    assert asset.results["blurhash"]["status"] == "ok" and not asset.notices


def test_the_pixel_limit_applies_to_what_the_file_says(pworker: WorkerEnv) -> None:
    from PIL import Image

    path = pworker.inbox / "wide.png"
    Image.new("L", (12_000, 9_000)).save(path, optimize=False)  # 108 MP > 100 MP
    ev = event(pworker, uri=LocalStorage.uri_for(path), filename="wide.png",
               content_type="image/png", width=10, height=10)
    s = produce(pworker.bootstrap, f"{PREFIX}.uploads", ev.asset_id.encode(), ev.to_bytes())
    assert "over the limit of 100000000" in dead_letter_of(pworker.bootstrap, "uploads", s).error


def readyz(w: WorkerEnv) -> httpx.Response:
    return httpx.get(w.extra["web"] + "/readyz", timeout=5)


def test_a_store_that_keeps_failing_on_one_message_is_a_named_stall(pworker: WorkerEnv) -> None:
    wait_ready(pworker)
    db = pworker.data_dir / "darkroom.db"
    stuck = f"stuck-{uuid.uuid4().hex[:6]}"
    with sqlite3.connect(db) as conn:  # a real fault in the real database, for one asset only
        conn.execute(f"CREATE TRIGGER fault BEFORE INSERT ON asset_tasks WHEN NEW.asset_id = "
                     f"'{stuck}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    try:
        ev = event(pworker, asset_id=stuck)
        sent = produce(pworker.bootstrap, f"{PREFIX}.uploads", stuck.encode(), ev.to_bytes())
        deadline = time.monotonic() + 60
        while True:
            r = readyz(pworker)
            if r.status_code == 503 and r.json()["stalled"]:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        (stall,) = [s for s in r.json()["stalled"] if s["agent"] == "router"]
        assert stall["topic"] == f"{PREFIX}.uploads"
        assert (stall["partition"], stall["offset"]) == (sent.partition, sent.offset)
        assert "injected fault" in stall["error"]
        status = subprocess.run([sys.executable, "-m", "agents.cli", "status", "--json"],
                                env=pworker.env, cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stderr
        listed = json.loads(status.stdout)["stalled"]
        assert any(s["offset"] == sent.offset and s["agent"] == "router" for s in listed)
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER fault")
    # the fault is gone: the stuck message goes through and the worker is ready again
    assert pworker.wait_assets([stuck], timeout=60)[stuck].status == "complete"
    wait_ready(pworker, timeout=30)
    canary(pworker, "stall")


def test_nothing_of_a_dead_letter_is_lost(pworker: WorkerEnv) -> None:
    """An omitted original stays findable where the dead letter says it is."""
    value = b"\xc3\x01" + b"z" * 1_500_000
    s = produce(pworker.bootstrap, f"{PREFIX}.uploads", b"find-me", value)
    dl = dead_letter_of(pworker.bootstrap, "uploads", s)
    assert dl.original_kind == "omitted"
    reader = TopicReader(pworker.bootstrap, dl.source_topic)
    try:
        msgs = reader.read_until(lambda ms: any(
            (m.partition(), m.offset()) == (dl.source_partition, dl.source_offset) for m in ms))
        original = next(m for m in msgs
                        if (m.partition(), m.offset()) == (dl.source_partition, dl.source_offset))
        import hashlib

        assert hashlib.sha256(original.value()).hexdigest() == dl.original_sha256
    finally:
        reader.close()
    # `darkroom dlq show` fetches it back from there (checked against the hash)
    dlq = TopicReader(pworker.bootstrap, f"{PREFIX}.dlq.uploads")
    try:
        msgs = dlq.read_until(lambda ms: any(_at(m, s) for m in ms))
        ref = next(f"{m.partition()}:{m.offset()}" for m in msgs if _at(m, s))
    finally:
        dlq.close()
    shown = subprocess.run([sys.executable, "-m", "agents.cli", "dlq", "show", "uploads", ref],
                           env=pworker.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["original_kind"] == "omitted" and body["original"].startswith("c3017a7a")


def test_webhooks_only_deliver_what_the_outbox_holds(pworker: WorkerEnv) -> None:
    forged = WebhookDelivery(delivery_id="forged-1", asset_id="a1", version=1,
                             event="asset.completed", url="https://hooks.example.com/x",
                             payload=b'{"forged": true}')
    s = produce(pworker.bootstrap, f"{PREFIX}.webhooks", b"a1", forged.to_bytes())
    assert "no delivery 'forged-1' in the outbox" in dead_letter_of(
        pworker.bootstrap, "webhooks", s).error
    later = WebhookDelivery(**{**forged.to_dict(), "delivery_id": "forged-2",
                               "due_at": now_ms() + 10 * 86_400_000})
    s = produce(pworker.bootstrap, f"{PREFIX}.webhooks", b"a1", later.to_bytes())
    assert "later than any retry tier" in dead_letter_of(pworker.bootstrap, "webhooks", s).error
    canary(pworker, "outbox")


def test_a_result_for_an_unknown_asset_is_dead_lettered(pworker: WorkerEnv) -> None:
    from schemas.records import TaskResult

    res = TaskResult(request_id="r1", asset_id="nobody-here", task="blurhash",
                     postprocess="blurhash", status="ok", data_json='{"blurhash": "x"}')
    s = produce(pworker.bootstrap, f"{PREFIX}.results.blurhash", b"nobody-here", res.to_bytes())
    assert "an asset the store does not know" in dead_letter_of(
        pworker.bootstrap, "results", s).error


def test_task_requests_are_checked_against_the_file(pworker: WorkerEnv) -> None:
    """A raw request naming a path outside the roots fails (even for a header-only task), and
    declared sizes on a request are hints the decode overrides."""
    from schemas.records import TaskRequest, TaskResult

    outside = TaskRequest(request_id="q1", asset_id="q1", task="validate-image",
                          postprocess="validate-image", uri="file:///etc/passwd")
    s = produce(pworker.bootstrap, f"{PREFIX}.tasks.validate-image", b"q1", outside.to_bytes())
    assert "outside the allowed storage roots" in dead_letter_of(
        pworker.bootstrap, "validate-image", s).error
    path = photo(pworker.inbox / "hint.jpg", (300, 200), seed=4)
    lie = TaskRequest(request_id="q2", asset_id="q2", task="blurhash", postprocess="blurhash",
                      uri=LocalStorage.uri_for(path), width=1, height=1, format="PNG")
    produce(pworker.bootstrap, f"{PREFIX}.tasks.blurhash", b"q2", lie.to_bytes())
    reader = TopicReader(pworker.bootstrap, f"{PREFIX}.results.blurhash")
    try:
        msgs = reader.read_until(lambda ms: any(m.key() == b"q2" for m in ms))
        res = TaskResult.from_bytes(next(m.value() for m in msgs if m.key() == b"q2"))
    finally:
        reader.close()
    assert res.status == "ok" and (res.data["width"], res.data["height"]) == (300, 200)
