"""The output producer every agent shares, and what counts as a send refused for good."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from agents.kafka.clients import client_config

log = logging.getLogger("darkroom.producer")


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
            # only failures call back into Python: four callbacks per routed upload otherwise
            "delivery.report.only.error": True,
            "log_level": 3,
            **extra,
        }
        self._producer = Producer(client_config(conf))
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

    def send(self, topic: str, key: str | bytes | None, value: bytes, headers: Any = None,
             partition: int | None = None) -> bool:
        """Queue one message; False when the broker's client refused it for good. Without
        explicit ``headers`` the message gets Darkroom's (content type, schema, asset id, the
        current trace: :mod:`agents.kafka.headers`)."""
        k = key.encode() if isinstance(key, str) else key
        if headers is None:
            from agents.kafka.headers import for_message

            headers = for_message(k, value)
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value=value, key=k, headers=headers,
                                           on_delivery=self._on_delivery)
                else:
                    self._producer.produce(topic, value=value, key=k, headers=headers,
                                           partition=partition, on_delivery=self._on_delivery)
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

