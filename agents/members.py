"""No silent split: every worker of a deployment must use the same database and object storage.

Two workers on one topic prefix share the partitions of every topic. If each used its own
database (the SQLite default) or its own local object folder, the assets would split between
them without a word: the API reads one database, the other worker's results land in another
(measured: 3 of 6 uploads stayed pending for ever). So a worker checks before it joins:

* every worker writes a small **heartbeat** to ``<prefix>.members`` (one partition, JSON, keyed
  by worker) every ``DARKROOM_HEARTBEAT_S`` (5): its name, host, and the identity of its
  database and of its object storage (below); ``left`` when it stops;
* at start a worker writes a ``joining`` heartbeat, then reads the topic from a little before
  "now" **up to its own heartbeat** (its position is the end: no end-offset lookup, which the
  embedded broker answers wrongly; ``reading.until_idle`` bounds the wait). A worker whose last
  heartbeat is younger than 3 x its interval and not ``left`` is alive; if one of those uses
  another database or storage, this worker writes ``left`` and refuses to start (exit status 1,
  the message names both and the fix). Two workers starting at once are ordered by the
  partition: the later one sees the earlier one and refuses.

Identities are what the resources say about themselves, not how they are addressed: the
database keeps a random id (``database_id`` in the store's ``cluster_state`` table), so two
URLs that reach one PostgreSQL agree and two SQLite files never do; SQLite adds the host (a
file cannot be shared between hosts). Local object storage keeps a random id next to its folder
(``<data_dir>/objects.id``: the same NFS mount agrees, two hosts' own folders do not); S3 is its
endpoint and bucket. Clocks: liveness compares the writer's wall clock with the reader's (hosts
should run NTP). ``DARKROOM_SPLIT_GUARD=false`` turns the check off (the heartbeats stay).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from agents.composition import Runtime

log = logging.getLogger("darkroom.members")

LIVE_INTERVALS = 3
"""A heartbeat younger than this many of its writer's intervals means the writer is alive."""

FIX = ("Workers of one deployment (one DARKROOM_TOPIC_PREFIX) must share one database and one "
       "object storage, or their assets split between them silently. Set "
       "DARKROOM_DATABASE_URL to one shared PostgreSQL (e.g. "
       "postgresql+psycopg://user@db-host/darkroom) and DARKROOM_STORAGE_BACKEND=s3 with the "
       "same DARKROOM_S3_ENDPOINT/DARKROOM_S3_BUCKET on every worker (README: PostgreSQL (and S3) "
       "for more than one host), or give this worker a DARKROOM_TOPIC_PREFIX of its own.")


class SplitRefused(RuntimeError):
    """Another live worker of this deployment uses another database or object storage."""


@dataclass(frozen=True)
class Resource:
    """What a database or object storage says it is (``id``) and where it is, for people."""

    id: str
    where: str


@dataclass(frozen=True)
class Heartbeat:
    worker: str
    host: str
    nonce: str
    state: str  # joining | member | left
    at_ms: int
    interval_s: float
    database: Resource
    storage: Resource

    def to_bytes(self) -> bytes:
        return json.dumps({"v": 1, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Heartbeat | None:
        """None for anything that is not a heartbeat (any producer may write to the topic)."""
        try:
            d = json.loads(raw or b"")
            return cls(worker=str(d["worker"]), host=str(d["host"]), nonce=str(d["nonce"]),
                       state=str(d["state"]), at_ms=int(d["at_ms"]),
                       interval_s=float(d["interval_s"]),
                       database=Resource(str(d["database"]["id"]), str(d["database"]["where"])),
                       storage=Resource(str(d["storage"]["id"]), str(d["storage"]["where"])))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def alive(self, now_ms: int) -> bool:
        return self.state != "left" and \
            now_ms - self.at_ms <= LIVE_INTERVALS * self.interval_s * 1000


# ------------------------------------------------------------------------------- identities
def database_identity(rt: Runtime) -> Resource:
    """The store's database: the random id it keeps (created by the first worker), and its URL
    without password (SQLite: the absolute file path, on this host)."""
    import sqlalchemy as sa

    found = rt.store.state_or_init("database_id", uuid.uuid4().hex)
    url = sa.engine.make_url(rt.settings.sqlalchemy_url)
    host = socket.gethostname()
    if url.get_backend_name() == "sqlite":
        path = os.path.abspath(url.database or ":memory:")
        return Resource(f"sqlite:{found}@{host}", f"SQLite file {path} on host {host}")
    return Resource(str(found), url.render_as_string(hide_password=True))


def storage_identity(rt: Runtime) -> Resource:
    """Object storage new objects go to: S3 by endpoint and bucket; a local folder by the random
    id kept next to it (``<data_dir>/objects.id``)."""
    s = rt.settings
    if s.storage_backend == "s3":
        where = f"s3 {(s.s3_endpoint or '').rstrip('/').lower()}/{s.s3_bucket}"
        return Resource(where, where)
    folder = s.storage_dir.resolve()
    marker = s.data_dir / "objects.id"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".objects.id.{os.getpid()}")
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, marker)  # atomic: the first writer wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    host = socket.gethostname()
    return Resource(f"local:{marker.read_text().strip()}",
                    f"local folder {folder} on host {host}")


