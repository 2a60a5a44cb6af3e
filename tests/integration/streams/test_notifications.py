"""Webhooks and on-success end to end: real broker, real worker, a real HTTP receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agents.kafka.producer import OutputProducer
from schemas.records import DeadLetter, UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from sinks.webhooks import verify_signature
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker

pytestmark = pytest.mark.integration

SECRET = "whsec-test"
PREFIX = "whtest"
ENV = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-whtest",
       "DARKROOM_WEBHOOK_SECRET": SECRET, "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]',
       "DARKROOM_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 2.0]",
       "DARKROOM_WEBHOOK_READ_TIMEOUT_S": "2", "DARKROOM_WEBHOOK_CONNECT_TIMEOUT_S": "2"}


class Receiver:
    """Answers ``plan[path]`` status codes in turn (then 200) and records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: dict[str, list[int]] = {}
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                codes = rec.plan.get(self.path, [])
                code = codes.pop(0) if codes else 200
                rec.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body, "code": code})
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"nope")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hits(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def wait(self, path: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.hits(path)) >= n:
                return self.hits(path)
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.hits(path))} of {n} requests")


class Stack:
    def __init__(self, bootstrap: str, base: Path) -> None:
        self.bootstrap, self.base = bootstrap, base
        self.worker: WorkerEnv = self.start()

    def start(self) -> WorkerEnv:
        return start_worker(self.bootstrap, self.base, extra_env=ENV)

    def restart(self) -> None:
        stop_worker(self.worker)
        self.worker = self.start()

    def upload(self, name: str, **kw: Any) -> UploadEvent:
        img = self.worker.inbox / f"{name}.png"
        Image.new("RGB", (300, 200), (10, 200, 30)).save(img)
        ev = UploadEvent(asset_id=f"{name}-{uuid.uuid4().hex[:8]}",
                         uri=LocalStorage.uri_for(img), filename=img.name,
                         uploaded_at=now_ms(), **kw)
        p = OutputProducer(self.bootstrap)
        p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
        p.flush_sync()
        return ev

    def deliveries(self, asset_id: str, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
        store = self.worker.store()
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = store.deliveries_of(asset_id)
            if rows and until(rows):
                return rows
            time.sleep(0.1)
        raise AssertionError(f"deliveries of {asset_id}: {rows}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(kafka_bootstrap, tmp_path_factory.mktemp("notify"))
    yield s
    stop_worker(s.worker)


def test_signed_delivery_after_two_failures(stack: Stack, receiver: Receiver) -> None:
    receiver.plan["/flaky"] = [500, 500]
    ev = stack.upload("flaky", notification_url=receiver.url + "/flaky")
    hits = receiver.wait("/flaky", 3)
    time.sleep(1.5)  # nothing more may come
    hits = receiver.hits("/flaky")
    assert [h["code"] for h in hits] == [500, 500, 200]
    keys = {h["headers"]["Darkroom-Idempotency-Key"] for h in hits}
    assert len(keys) == 1
    for h in hits:
        assert verify_signature(h["body"], h["headers"], SECRET)
        assert not verify_signature(h["body"] + b" ", h["headers"], SECRET)
    payload = json.loads(hits[-1]["body"])
    assert payload["asset_id"] == ev.asset_id and payload["event"] == "asset.completed"
    assert payload["asset"]["status"] == "complete"
    rows = stack.deliveries(ev.asset_id, lambda rs: rs[0]["state"] == "delivered")
    assert rows[0]["attempts"] == 3 and len(rows) == 1


def test_delivery_survives_a_worker_restart(stack: Stack, receiver: Receiver) -> None:
    receiver.plan["/restart"] = [503]
    ev = stack.upload("restart", notification_url=receiver.url + "/restart")
    receiver.wait("/restart", 1)
    # the first attempt failed; the retry waits in its tier topic. Restart now.
    stack.restart()
    hits = receiver.wait("/restart", 2, timeout=90)
    assert [h["code"] for h in hits][:2] == [503, 200]
    stack.deliveries(ev.asset_id, lambda rs: rs[0]["state"] == "delivered", timeout=30)


@pytest.mark.slow
def test_dead_letter_and_replay(stack: Stack, receiver: Receiver, read_topic: Any) -> None:
    receiver.plan["/down"] = [500, 500, 500]
    ev = stack.upload("down", notification_url=receiver.url + "/down")
    stack.deliveries(ev.asset_id, lambda rs: rs[0]["state"] == "dead")
    dlq = read_topic(f"{PREFIX}.dlq.webhooks").read_until(
        lambda ms: any(m.key() == ev.asset_id.encode() for m in ms))
    letter = next(DeadLetter.from_bytes(m.value()) for m in dlq
                  if m.key() == ev.asset_id.encode())
    assert "3 attempts failed" in letter.error
    # the receiver recovered (its plan is used up): replay delivers it, once
    out = subprocess.run([sys.executable, "-m", "agents.cli", "webhooks", "replay"],
                         env=stack.worker.env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "re-sent" in out.stdout
    stack.deliveries(ev.asset_id, lambda rs: rs[0]["state"] == "delivered")
    assert [h["code"] for h in receiver.hits("/down")] == [500, 500, 500, 200]
    again = subprocess.run([sys.executable, "-m", "agents.cli", "webhooks", "replay"],
                           env=stack.worker.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert "0 dead letter(s) re-sent" in again.stdout
    time.sleep(1)
    assert len(receiver.hits("/down")) == 4


def test_private_notification_url_is_refused_and_recorded(stack: Stack) -> None:
    ev = stack.upload("ssrf", notification_url="http://10.0.0.1:8080/hook")
    rows = stack.deliveries(ev.asset_id, lambda rs: rs[0]["state"] == "refused")
    assert "private" in (rows[0]["last_error"] or "").lower()


def test_on_success_script_updates_and_webhook_sees_them(stack: Stack,
                                                          receiver: Receiver) -> None:
    script = ("current_asset.update({tags: e.upload_info.tags.concat(['w' + "
              "e.upload_info.info.width]), context: {checked: 'yes'}, "
              "metadata: {colors: e.upload_info.results['dominant-colors'].data.colors.length}})")
    ev = stack.upload("script", notification_url=receiver.url + "/script", on_success=script,
                      tags=["original"], context={"old": "gone"})
    hit = receiver.wait("/script", 1)[0]
    asset = json.loads(hit["body"])["asset"]
    assert asset["tags"] == ["original", "w300"]
    assert asset["context"] == {"checked": "yes"}
    assert asset["metadata"] == {"colors": 1}
    assert asset["on_success"]["script"]["status"] == "ok"
    stored = stack.worker.store().get_asset(ev.asset_id)
    assert stored is not None and stored.tags == ["original", "w300"]


def test_failing_scripts_are_recorded_not_fatal(stack: Stack) -> None:
    scripts = {"loop": "while(true){}", "alloc": "let big = 'x'.repeat(1e8)",
               "throw": "throw new Error('boom')", "syntax": "current_asset.update({",
               "host": "require('fs').readFileSync('/etc/passwd')"}
    evs = {k: stack.upload(f"bad-{k}", on_success=s) for k, s in scripts.items()}
    done = stack.worker.wait_assets([e.asset_id for e in evs.values()],
                                    done=lambda a: a.on_success_result is not None)
    kinds = {k: done[e.asset_id].on_success_result["script"]["error_kind"]
             for k, e in evs.items()}
    assert kinds == {"loop": "timeout", "alloc": "memory", "throw": "exception",
                     "syntax": "syntax", "host": "exception"}
    assert all(a.status == "complete" for a in done.values())
    # and the worker is still fine
    ok = stack.upload("after-bad")
    stack.worker.wait_assets([ok.asset_id])


def test_standard_webhooks_receivers_verify_and_keys_differ_per_destination(
        kafka_bootstrap: str, tmp_path: Path, receiver: Receiver) -> None:
    """The Standard Webhooks header set verifies with the `standardwebhooks` library, and the
    upload's notification_url and a global URL get different idempotency keys."""
    from standardwebhooks import Webhook

    from sinks.webhooks import standard_secret

    env = {**ENV, "DARKROOM_TOPIC_PREFIX": "whstd", "DARKROOM_WORKER_ID": "darkroom-whstd",
           "DARKROOM_WEBHOOK_URLS": json.dumps([receiver.url + "/global"])}
    w = start_worker(kafka_bootstrap, tmp_path, extra_env=env)
    try:
        img = w.inbox / "std.png"
        Image.new("RGB", (300, 200), (200, 20, 30)).save(img)
        ev = UploadEvent(asset_id=f"std-{uuid.uuid4().hex[:8]}", uri=LocalStorage.uri_for(img),
                         filename=img.name, uploaded_at=now_ms(),
                         notification_url=receiver.url + "/own")
        p = OutputProducer(kafka_bootstrap)
        p.send("whstd.uploads", ev.asset_id, ev.to_bytes())
        p.flush_sync()
        own = receiver.wait("/own", 1)
        glob = [h for h in receiver.wait("/global", 1)
                if json.loads(h["body"])["asset_id"] == ev.asset_id]
        assert glob, "no delivery to the global URL"
        hook = Webhook(standard_secret(SECRET))
        for h in (own[-1], glob[-1]):
            assert hook.verify(h["body"], h["headers"])["asset_id"] == ev.asset_id
            assert h["headers"]["webhook-id"] == "msg_" + h["headers"][
                "Darkroom-Idempotency-Key"]
        tampered = {**own[-1]["headers"], "webhook-timestamp": str(int(time.time()) - 10)}
        with pytest.raises(Exception, match="signature"):
            hook.verify(own[-1]["body"], tampered)
        assert (own[-1]["headers"]["Darkroom-Idempotency-Key"]
                != glob[-1]["headers"]["Darkroom-Idempotency-Key"])
    finally:
        stop_worker(w)
