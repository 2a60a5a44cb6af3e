"""The hostile-input runner: a real broker, worker and API; every case delivered, its outcome
observed and judged; barriers, canaries, leak and crash checks around them.

Per class: every case is delivered at once (HTTP requests from a small pool, Kafka messages and
inbox files through one producer), then one *barrier* upload per partition (asset ids chosen so
that each lands on its own partition of every topic, with a webhook to the allowlisted
receiver). Once every barrier has completed and delivered, everything produced before it has
been consumed, so the cases are judged. If the barriers stop moving (no progress, or an agent
logging "failed; retrying" forever) the pipeline is *stalled*: the settled cases are judged, the
stack is replaced by a fresh one (new topic prefix, database and consumer group; spares warm in
the background) and the unsettled cases are replayed in waves of at most one case per agent
topic. The worker log names the agent that is stuck (and often the asset it is bound to), which
names the case that stalls the pipeline; suspects it cannot tell apart are replayed alone.

After each class a canary (a small valid JPEG through the API) must complete within 30 s, and
the worker and API must still run. At the end every topic, database, stored object and log of
every stack, every webhook body and every HTTP answer is searched for the canary secret, and the
loopback tripwire must have seen no connection.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.hostile import corpus as C
from tests.integration.hostile import media
from tests.integration.hostile.netutil import AllowedReceiver, HttpResult, Tripwire, exchange

CANARY_TIMEOUT_S = 30.0
FINAL = ("complete", "partial", "failed", "refused")
HEADER_ONLY_TASKS = {"validate-image"}  # an ok there reads the header only: no grey fill
DELIVERY_OPEN = ("queued", "retrying", "pending")

# The DeadLetter schema as committed before the dead-letter extension (source_partition, ...):
# dead letters written by either form decode.
LEGACY_DEAD_LETTER = {
    "type": "record", "name": "DeadLetter", "namespace": "io.darkroom",
    "fields": [
        {"name": "source_topic", "type": "string"},
        {"name": "asset_id", "type": ["null", "string"], "default": None},
        {"name": "task", "type": ["null", "string"], "default": None},
        {"name": "error", "type": "string"},
        {"name": "error_kind", "type": "string", "default": "permanent"},
        {"name": "attempts", "type": "int", "default": 1},
        {"name": "failed_at", "type": "long", "default": 0},
        {"name": "original", "type": "bytes"},
        {"name": "original_key", "type": ["null", "bytes"], "default": None},
    ],
}


def log_default(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- dead letters


class DeadLetterDecoder:
    """Decodes DeadLetter values of the current schema file and of the legacy form."""

    def __init__(self, root: Path) -> None:
        import fastavro
        from fastavro.schema import fingerprint, to_parsing_canonical_form

        self.forms: list[tuple[bytes, Any]] = []
        raws: list[dict[str, Any]] = []
        with contextlib.suppress(OSError, ValueError):
            raws.append(json.loads((root / "schemas" / "DeadLetter.avsc").read_text()))
        raws.append(LEGACY_DEAD_LETTER)
        for raw in raws:
            try:
                parsed = fastavro.parse_schema(_strip_logical(raw))
                canon = to_parsing_canonical_form(fastavro.parse_schema(raw))
                header = b"\xc3\x01" + bytes.fromhex(fingerprint(canon, "CRC-64-AVRO"))
                self.forms.append((header, parsed))
            except Exception:  # noqa: BLE001 - a schema file being edited right now
                continue

    def decode(self, value: bytes | None) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            from schemas.records import DeadLetter

            rec = DeadLetter.from_bytes(value).to_dict()
            return self._defaults(rec)
        except Exception:  # noqa: BLE001 - fall back to the forms we know
            pass
        import fastavro

        ordered = sorted(self.forms, key=lambda f: f[0] != value[:10])
        for _header, parsed in ordered:
            try:
                got: Any = fastavro.schemaless_reader(io.BytesIO(value[10:]), parsed, None)
                if isinstance(got, dict) and "error" in got:
                    return self._defaults(got)
            except Exception:  # noqa: BLE001
                continue
        return None

    @staticmethod
    def _defaults(rec: dict[str, Any]) -> dict[str, Any]:
        rec.setdefault("source_partition", -1)
        rec.setdefault("source_offset", -1)
        rec.setdefault("original_kind", None)   # None: the field does not exist in this form
        rec.setdefault("original_size", -1)
        rec.setdefault("original_sha256", None)
        return rec


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


@dataclass
class Letter:
    topic: str              # the dlq topic it was found on
    partition: int
    offset: int
    key: bytes | None
    fields: dict[str, Any]

    @property
    def error(self) -> str:
        return str(self.fields.get("error") or "")

    def tag(self, prefix: str) -> str:
        return self.topic[len(prefix) + len(".dlq."):]

    def text(self) -> str:
        extra = ""
        if self.fields.get("original_kind") is not None:
            extra = f" [original {self.fields['original_kind']}]"
        return f"dead letter on {self.topic}: {self.error[:220]!r}{extra}"


class Collector:
    """Reads every ``<prefix>.dlq.*`` and ``<prefix>.results.*`` topic from the start."""

    def __init__(self, bootstrap: str, prefix: str, decoder: DeadLetterDecoder) -> None:
        import threading

        self.prefix = prefix
        self.decoder = decoder
        self.letters: list[Letter] = []
        self.undecodable: list[tuple[str, int, int]] = []
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"hostile-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0,
            "fetch.wait.max.ms": 20, "fetch.message.max.bytes": 8 << 20,
        })
        md = self.consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p, 0) for t, meta in md.topics.items()
               if t.startswith(f"{prefix}.dlq.") or t.startswith(f"{prefix}.results.")
               for p in meta.partitions]
        self.consumer.assign(tps)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from schemas.records import TaskResult

        while not self.stop.is_set():
            try:
                msgs = self.consumer.consume(500, timeout=0.2)
            except Exception:  # noqa: BLE001 - closing
                return
            for msg in msgs:
                if msg.error() is not None:
                    continue
                topic = msg.topic() or ""
                part, off = int(msg.partition() or 0), int(msg.offset() or 0)
                if ".dlq." in topic:
                    rec = self.decoder.decode(msg.value())
                    with self.lock:
                        if rec is None:
                            self.undecodable.append((topic, part, off))
                        else:
                            self.letters.append(Letter(topic, part, off, msg.key(), rec))
                else:
                    try:
                        res = TaskResult.from_bytes(msg.value() or b"").to_dict()
                    except Exception:  # noqa: BLE001
                        continue
                    with self.lock:
                        self.results.setdefault(str(res["request_id"]), []).append(res)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        with contextlib.suppress(Exception):
            self.consumer.close()

    def snapshot(self) -> tuple[list[Letter], dict[str, list[dict[str, Any]]]]:
        with self.lock:
            return list(self.letters), {k: list(v) for k, v in self.results.items()}


# ------------------------------------------------------------------------------- tracking


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = -1
    offset: int = -1
    error: str | None = None


@dataclass
class Tracked:
    case: C.Case
    aid: str
    stack: int = 0
    produced: list[Produced] = field(default_factory=list)
    http: HttpResult | None = None
    future: cf.Future[HttpResult] | None = None
    asset_id: str | None = None           # the asset to observe
    request_id: str | None = None         # the TaskRequest to observe
    reqid: str = ""                       # request id of the prepared asset's blurhash
    delivery: str = ""                    # delivery id of the prepared asset's webhook
    ignore: set[tuple[str, int, int]] = field(default_factory=set)  # the preparation's letters
    expects_webhook: bool = False
    delivered_at: float = 0.0
    log_offset: int = 0
    delivery_error: str | None = None
    # observation
    asset: dict[str, Any] | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    hits: list[str] = field(default_factory=list)
    stalled: str | None = None            # why the pipeline was declared stuck on this case
    masked: str | None = None             # not judged: an earlier stall hid it


@dataclass
class CaseResult:
    case: C.Case
    passed: bool
    category: str
    observed: str
    evidence: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.case.id, "class": self.case.klass, "group": self.case.group,
                "passed": self.passed, "category": self.category,
                "expected": self.case.expected_text(), "observed": self.observed,
                "evidence": self.evidence, "description": self.case.description}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


# -------------------------------------------------------------------------------- the stack


def file_uri(path: Path) -> str:
    return "file://" + quote(str(path.resolve()))


def _asset_snapshot(a: Any) -> dict[str, Any]:
    names = ("asset_id", "status", "results", "info", "properties", "tags", "context",
             "notices", "refusals", "content_type", "uri", "on_success_result",
             "finalized_version", "unknown_postprocesses")
    return {n: getattr(a, n, None) for n in names}


class Stack:
    """One worker + one API on their own topic prefix, data dir and consumer group."""

    def __init__(self, env: Env, n: int) -> None:
        from agents.kafka.broker import free_port
        from tests.conftest import start_worker
        from tests.integration.api.test_api import Api

        self.env, self.n = env, n
        self.prefix = f"hostile{env.nonce}s{n}"
        self.base = env.base / f"stack{n}"
        self.web_port = free_port()
        extra = {
            "DARKROOM_TOPIC_PREFIX": self.prefix,
            "DARKROOM_WORKER_ID": f"darkroom-{self.prefix}",
            "DARKROOM_WEB_PORT": str(self.web_port),
            "DARKROOM_WEBHOOK_ALLOW": json.dumps([env.receiver.address.split(":")[0]]),
            "DARKROOM_WEBHOOK_SECRET": "whsec-hostile",
            "DARKROOM_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 1.0]",
            "DARKROOM_WEBHOOK_CONNECT_TIMEOUT_S": "1",
            "DARKROOM_WEBHOOK_READ_TIMEOUT_S": "2",
            "DARKROOM_TASK_ATTEMPTS": "2",
            "DARKROOM_TASK_TIMEOUT_S": "20",
            "DARKROOM_MAX_UPLOAD_BYTES": str(5 << 20),
            "DARKROOM_LOG_LEVEL": "info",
        }
        self.worker = start_worker(env.bootstrap, self.base, extra_env=extra)
        self.inbox = Path(self.worker.inbox).resolve()
        fixtures = self.inbox / "fixtures"
        fixtures.mkdir(parents=True, exist_ok=True)
        ok = fixtures / "ok.jpg"
        ok.write_bytes(media.encode(media.picture(300, 200, seed=70), "JPEG"))
        self.okjpeg = file_uri(ok)
        self.api: Any = None
        self.collector: Collector | None = None
        self.store: Any = None
        try:
            self.api = Api(self.worker, f"hostile-api-{self.prefix}",
                           extra={"DARKROOM_SYNC_TIMEOUT_S": "10"})
            self._wait_topics()
        except (AssertionError, StackError) as exc:
            self.stop()
            raise StackError(f"the stack did not start: {str(exc)[-2000:]}") from exc
        self.partitions = self._partitions()
        self.collector = Collector(env.bootstrap, self.prefix, env.decoder)
        self.store = self.worker.store()
        self.barrier_seq = 0

    def _wait_topics(self, timeout: float = 60) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.env.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        need = {f"{self.prefix}.uploads", f"{self.prefix}.dlq.uploads",
                f"{self.prefix}.results.blurhash", f"{self.prefix}.webhooks"}
        while time.monotonic() < deadline:
            if need <= set(admin.list_topics(timeout=5).topics):
                return
            if self.worker.proc is not None and self.worker.proc.poll() is not None:
                raise StackError("the worker exited at start:\n" + self.worker.log_tail(40))
            time.sleep(0.3)
        raise StackError("the worker did not create its topics:\n" + self.worker.log_tail(40))

    def _partitions(self) -> int:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.env.bootstrap, "log_level": 0})
        md = admin.list_topics(f"{self.prefix}.uploads", timeout=10)
        return len(md.topics[f"{self.prefix}.uploads"].partitions)

    def ctx(self, aid: str, reqid: str = "", delivery: str = "") -> C.Ctx:
        return C.Ctx(inbox=str(self.inbox), secret=str(self.env.secret),
                     lport=self.env.tripwire.port, allowed=self.env.receiver.address,
                     prefix=self.prefix, aid=aid, okjpeg=self.okjpeg, reqid=reqid,
                     delivery=delivery)

    def request_id_of(self, asset_id: str, postprocess: str = "blurhash") -> str | None:
        import sqlalchemy as sa

        with self.store.engine.connect() as conn:
            row = conn.execute(sa.text(
                "select request_id from asset_tasks where asset_id = :a and postprocess = :p"),
                {"a": asset_id, "p": postprocess}).first()
        return str(row[0]) if row else None

    def alive(self) -> tuple[bool, str]:
        bad = []
        if self.worker.proc is None or self.worker.proc.poll() is not None:
            code = self.worker.proc.returncode if self.worker.proc else None
            bad.append(f"worker exited ({code}):\n{self.worker.log_tail(25)}")
        if self.api is None or self.api.proc.poll() is not None:
            tail = self.api.log.read_text(errors="replace")[-2500:] if self.api else ""
            bad.append(f"API exited:\n{tail}")
        return (not bad), "\n".join(bad)

    def readyz(self) -> str:
        import httpx

        try:
            r = httpx.get(f"http://127.0.0.1:{self.web_port}/readyz", timeout=3)
            return f"{r.status_code} {r.text[:80]}"
        except httpx.HTTPError as exc:
            return f"no answer ({type(exc).__name__})"

    def log_size(self) -> int:
        try:
            return self.worker.log.stat().st_size if self.worker.log else 0
        except OSError:
            return 0

    def log_lines_since(self, offset: int, limit: int = 6) -> list[str]:
        if not self.worker.log:
            return []
        try:
            with open(self.worker.log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        keys = ("Traceback", "Error", "error", "failed; retrying", "Exception", "Crashed",
                "crash")
        lines = [ln.strip()[:300] for ln in text.splitlines() if any(k in ln for k in keys)]
        return lines[-limit:]

    def retries_since(self, offset: int) -> list[str]:
        """Lines where an agent retries forever ("... failed; retrying in ...")."""
        if not self.worker.log:
            return []
        try:
            with open(self.worker.log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "failed; retrying" in ln]

    def stop(self) -> None:
        from tests.conftest import stop_worker

        if self.collector is not None:
            self.collector.close()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.stop()
        stop_worker(self.worker)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()


class StackError(RuntimeError):
    pass


class Env:
    """What lives for the whole run: broker address, producer, tripwire, receiver, secret."""

    def __init__(self, bootstrap: str, base: Path) -> None:
        from tests.conftest import ROOT

        self.bootstrap, self.base = bootstrap, base
        self.nonce = uuid.uuid4().hex[:6]
        secret_dir = base / "secret"
        secret_dir.mkdir(parents=True, exist_ok=True)
        self.token = f"DARKROOM-CANARY-{secrets.token_hex(16)}"
        self.secret = (secret_dir / "canary.txt").resolve()
        self.secret.write_text(self.token + "\n")
        self.tripwire = Tripwire()
        self.receiver = AllowedReceiver(self.tripwire.port)
        self.decoder = DeadLetterDecoder(ROOT)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                                  "message.max.bytes": 8 << 20, "linger.ms": 5, "log_level": 0,
                                  "acks": "all"})
        self.http_answers: list[tuple[str, bytes]] = []

    def close(self) -> None:
        self.tripwire.close()
        self.receiver.close()
        self.producer.flush(10)


# ------------------------------------------------------------------------------- delivering


def _produce(env: Env, tr: Tracked, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
    rec = Produced(topic, key, value)
    tr.produced.append(rec)

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            rec.error = str(err)
        else:
            rec.partition, rec.offset = msg.partition(), msg.offset()

    kwargs: dict[str, Any] = {"on_delivery": done}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            env.producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            env.producer.poll(0.05)


def _upload_event(stack: Stack, tr: Tracked, up: C.RawUpload) -> tuple[bytes, str]:
    from schemas.records import UploadEvent, now_ms

    ctx = stack.ctx(tr.aid)
    folder = stack.inbox / tr.aid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / up.filename
    if up.symlink_to is not None:
        path.symlink_to(C.substitute(up.symlink_to, ctx))
    elif up.data is not None:
        path.write_bytes(C.substitute(up.data, ctx))
    fields: dict[str, Any] = {"asset_id": tr.aid, "uri": file_uri(path) if up.symlink_to is None
                              else "file://" + quote(str(path)),
                              "filename": up.filename, "folder": f"/hostile/{tr.case.klass}",
                              "uploaded_at": now_ms()}
    fields.update(C.substitute(dict(up.fields), ctx))
    ev = UploadEvent.from_dict(fields)
    return ev.to_bytes(), str(fields["asset_id"])


def prepare(stack: Stack, items: Sequence[Tracked], timeout: float = 30.0) -> None:
    """Upload a valid asset (id = the case's aid) for every case that needs one, wait for it
    (and for its first webhook attempt) and remember its blurhash request id / delivery id."""
    need = [t for t in items if isinstance(t.case.delivery, C.Message)
            and t.case.delivery.prepare]
    if not need:
        return
    png = media.encode(media.picture(64, 64, seed=85), "PNG")
    for t in need:
        fields: dict[str, Any] = {"content_type": "image/png"}
        if t.case.delivery.prepare == "delivery":  # type: ignore[union-attr]
            fields["notification_url"] = f"http://{stack.env.receiver.address}/fail/{t.aid}"
        _produce(stack.env, t, f"{stack.prefix}.uploads", t.aid.encode(),
                 _upload_event(stack, t, C.RawUpload("prep.png", png, fields))[0])
    stack.env.producer.flush(30)
    def ready(t: Tracked, found: dict[str, Any]) -> bool:
        if t.aid not in found or found[t.aid].status not in FINAL:
            return False
        if t.case.delivery.prepare != "delivery":  # type: ignore[union-attr]
            return True
        # the prepared webhook must have failed for good (state dead, its dead letter out):
        # nothing of the preparation may happen after the case's own message
        rows = stack.store.deliveries_of(t.aid)
        return bool(rows) and all(d.get("state") == "dead" for d in rows)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = stack.store.get_assets([t.aid for t in need])
        if all(ready(t, found) for t in need):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the preparation's dead letters reach the collector
    letters, _ = stack.collector.snapshot() if stack.collector else ([], {})
    keys = {t.aid.encode(): t for t in need}
    for lt in letters:
        owner = keys.get(lt.key or b"")
        if owner is not None:
            owner.ignore.add((lt.topic, lt.partition, lt.offset))
    for t in need:
        t.produced.clear()  # the preparation is not the case's own message
        try:
            t.reqid = stack.request_id_of(t.aid) or ""
            rows = stack.store.deliveries_of(t.aid)
            t.delivery = str(rows[0]["delivery_id"]) if rows else ""
        except Exception as exc:  # noqa: BLE001
            t.delivery_error = f"preparation failed: {exc}"
            continue
        if not t.reqid:
            t.delivery_error = "preparation failed: the prepared asset has no blurhash request"
        elif t.case.delivery.prepare == "delivery" and not t.delivery:  # type: ignore[union-attr]
            t.delivery_error = "preparation failed: the prepared asset has no webhook delivery"
        if t.case.delivery.prepare == "delivery":  # type: ignore[union-attr]
            t.expects_webhook = True


def deliver(stack: Stack, tr: Tracked, pool: cf.ThreadPoolExecutor) -> None:
    env = stack.env
    tr.stack = stack.n
    tr.delivered_at = time.monotonic()
    tr.log_offset = stack.log_size()
    d = tr.case.delivery
    ctx = stack.ctx(tr.aid, tr.reqid, tr.delivery)
    if tr.delivery_error:
        return
    try:
        if isinstance(d, C.Http):
            req = _render_http(d, ctx)
            tr.future = pool.submit(exchange, req, "127.0.0.1", stack.api.port, _api_key())
        elif isinstance(d, C.RawUpload):
            value, asset_id = _upload_event(stack, tr, d)
            tr.asset_id = asset_id
            tr.expects_webhook = "notification_url" in d.fields
            _produce(env, tr, f"{stack.prefix}.uploads", tr.aid.encode(), value)
        else:
            key = C.substitute(d.key, ctx) if d.key is not None else None
            rendered = C.render_value(d.value, ctx)
            if isinstance(d.value, C.Record):
                fields = C.substitute(dict(d.value.fields), ctx)
                if d.value.schema in ("UploadEvent", "TaskRequest", "TaskResult",
                                      "WebhookDelivery"):
                    aid = fields.get("asset_id")
                    tr.asset_id = aid if isinstance(aid, str) and len(aid) <= 20000 else None
                if d.value.schema == "TaskRequest":
                    tr.request_id = str(fields.get("request_id"))
                if d.value.schema == "UploadEvent":
                    tr.expects_webhook = bool(fields.get("notification_url"))
                if d.value.schema == "WebhookDelivery" and d.prepare:
                    tr.asset_id = tr.aid  # the prepared asset: its delivery rows tell
            _produce(env, tr, f"{stack.prefix}.{d.topic}", key, rendered)
    except Exception as exc:  # noqa: BLE001 - a case the runner could not build: say so
        tr.delivery_error = f"{type(exc).__name__}: {exc}"


def _api_key() -> str:
    from tests.integration.api.test_api import KEY

    return KEY


def _render_http(req: C.Http, ctx: C.Ctx) -> C.Http:
    parts = None
    if req.parts is not None:
        parts = tuple(replace(p, data=C.substitute(p.data, ctx)) for p in req.parts)
    return replace(req, target=C.substitute(req.target, ctx), body=C.substitute(req.body, ctx),
                   parts=parts)


# ------------------------------------------------------------------------------- barriers


class Barrier:
    """One upload per partition, with a webhook to the allowlisted receiver."""

    def __init__(self, stack: Stack) -> None:
        from schemas.records import UploadEvent, now_ms

        self.stack = stack
        stack.barrier_seq += 1
        self.ids: list[str] = []
        self.partition_of: dict[str, int] = {}
        self.tracks: list[Tracked] = []
        png = media.encode(media.picture(64, 64, seed=80), "PNG")
        folder = stack.inbox / "barriers"
        folder.mkdir(parents=True, exist_ok=True)
        for p in range(stack.partitions):
            k = 0
            while True:
                aid = f"barrier-{stack.prefix}-{stack.barrier_seq}-{p}-{k}"
                if zlib.crc32(aid.encode()) % stack.partitions == p:
                    break
                k += 1
            path = folder / f"{aid}.png"
            path.write_bytes(png)
            ev = UploadEvent(asset_id=aid, uri=file_uri(path), filename=path.name,
                             folder="/hostile/barrier", content_type="image/png",
                             uploaded_at=now_ms(),
                             notification_url=f"http://{stack.env.receiver.address}/ok/{aid}")
            tr = Tracked(_BARRIER_CASE, aid, stack.n)
            _produce(stack.env, tr, f"{stack.prefix}.uploads", aid.encode(), ev.to_bytes(),
                     partition=p)
            self.ids.append(aid)
            self.partition_of[aid] = p
            self.tracks.append(tr)
        stack.env.producer.flush(30)

    def states(self) -> dict[str, str]:
        found = self.stack.store.get_assets(self.ids)
        out = {}
        for aid in self.ids:
            a = found.get(aid)
            if a is None:
                out[aid] = "not routed (router or uploads partition stuck)"
            elif a.status == "pending":
                waiting = [n for n, r in (a.results or {}).items() if r.get("status") == "pending"]
                out[aid] = f"pending (tasks or sink stuck: {', '.join(waiting) or 'results'})"
            elif not self.stack.env.receiver.got(f"/ok/{aid}"):
                out[aid] = f"{a.status}, webhook not delivered (webhooks stuck)"
            else:
                out[aid] = "done"
        return out

    def progress(self) -> int:
        return sum(1 for s in self.states().values() if s == "done")

    def done(self) -> bool:
        return self.progress() == len(self.ids)

    def describe(self) -> str:
        return "; ".join(f"partition {self.partition_of[a]}: {s}"
                         for a, s in self.states().items() if s != "done")


_BARRIER_CASE = C.Case("barrier", "barrier", "barrier", "barrier", C.RawUpload("b.png", None), ())


# ------------------------------------------------------------------------------ observing


def refresh(stack: Stack, items: Sequence[Tracked]) -> None:
    letters, results = stack.collector.snapshot() if stack.collector else ([], {})
    ids = [t.asset_id for t in items if t.asset_id]
    assets: dict[str, Any] = {}
    for i in range(0, len(ids), 200):
        try:
            assets.update(stack.store.get_assets(ids[i: i + 200]))
        except Exception:  # noqa: BLE001 - a hostile id the store cannot look up
            for one in ids[i: i + 200]:
                try:
                    assets.update(stack.store.get_assets([one]))
                except Exception:  # noqa: BLE001
                    continue
    by_coord: dict[tuple[str, int, int], list[Letter]] = {}
    by_sha: dict[str, list[Letter]] = {}
    by_value: dict[bytes, list[Letter]] = {}
    by_key: dict[bytes, list[Letter]] = {}
    for lt in letters:
        f = lt.fields
        if int(f.get("source_partition", -1)) >= 0 and int(f.get("source_offset", -1)) >= 0:
            by_coord.setdefault((str(f.get("source_topic")), int(f["source_partition"]),
                                 int(f["source_offset"])), []).append(lt)
        if f.get("original_sha256"):
            by_sha.setdefault(str(f["original_sha256"]), []).append(lt)
        if f.get("original"):
            by_value.setdefault(bytes(f["original"]), []).append(lt)
        named = f.get("asset_id")
        for k in (lt.key, f.get("original_key"),
                  named.encode() if isinstance(named, str) else None):
            if k:
                by_key.setdefault(bytes(k), []).append(lt)
    hits = stack.env.tripwire.hits
    for t in items:
        if t.future is not None and t.future.done() and t.http is None:
            t.http = t.future.result()
            stack.env.http_answers.append((t.case.id, t.http.body))
            if _upload_2xx(t):
                data = t.http.json()
                if isinstance(data, dict) and isinstance(data.get("asset_id"), str):
                    t.asset_id = data["asset_id"]
                    t.expects_webhook = _form_has(t.case.delivery, b"notification_url")
        if t.asset_id and t.asset_id in assets:
            t.asset = _asset_snapshot(assets[t.asset_id])
            if t.expects_webhook and t.asset["status"] in FINAL:
                try:
                    t.deliveries = stack.store.deliveries_of(t.asset_id)
                except Exception:  # noqa: BLE001
                    t.deliveries = []
        found: dict[int, Letter] = {}
        for p in t.produced:
            cands: list[Letter] = []
            if p.partition >= 0:
                cands += by_coord.get((p.topic, p.partition, p.offset), [])
            if p.value:
                # the same bytes may have been produced on several topics: same source only
                cands += [lt for lt in by_sha.get(hashlib.sha256(p.value).hexdigest(), [])
                          + by_value.get(p.value, [])
                          if lt.fields.get("source_topic") == p.topic]
            if p.key:
                cands += by_key.get(p.key, [])
            for lt in cands:
                # a letter that names other coordinates belongs to another message
                sp = int(lt.fields.get("source_partition", -1))
                if (sp >= 0 and lt.fields.get("source_topic") == p.topic
                        and (sp, int(lt.fields.get("source_offset", -1)))
                        != (p.partition, p.offset)):
                    continue
                found[id(lt)] = lt
        if t.asset_id:
            for lt in by_key.get(t.asset_id.encode(), []):
                found[id(lt)] = lt
        t.letters = [lt for lt in found.values()
                     if (lt.topic, lt.partition, lt.offset) not in t.ignore]
        if t.request_id:
            t.results = results.get(t.request_id, [])
        t.hits = [h.first_bytes[:120].decode(errors="replace") for h in hits
                  if h.case_aid() and (h.case_aid() == t.aid
                                       or (t.asset_id and h.case_aid() == t.asset_id))]


def _form_has(d: C.Delivery, name: bytes) -> bool:
    return isinstance(d, C.Http) and d.parts is not None and any(
        p.name == name for p in d.parts)


def _upload_2xx(t: Tracked) -> bool:
    d = t.case.delivery
    return (isinstance(d, C.Http) and d.upload and t.http is not None
            and t.http.status is not None and 200 <= t.http.status < 300)


def settled(t: Tracked) -> bool:
    """The case has shown its outcome (it may still be judged a failure)."""
    if t.delivery_error or t.stalled or t.masked:
        return True
    if t.future is not None and t.http is None:
        return False
    a = t.asset
    if a is not None:
        if a["status"] not in FINAL:
            return False
        if "finalized_version" in a and a["finalized_version"] is None:
            return False
        if t.expects_webhook:
            return bool(t.deliveries) and not any(
                d.get("state") in DELIVERY_OPEN for d in t.deliveries)
        return True
    if t.http is not None:
        return not _upload_2xx(t)
    return bool(t.letters or t.results)


def in_progress(t: Tracked) -> bool:
    """Work for the case is visibly under way (a pending asset, an open request, a webhook)."""
    if t.future is not None and t.http is None:
        return True
    a = t.asset
    if a is None:
        return _upload_2xx(t)
    if a["status"] not in FINAL:
        return True
    if "finalized_version" in a and a["finalized_version"] is None:
        return True
    return t.expects_webhook and any(d.get("state") in DELIVERY_OPEN for d in t.deliveries)


# ------------------------------------------------------------------------------- judging


def _words(text: str | None, words: Iterable[str]) -> bool:
    low = (text or "").lower()
    return any(w.lower() in low for w in words)


def _res(a: dict[str, Any]) -> dict[str, dict[str, Any]]:
    res = a.get("results") or {}
    return res if isinstance(res, dict) else {}


def _size(a: dict[str, Any]) -> tuple[Any, Any]:
    for src in (a.get("properties") or {}, a.get("info") or {}):
        if src.get("width") is not None:
            return src.get("width"), src.get("height")
    for r in _res(a).values():
        data = r.get("data") or {}
        if isinstance(data, dict) and data.get("width") is not None:
            return data.get("width"), data.get("height")
    return None, None


def describe_asset(a: dict[str, Any]) -> str:
    parts = []
    for name, r in sorted(_res(a).items()):
        st = r.get("status")
        if st == "error":
            parts.append(f"{name} error[{r.get('error_kind')}]: {str(r.get('error'))[:140]!r}")
        else:
            parts.append(f"{name} {st}")
    w, h = _size(a)
    size = f" {w}x{h}" if w is not None else ""
    refusals = f" refusals {a.get('refusals')}" if a.get("refusals") else ""
    return (f"asset {str(a.get('asset_id'))[:40]!r} {a.get('status')}{size} "
            f"[{'; '.join(parts) or 'no results'}]{refusals}")


def describe(t: Tracked) -> str:
    bits = []
    if t.delivery_error:
        bits.append(f"could not deliver: {t.delivery_error}")
    for p in t.produced:
        if p.error:
            bits.append(f"the broker refused the message: {p.error}")
    if t.http is not None:
        bits.append(t.http.summary())
    if t.asset is not None:
        bits.append(describe_asset(t.asset))
        if t.asset.get("on_success_result"):
            bits.append(f"on_success {json.dumps(t.asset['on_success_result'])[:200]}")
    for d in t.deliveries:
        bits.append(f"webhook {d.get('state')} ({str(d.get('last_error'))[:120]})")
    for lt in t.letters[:2]:
        bits.append(lt.text())
    for r in t.results[:1]:
        text = str(r.get("error") or r.get("data_json"))[:120]
        bits.append(f"task result {r.get('status')} {text}")
    for h in t.hits:
        bits.append(f"TRIPWIRE CONNECTION: {h!r}")
    if not bits:
        bits.append("nothing: no answer, no asset, no dead letter, no result")
    return " | ".join(bits)


Verdict = tuple[bool, str, str]   # passed, category, reason


def check(o: C.Outcome, t: Tracked, prefix: str) -> Verdict:
    a, h = t.asset, t.http
    if isinstance(o, C.Processed):
        if h is not None and h.status is not None and not 200 <= h.status < 300:
            return False, "valid input refused", f"the API answered {h.status}"
        if a is None:
            return False, "no outcome", "no asset"
        if a["status"] == "pending":
            return False, "asset still pending (hang)", "asset pending"
        errs = {n: r for n, r in _res(a).items() if r.get("status") != "ok"}
        if a["status"] != "complete" or errs:
            return False, "valid input failed", f"status {a['status']}"
        if o.kind == "other":
            if _res(a):
                return False, "non-media processed as media", "media tasks ran"
            return True, "", ""
        if not _res(a):
            return False, "not processed as media", f"no {o.kind} task ran"
        if o.kind == "video" and "validate-video" not in _res(a):
            return False, "not processed as video", "validate-video did not run"
        if o.width is not None:
            w, hh = _size(a)
            if (w, hh) != (o.width, o.height) and not (o.swap_ok and (w, hh) == (o.height,
                                                                                   o.width)):
                return False, "wrong size reported", f"size {w}x{hh}, true {o.width}x{o.height}"
        return True, "", ""
    if isinstance(o, C.Refused):
        if h is None or h.status is None or not 400 <= h.status < 500:
            return False, "not refused", "no 4xx from the API"
        if not h.detail():
            return False, "4xx without a detail", h.summary()
        if not _words(h.detail(), o.words):
            return False, "refusal without a clear reason", h.summary()
        return True, "", ""
    if isinstance(o, C.ErrorResult):
        if h is not None and h.status is not None and h.status >= 300:
            return False, "refused by the API", h.summary()
        if a is None:
            return False, "no outcome", "no asset"
        if a["status"] == "pending":
            return False, "asset still pending (hang)", "asset pending"
        res = _res(a)
        oks = [n for n, r in res.items() if r.get("status") == "ok" and n not in
               HEADER_ONLY_TASKS]
        if a["status"] == "refused" and _words(" ".join(a.get("refusals") or []), o.words):
            return True, "", ""
        failed = [(n, r) for n, r in res.items() if r.get("status") == "error"]
        if a["status"] == "complete" or not failed:
            what = "success on a broken file" if oks else "broken file accepted without an error"
            return False, what, f"status {a['status']}, ok: {', '.join(oks) or 'nothing'}"
        clear = [(n, r) for n, r in failed if _words(r.get("error"), o.words)]
        if not clear:
            return False, "error without a clear reason", str(failed[0][1].get("error"))[:200]
        kinds = {str(r.get("error_kind")) for _, r in clear}
        if not kinds & {"permanent", "None"}:
            return False, "error not permanent", f"error_kind {', '.join(sorted(kinds))}"
        if oks:
            return False, "success on a broken file", f"{', '.join(oks)} ok next to the error"
        return True, "", ""
    if isinstance(o, C.DeadLettered):
        if not t.letters:
            if t.results and any(r.get("status") == "ok" for r in t.results):
                return False, "processed as is (no dead letter)", "an ok task result"
            if a is not None:
                return False, "accepted as is (no dead letter)", f"asset {a['status']}"
            return False, "no outcome (silently dropped)", "no dead letter"
        reasons = []
        for lt in t.letters:
            tag = lt.tag(prefix)
            ok_topic = tag in o.topics or ("task" in o.topics and tag not in
                                          ("uploads", "results", "webhooks")) or (
                f"task:{tag}" in o.topics)
            if not ok_topic:
                reasons.append(f"on {lt.topic}")
                continue
            if not _words(lt.error, o.words):
                reasons.append(f"error {lt.error[:160]!r}")
                continue
            kind = lt.fields.get("original_kind")
            if o.original_kind and kind is not None and kind != o.original_kind:
                return (False, "dead letter with the wrong original_kind",
                        f"original_kind {kind!r}, expected {o.original_kind!r}")
            return True, "", ""
        cat = ("dead letter on another topic" if all(r.startswith("on ") for r in reasons)
               else "dead letter without a clear reason")
        return False, cat, "; ".join(reasons)[:300]
    if isinstance(o, C.HttpAnswer):
        if h is None or h.status is None:
            return False, "no HTTP answer (hang)", (h.error if h else None) or "no answer"
        if not o.low <= h.status <= o.high:
            if h.status >= 500:
                return False, "HTTP 5xx", h.summary()
            if 200 <= h.status < 300:
                return False, "accepted (expected a refusal)", h.summary()
            return False, "wrong status", h.summary()
        if h.status >= 400 and not h.detail():
            return False, "4xx without a detail", h.summary()
        if o.words and h.status >= 400 and not _words(h.detail(), o.words):
            return False, "refusal without a clear reason", h.summary()
        if 200 <= h.status < 300 and isinstance(t.case.delivery, C.Http) and \
                t.case.delivery.upload:
            if a is None:
                return False, "accepted upload never recorded", "no asset"
            if a["status"] == "pending":
                return False, "asset still pending (hang)", "asset pending"
        return True, "", ""
    if isinstance(o, C.ScriptFailed):
        if a is None:
            return False, "no outcome", "no asset"
        if a["status"] != "complete":
            return False, "asset not complete", describe_asset(a)
        rec = (a.get("on_success_result") or {}).get("script")
        if not rec:
            return False, "script outcome not recorded", "no on_success.script"
        if rec.get("status") != "error":
            return False, "script failure not recorded", f"status {rec.get('status')}"
        if o.kinds and rec.get("error_kind") not in o.kinds:
            return (False, "script error kind differs",
                    f"error_kind {rec.get('error_kind')}: {str(rec.get('error'))[:120]}")
        if a.get("tags"):
            return False, "failed script's updates applied", f"tags {a['tags'][:5]}"
        return True, "", ""
    if isinstance(o, C.NotDelivered):
        if a is None:
            return False, "no outcome", "no asset"
        if a["status"] == "pending":
            return False, "asset still pending (hang)", "asset pending"
        if not t.deliveries:
            return False, "no delivery recorded", "the URL was dropped without a refusal"
        states = {str(d.get("state")) for d in t.deliveries}
        if "delivered" in states:
            return False, "webhook delivered", ", ".join(sorted(states))
        if not states <= set(o.states):
            return (False, "webhook not refused",
                    f"state {', '.join(sorted(states))}: {t.deliveries[0].get('last_error')}")
        return True, "", ""
    if isinstance(o, C.ResultOk):
        good = [r for r in t.results if r.get("status") == "ok"]
        if not good:
            return False, "no outcome", "no ok task result"
        if o.width is not None:
            try:
                data = json.loads(good[0].get("data_json") or "{}")
            except ValueError:
                data = {}
            if data.get("width") is not None and data.get("width") != o.width:
                return False, "wrong size reported", f"width {data.get('width')}"
        return True, "", ""
    raise TypeError(o)


def _closest(t: Tracked) -> int:
    """The expected outcome that speaks about what was observed (its reason is the category):
    an HTTP refusal, the asset, a dead letter, a task result, in that order."""
    http_4xx = t.http is not None and t.http.status is not None and t.http.status >= 400
    channels: list[tuple[bool, tuple[type, ...]]] = [
        (http_4xx, (C.Refused, C.HttpAnswer)),
        (t.asset is not None, (C.Processed, C.ErrorResult, C.ScriptFailed, C.NotDelivered,
                               C.HttpAnswer)),
        (bool(t.letters), (C.DeadLettered,)),
        (bool(t.results), (C.ResultOk,)),
    ]
    for present, kinds in channels:
        if present:
            for i, o in enumerate(t.case.expect):
                if isinstance(o, kinds):
                    return i
    return 0


def judge(t: Tracked, prefix: str) -> CaseResult:
    evidence = [describe(t)]
    if t.masked:
        return CaseResult(t.case, False, "not reached (masked by a stall)", t.masked, evidence)
    if t.stalled:
        return CaseResult(t.case, False, "stalls the pipeline", t.stalled, evidence)
    if t.delivery_error:
        return CaseResult(t.case, False, "runner could not deliver", t.delivery_error, evidence)
    if any(p.error for p in t.produced):
        return CaseResult(t.case, False, "broker refused the message",
                          "; ".join(p.error or "" for p in t.produced), evidence)
    if t.hits:
        return CaseResult(t.case, False, "connection to the loopback listener",
                          describe(t), evidence)
    verdicts = [check(o, t, prefix) for o in t.case.expect]
    if any(v[0] for v in verdicts):
        return CaseResult(t.case, True, "", describe(t), [])
    if t.http is not None and t.http.status is not None and t.http.status >= 500:
        cat = "HTTP 5xx"
    elif t.http is not None and t.http.status is None:
        cat = "no HTTP answer (hang)"
    else:
        cat = verdicts[_closest(t)][1]
    reasons = "; ".join(f"{o.text()}: {v[2]}" for o, v in zip(t.case.expect, verdicts,
                                                               strict=True))[:600]
    return CaseResult(t.case, False, cat, describe(t), [f"why not: {reasons}"])


# --------------------------------------------------------------------------------- report


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    readyz: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stacks: int = 0

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.failed_checks

    def table(self) -> str:
        rows: list[tuple[str, ...]] = [("class", "cases", "passed", "failed")]
        tot = [0, 0, 0]
        for k in C.CLASSES:
            rs = [r for r in self.results if r.case.klass == k]
            if not rs:
                continue
            p = sum(r.passed for r in rs)
            rows.append((k, str(len(rs)), str(p), str(len(rs) - p)))
            tot = [tot[0] + len(rs), tot[1] + p, tot[2] + len(rs) - p]
        rows.append(("total", *map(str, tot)))
        width = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(width[i]) if i == 0 else c.rjust(width[i])
                           for i, c in enumerate(r)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)

    def groups(self) -> list[tuple[str, str, int, list[str]]]:
        out: dict[tuple[str, str], list[str]] = {}
        for r in self.failures:
            out.setdefault((r.case.klass, r.category), []).append(r.case.id)
        return sorted(((k, c, len(ids), ids) for (k, c), ids in out.items()),
                      key=lambda g: (C.CLASSES.index(g[0]), -g[2]))

    def text(self, max_failures: int = 10_000) -> str:
        out = [self.table(), ""]
        out.append(f"{len(self.results)} cases in {self.seconds:.0f} s on {self.stacks} stack(s)")
        out.append("")
        out.append("global checks:")
        for c in self.checks:
            out.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.name}"
                       + (f": {c.detail}" if c.detail and not c.passed else ""))
        if self.readyz:
            out.append("")
            out.append("worker /readyz (before -> after each class):")
            for k, b, a in self.readyz:
                out.append(f"  {k}: {b} -> {a}")
        groups = self.groups()
        if groups:
            out.append("")
            out.append("failure groups (class / category / count):")
            for k, cat, n, ids in groups:
                out.append(f"  {k:<10} {n:>4}  {cat}   e.g. {', '.join(ids[:3])}")
        if self.failures:
            out.append("")
            out.append("failures:")
            for r in self.failures[:max_failures]:
                out.append(f"- {r.case.id}  [{r.category}]")
                out.append(f"    case:     {r.case.description}")
                out.append(f"    expected: {r.case.expected_text()}")
                out.append(f"    observed: {r.observed[:700]}")
                for e in r.evidence[1:]:
                    out.append(f"    {e[:700]}")
            if len(self.failures) > max_failures:
                out.append(f"... and {len(self.failures) - max_failures} more")
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "stacks": self.stacks,
                "cases": [r.to_json() for r in self.results],
                "checks": [c.__dict__ for c in self.checks],
                "readyz": self.readyz}


# --------------------------------------------------------------------------------- running


@dataclass
class Options:
    idle_s: float = 20.0          # no progress for this long while barriers wait = stalled
    deadline_s: float = 240.0     # a class batch never waits longer
    settle_s: float = 25.0        # after the barriers: how long unsettled cases may still take
    seq_budget_s: float = 150.0   # replay time after a stall, per class
    seq_idle_s: float = 8.0
    workers: int = 4
    spares: int = 2               # fresh stacks kept warming while stalls are being replayed


class Runner:
    def __init__(self, bootstrap: str, base: Path, opts: Options | None = None,
                 log: Callable[[str], None] = log_default) -> None:
        self.env = Env(bootstrap, base)
        self.opts = opts or Options()
        self.log = log
        self.report = Report()
        self.stacks: list[Stack | None] = []
        self.stack: Stack | None = None
        self.spares: list[cf.Future[Stack]] = []
        self.retiring: list[cf.Future[Check]] = []
        self.bg = cf.ThreadPoolExecutor(4, thread_name_prefix="hostile-stacks")
        import threading

        self.lock = threading.Lock()
        self.pool = cf.ThreadPoolExecutor(self.opts.workers, thread_name_prefix="hostile-http")
        self.seq = 0

    # --- stacks
    def current(self) -> Stack:
        return self.stack or self.swap()

    def swap(self, warm_spare: bool = False) -> Stack:
        """Retire the current stack (if any) and make the spare (or a new one) current;
        ``warm_spare`` starts the next spare in the background (more stalls are coming)."""
        old, self.stack = self.stack, None
        if old is not None:
            self.retiring.append(self.bg.submit(self._retire_quietly, old))
        stack = None
        while self.spares and stack is None:
            spare = self.spares.pop(0)
            try:
                stack = spare.result(timeout=180)
            except Exception as exc:  # noqa: BLE001 - start a new one below, say why later
                self.log(f"a spare stack failed to start: {exc}")
        if stack is None:
            stack = self.new_stack()
        self.stack = stack
        while warm_spare and len(self.spares) < self.opts.spares:
            self.spares.append(self.bg.submit(self._build_stack))
        return stack

    def _retire_quietly(self, stack: Stack) -> Check:
        stack.stop()
        return self.leak_check_stack(stack)

    def _build_stack(self) -> Stack:
        with self.lock:
            n = len(self.stacks) + 1
            self.stacks.append(None)  # reserve the number
        stack = self._start(n)
        self.stacks[n - 1] = stack
        return stack

    def _start(self, n: int) -> Stack:
        self.log(f"starting stack {n} (worker + API)")
        started = time.monotonic()
        stack = Stack(self.env, n)
        warm = Barrier(stack)
        deadline = time.monotonic() + 90
        while not warm.done():
            ok, why = stack.alive()
            if not ok:
                stack.stop()
                raise StackError(why)
            if time.monotonic() > deadline:
                stack.stop()
                raise StackError(f"the fresh stack did not process uploads: {warm.describe()}\n"
                                 + stack.worker.log_tail(30))
            time.sleep(0.3)
        self.log(f"stack {n} ready in {time.monotonic() - started:.1f} s "
                 f"(prefix {stack.prefix}, {stack.partitions} partitions)")
        return stack

    def new_stack(self) -> Stack:
        if self.stack is not None:
            self.retiring.append(self.bg.submit(self._retire_quietly, self.stack))
            self.stack = None
        self.stack = self._build_stack()
        return self.stack

    # --- one class
    def run_class(self, klass: str, cases: list[C.Case]) -> None:
        stack = self.current()
        before = stack.readyz()
        started = time.monotonic()
        self.log(f"[{klass}] delivering {len(cases)} cases")
        items = [self._track(c) for c in cases]
        prepare(stack, items)
        log_offset = stack.log_size()
        for t in items:
            deliver(stack, t, self.pool)
        self.env.producer.flush(60)
        futures = [t.future for t in items if t.future is not None]
        cf.wait(futures, timeout=90)  # uploads publish their events before the barrier goes
        barrier = Barrier(stack)
        state = self.wait(stack, items, barrier, self.opts.idle_s, self.opts.deadline_s,
                          log_offset=log_offset)
        after = stack.readyz()
        if state != "ok":
            self.log(f"[{klass}] pipeline {state}: {barrier.describe()}; readyz {after}")
            alive, why = stack.alive()
            self.report.checks.append(Check(
                f"{klass}: no stall in the batch", False,
                f"{state}: {barrier.describe()}" + (f"; {why[:800]}" if not alive else "")
                + f"; worker log: {stack.log_lines_since(items[0].log_offset if items else 0)}"))
            self._readyz_check(klass, after)
            self.report.readyz.append((klass, before, after))
            retries = stack.retries_since(log_offset)
            named, _suspects, _topics = _culprits(items, retries)
            named = [t for t in named if _bound_ids_match(t, retries)]
            for t in named:
                t.stalled = (f"the batch {state}; the worker retries forever on this case: "
                             f"{[ln[-200:] for ln in retries if _bound_ids_match(t, [ln])][-1]}")
                self.log(f"[{klass}] {t.case.id} stalls the pipeline (named by the worker log)")
            done = [t for t in items if settled(t)]
            rest = [t for t in items if not settled(t)]
            self._judge(stack, done)
            self.log(f"[{klass}] {len(done)} settled, {len(rest)} to replay one by one")
            self.swap(warm_spare=bool(rest))
            self.replay(klass, rest)
            self.drop_spares()
        else:
            self.report.readyz.append((klass, before, after))
            self._judge(stack, items)
        self.canary(klass)
        alive, why = (self.stack.alive() if self.stack else (False, "no stack"))
        self.report.checks.append(Check(f"{klass}: worker and API alive", alive, why[:1500]))
        if not alive:
            self.swap()
        self.log(f"[{klass}] done in {time.monotonic() - started:.0f} s")

    def _readyz_check(self, klass: str, ready: str) -> None:
        self.report.checks.append(Check(
            f"{klass}: /readyz reports the stuck worker (503)", ready.startswith("503"),
            f"/readyz answered {ready} while the pipeline was stuck"))

    def _track(self, case: C.Case) -> Tracked:
        self.seq += 1
        return Tracked(case, f"hx{self.env.nonce}-{self.seq:04d}")

    def _judge(self, stack: Stack, items: list[Tracked]) -> None:
        refresh(stack, items)
        for t in items:
            self.report.results.append(judge(t, stack.prefix))

    def wait(self, stack: Stack, items: list[Tracked], barrier: Barrier, idle_s: float,
             deadline_s: float, settle_s: float | None = None, grace_s: float = 3.0,
             log_offset: int | None = None) -> str:
        """'ok' once the barriers are through and every case settled (or nothing is visibly
        under way any more); 'stalled' when nothing progresses; 'crashed' when a process died."""
        settle = self.opts.settle_s if settle_s is None else settle_s
        start = last = time.monotonic()
        last_progress = -1
        barrier_done_at: float | None = None
        while True:
            refresh(stack, items)
            done = [settled(t) for t in items]
            n = sum(done)
            b = barrier.progress()
            now = time.monotonic()
            if n + b != last_progress:
                last_progress, last = n + b, now
            ok, _why = stack.alive()
            if not ok:
                return "crashed"
            if b == len(barrier.ids):
                barrier_done_at = barrier_done_at or now
                waited = now - barrier_done_at
                if n == len(items) and waited >= 1.0:
                    return "ok"
                busy = any(in_progress(t) for t, d in zip(items, done, strict=True) if not d)
                if (not busy and waited >= grace_s) or waited > settle:
                    return "ok"
            elif now - last > idle_s or now - start > deadline_s:
                return "stalled"
            elif log_offset is not None and now - last > 4.0 and stack.retries_since(log_offset):
                return "stalled"  # an agent retries forever and nothing moves
            time.sleep(0.3)

    def drop_spares(self) -> None:
        """Spares no replay needs any more: retire them in the background."""
        def retire(spare: cf.Future[Stack]) -> Check:
            return self._retire_quietly(spare.result(timeout=180))

        for spare in self.spares:
            self.retiring.append(self.bg.submit(retire, spare))
        self.spares = []

    def replay(self, klass: str, items: list[Tracked]) -> None:
        """Replay the cases a stall left unjudged in *waves* of at most one case per agent
        topic, with a barrier after each wave. When a wave stalls, the worker log names the
        agent that retries forever (and often the asset it is bound to), which names the case;
        when it cannot, the suspects are replayed alone."""
        started = time.monotonic()
        queue = _interleave(items)
        solo: set[int] = set()
        while queue:
            if time.monotonic() - started > self.opts.seq_budget_s:
                for rest in queue:
                    rest.masked = ("a stall hid it and the replay budget "
                                   f"({self.opts.seq_budget_s:.0f} s) ran out before it")
                    self.report.results.append(judge(rest, ""))
                return
            wave = _wave(queue, solo)
            queue = [t for t in queue if t not in wave]
            stack = self.current()
            fresh = [Tracked(t.case, f"{t.aid}r{stack.n}") for t in wave]
            prepare(stack, fresh)
            offset = stack.log_size()
            for t in fresh:
                deliver(stack, t, self.pool)
            self.env.producer.flush(30)
            cf.wait([t.future for t in fresh if t.future is not None], timeout=60)
            barrier = Barrier(stack)
            state = self.wait(stack, fresh, barrier, self.opts.seq_idle_s, 90, settle_s=20,
                              grace_s=1.0, log_offset=offset)
            refresh(stack, fresh)
            if state == "ok":
                for t in fresh:
                    self.report.results.append(judge(t, stack.prefix))
                continue
            retries = stack.retries_since(offset)
            culprits, suspects, topics = _culprits(fresh, retries)
            why = (f"the pipeline {state} after this message: {barrier.describe()}"
                   + (f"; the worker retries forever: {retries[-1][-220:]}" if retries else "")
                   + f"; /readyz {stack.readyz()}")
            again: list[Tracked] = []
            for orig, t in zip(wave, fresh, strict=True):
                if t in culprits:
                    t.stalled = why
                    self.log(f"[{klass}] {t.case.id} {state} the pipeline")
                    self.report.results.append(judge(t, stack.prefix))
                elif settled(t) and not _in_topics(t.case, topics):
                    self.report.results.append(judge(t, stack.prefix))
                else:
                    if t in suspects:
                        solo.add(id(orig))
                    again.append(orig)
            queue = again + queue
            self.swap(warm_spare=bool(queue))

    def canary(self, klass: str) -> None:
        stack = self.current()
        started = time.monotonic()
        req = C.api_upload("canary.jpg", media.encode(media.picture(64, 48, seed=90), "JPEG"),
                           b"image/jpeg", folder="/hostile/canary")
        ans = exchange(req, "127.0.0.1", stack.api.port, _api_key(), timeout=CANARY_TIMEOUT_S)
        status = "no answer"
        if ans.status in (201, 202):
            aid = (ans.json() or {}).get("asset_id")
            while time.monotonic() - started < CANARY_TIMEOUT_S:
                a = stack.store.get_assets([aid]).get(aid)
                status = a.status if a is not None else "not recorded"
                if status in FINAL:
                    break
                time.sleep(0.2)
        else:
            status = ans.summary()
        took = time.monotonic() - started
        ok = status == "complete" and took <= CANARY_TIMEOUT_S
        self.report.checks.append(Check(
            f"canary after {klass} completes within {CANARY_TIMEOUT_S:.0f} s", ok,
            f"{status} after {took:.1f} s"))

    # --- leaks
    def leak_check_stack(self, stack: Stack) -> Check:
        token = self.env.token.encode()
        forms = [token, base64.b64encode(self.env.token.encode() + b"\n")[:24]]
        where: list[str] = []
        where += _scan_topics(self.env.bootstrap, stack.prefix, forms)
        data = Path(stack.worker.data_dir)
        for path in sorted(data.rglob("*")) if data.exists() else []:
            if path.is_file() and not path.is_symlink() and path.stat().st_size < (256 << 20):
                blob = path.read_bytes()
                if any(f in blob for f in forms):
                    where.append(str(path.relative_to(self.env.base)))
        for log in (stack.worker.log, getattr(stack.api, "log", None)):
            if log is not None and Path(log).exists() and any(
                    f in Path(log).read_bytes() for f in forms):
                where.append(f"log {Path(log).name}")
        return Check(f"stack {stack.n}: the canary secret appears in no topic, database, "
                     "object or log", not where, ", ".join(where[:10]))

    def final_checks(self) -> None:
        forms = [self.env.token.encode()]
        bodies = [r for r in self.env.receiver.received if any(f in r.body for f in forms)]
        answers = [cid for cid, body in self.env.http_answers if any(f in body for f in forms)]
        self.report.checks.append(Check(
            "the canary secret appears in no webhook body or HTTP answer",
            not bodies and not answers,
            f"webhook bodies: {[b.path for b in bodies][:5]}, answers: {answers[:5]}"))
        hits = self.env.tripwire.hits
        self.report.checks.append(Check(
            f"the loopback listener (port {self.env.tripwire.port}) saw no connection",
            not hits, "; ".join(f"{h.peer}: {h.first_bytes[:80]!r}" for h in hits[:8])))

    # --- everything
    def run(self, cases: list[C.Case]) -> Report:
        started = time.monotonic()
        try:
            self.swap()
            for klass in C.CLASSES:
                todo = [c for c in cases if c.klass == klass]
                if todo:
                    self.run_class(klass, todo)
        except StackError as exc:
            self.report.checks.append(Check("a stack could be started", False, str(exc)[:3000]))
            judged = {r.case.id for r in self.report.results}
            for c in cases:
                if c.id not in judged:
                    self.report.results.append(CaseResult(c, False, "not run (no stack)",
                                                          "the stack did not start", []))
        finally:
            if self.stack is not None:
                self.retiring.append(self.bg.submit(self._retire_quietly, self.stack))
                self.stack = None
            for spare in self.spares:
                with contextlib.suppress(Exception):
                    self.retiring.append(self.bg.submit(self._retire_quietly,
                                                        spare.result(timeout=180)))
            self.spares = []
            for fut in self.retiring:
                try:
                    self.report.checks.append(fut.result(timeout=300))
                except Exception as exc:  # noqa: BLE001
                    self.report.checks.append(Check("stack shutdown", False, repr(exc)))
            self.bg.shutdown(wait=True)
            self.final_checks()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.env.close()
        self.report.seconds = time.monotonic() - started
        self.report.stacks = len([x for x in self.stacks if x is not None])
        return self.report


def _agent_topic(case: C.Case) -> str:
    """The topic whose agent a case talks to first (the one it can stall)."""
    d = case.delivery
    if isinstance(d, C.Http):
        return "uploads" if d.upload else "api"
    if isinstance(d, C.RawUpload):
        return "uploads"
    return d.topic.split(".")[0] if d.topic.startswith("results.") else d.topic


def _in_topics(case: C.Case, topics: set[str]) -> bool:
    agent = _agent_topic(case)
    return agent in topics or ("tasks" in topics and agent.startswith("tasks."))


def _wave(queue: list[Tracked], solo: set[int]) -> list[Tracked]:
    """The next wave: a suspect alone, else the first case of each agent topic (requests that
    touch no agent ride along, up to 8)."""
    if id(queue[0]) in solo:
        return [queue[0]]
    wave: list[Tracked] = []
    seen: set[str] = set()
    free = 0
    for t in queue:
        if id(t) in solo:
            continue
        agent = _agent_topic(t.case)
        if agent == "api":
            if free < 8:
                wave.append(t)
                free += 1
        elif agent not in seen:
            seen.add(agent)
            wave.append(t)
    return wave or [queue[0]]


def _culprits(fresh: list[Tracked], retries: list[str]
              ) -> tuple[list[Tracked], list[Tracked], set[str]]:
    """(named culprits, suspects to replay alone, stuck agent topics) of a stalled wave."""
    bound = {m for ln in retries for m in _bound_ids(ln)}
    topics = {t for t in (_retry_topic(ln) for ln in retries) if t is not None}
    named = [t for t in fresh if t.aid in bound or (t.asset_id or "") in bound]
    if named:
        return named, [], topics
    if topics:
        # the stuck agent's own case, or the upload case of the wave: an upload flows into
        # every agent (its tasks, its results in the sink, its webhooks)
        cands = [t for t in fresh if _in_topics(t.case, topics)
                 or _agent_topic(t.case) == "uploads"]
    else:
        cands = [t for t in fresh if not settled(t)]
    if len(cands) == 1:
        return cands, [], topics
    return [], cands, topics


def _round_robin(groups: Iterable[list[Tracked]]) -> list[Tracked]:
    lists = [list(g) for g in groups]
    out: list[Tracked] = []
    while any(lists):
        for g in lists:
            if g:
                out.append(g.pop(0))
    return out


def _interleave(items: list[Tracked]) -> list[Tracked]:
    """Round-robin over agent topics (so a wave spreads over several agents) and, within a
    topic, over case groups (so a limited replay still samples every group)."""
    by_topic: dict[str, dict[str, list[Tracked]]] = {}
    for t in items:
        by_topic.setdefault(_agent_topic(t.case), {}).setdefault(t.case.group, []).append(t)
    return _round_robin(_round_robin(g.values()) for g in by_topic.values())


_RETRY_TOPICS = (("routing a batch", "uploads"), ("merging results", "results"),
                 ("webhook attempt", "webhooks"), ("dead-lettering", "tasks"),
                 ("publishing a result", "tasks"))


def _retry_topic(line: str) -> str | None:
    for needle, topic in _RETRY_TOPICS:
        if needle in line:
            if topic == "tasks":
                m = re.search(r"\[\S+ ([a-z0-9-]+)\]", line)
                return f"tasks.{m.group(1)}" if m else "tasks"
            return topic
    return None


def _bound_ids_match(t: Tracked, lines: list[str]) -> bool:
    ids = {m for ln in lines for m in _bound_ids(ln)}
    return t.aid in ids or (t.asset_id or "") in ids


def _bound_ids(line: str) -> list[str]:
    """The asset id a retry line is bound to ('... darkroom.x [<asset> <task>] ...'), where
    the agent binds it before the work that fails: publishing a result, a webhook attempt
    (a malformed message is dead-lettered before any binding: the id shown is stale)."""
    if "publishing a result" not in line and "webhook attempt" not in line:
        return []
    m = re.search(r"\[(\S+) (\S+)\]", line)
    return [m.group(1)] if m and m.group(1) != "-" else []


def _scan_topics(bootstrap: str, prefix: str, forms: Sequence[bytes]) -> list[str]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hostile-scan-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0,
                  "fetch.wait.max.ms": 20, "fetch.message.max.bytes": 8 << 20})
    found: list[str] = []
    try:
        md = c.list_topics(timeout=10)
        tps = [TopicPartition(t, p, 0) for t, meta in md.topics.items()
               if t.startswith(prefix + ".") for p in meta.partitions]
        if not tps:
            return []
        c.assign(tps)
        idle = time.monotonic()
        while time.monotonic() - idle < 2.0:
            msgs = c.consume(1000, timeout=0.3)
            if msgs:
                idle = time.monotonic()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                blobs: list[bytes] = [msg.key() or b"", msg.value() or b""]
                for header in msg.headers() or []:
                    value = header[1] if isinstance(header, tuple) else None
                    blobs.append(value if isinstance(value, bytes) else b"")
                if any(f in b for f in forms for b in blobs):
                    found.append(f"topic {msg.topic()}[{msg.partition()}]@{msg.offset()}")
    finally:
        c.close()
    return found


def run_suite(cases: list[C.Case], *, bootstrap: str | None = None, base: Path | None = None,
              opts: Options | None = None,
              log: Callable[[str], None] = log_default) -> Report:
    """Run ``cases`` against a broker (an embedded one when ``bootstrap`` is None)."""
    import tempfile

    base = base or Path(tempfile.mkdtemp(prefix="darkroom-hostile-"))
    log(f"working folder (logs, databases, objects): {base}")
    if bootstrap is None:
        from agents.kafka.broker import EmbeddedBroker

        with EmbeddedBroker(log_path=base / "tansu.log") as broker:
            return Runner(broker.bootstrap, base, opts, log).run(cases)
    return Runner(bootstrap, base, opts, log).run(cases)