# ------------------------------------------------------------------------------- the check
def conflicts(mine: Heartbeat, seen: dict[str, Heartbeat], now_ms: int) -> list[Heartbeat]:
    """The live workers (last heartbeat per worker) that use another database or storage."""
    return [hb for nonce, hb in sorted(seen.items()) if nonce != mine.nonce and hb.alive(now_ms)
            and (hb.database.id != mine.database.id or hb.storage.id != mine.storage.id)]


def refusal(mine: Heartbeat, others: list[Heartbeat], prefix: str, now_ms: int) -> str:
    lines = [f"refusing to join deployment {prefix!r}: another live worker uses a different "
             "database or object storage."]
    for hb in others:
        age = max(0.0, (now_ms - hb.at_ms) / 1000)
        lines.append(f"  worker {hb.worker} (heartbeat {age:.0f}s ago): database "
                     f"{hb.database.where}; storage {hb.storage.where}")
    lines.append(f"  this worker {mine.worker}: database {mine.database.where}; storage "
                 f"{mine.storage.where}")
    lines.append(FIX)
    return "\n".join(lines)


class Membership:
    """This worker's heartbeats on ``<prefix>.members``: :meth:`join` checks and starts them,
    :meth:`leave` stops them (``left``)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        s = rt.settings
        self.topic = s.topic("members")
        self.interval_s = s.heartbeat_s
        self.nonce = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._identity: tuple[Resource, Resource] | None = None
        self._left = False

    def heartbeat(self, state: str) -> Heartbeat:
        assert self._identity is not None
        db, storage = self._identity
        return Heartbeat(worker=self.rt.worker_name, host=socket.gethostname(), nonce=self.nonce,
                         state=state, at_ms=int(time.time() * 1000), interval_s=self.interval_s,
                         database=db, storage=storage)

    def _send(self, state: str, timeout: float = 10.0) -> Heartbeat:
        hb = self.heartbeat(state)
        self._producer.produce(self.topic, key=self.nonce.encode(), value=hb.to_bytes(),
                               headers=[("content-type", b"application/json")])
        if self._producer.flush(timeout):
            raise RuntimeError(f"could not write the heartbeat to {self.topic}")
        self._left = state == "left"
        return hb

    def join(self, read_timeout_s: float = 20.0) -> None:
        """Write ``joining``, read the recent heartbeats up to it, refuse on a split (raises
        :class:`SplitRefused`), then heartbeat every interval until :meth:`leave`."""
        from confluent_kafka import Producer

        from agents.kafka.clients import client_config
        from agents.kafka.topics import ensure_topics

        rt, s = self.rt, self.rt.settings
        self._identity = (database_identity(rt), storage_identity(rt))
        ensure_topics(rt.bootstrap, [self.topic], 1, s.replication_factor)
        self._producer = Producer(client_config({
            "bootstrap.servers": rt.bootstrap, "linger.ms": 0, "log_level": 3,
            "enable.idempotence": False}))
        since_ms = int(time.time() * 1000) - int(
            max(60.0, LIVE_INTERVALS * self.interval_s * 4) * 1000)
        mine = self._send("joining")
        seen = self._read_until(mine, since_ms, read_timeout_s)
        now = int(time.time() * 1000)
        found = conflicts(mine, seen, now)
        if found and s.split_guard:
            with contextlib.suppress(Exception):
                self._send("left", timeout=5)
            raise SplitRefused(refusal(mine, found, s.topic_prefix, now))
        if found:
            log.warning("split guard off: %s", refusal(mine, found, s.topic_prefix, now))
        live = sum(1 for n, hb in seen.items() if n != self.nonce and hb.alive(now))
        log.info("joined deployment %r (%d other live workers; database %s, storage %s)",
                 s.topic_prefix, live, mine.database.where, mine.storage.where)
        self._send("member")
        self._thread = threading.Thread(target=self._beat, name="darkroom-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _read_until(self, mine: Heartbeat, since_ms: int,
                    timeout_s: float) -> dict[str, Heartbeat]:
        """The last heartbeat of every worker from ``since_ms`` up to ``mine`` (its position
        is the end of what was written before it)."""
        from confluent_kafka import TopicPartition

        from agents.kafka.reading import open_consumer, until_idle

        seen: dict[str, Heartbeat] = {}
        deadline = time.monotonic() + timeout_s
        with open_consumer(self.rt.bootstrap) as consumer:
            start = consumer.offsets_for_times([TopicPartition(self.topic, 0, since_ms)],
                                               timeout=10)[0].offset
            # a wrong lookup (the embedded broker answers 0) only costs reading more
            consumer.assign([TopicPartition(self.topic, 0, max(start, 0))])
            for msg in until_idle(consumer, idle_s=min(timeout_s, 10.0)):
                hb = Heartbeat.from_bytes(msg.value())
                if hb is not None and hb.at_ms >= since_ms:
                    seen[hb.nonce] = hb
                if (hb is not None and hb.nonce == mine.nonce) or time.monotonic() > deadline:
                    return seen
        log.warning("did not read back this worker's own heartbeat on %s within %.0fs; "
                    "checked what was there", self.topic, timeout_s)
        return seen

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._send("member", timeout=self.interval_s)
            except Exception:
                log.debug("heartbeat failed", exc_info=True)

    def leave(self) -> None:
        """Stop heartbeating and say ``left`` (best effort: the broker may be gone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._producer is not None and self._identity is not None and not self._left:
            with contextlib.suppress(Exception):
                self._send("left", timeout=2)
            self._producer = None
