"""Reading a topic to its end with a plain confluent-kafka consumer, for the command line.

"The end" is decided by idleness, never by end offsets (the embedded broker, tansu, answers
latest-offset lookups wrongly): reading stops once no message came for ``idle_s`` seconds. The
time the caller spends on a message does not count as idle.

* :func:`read_assigned`: every partition of a topic from given offsets (default 0), no group;
* :func:`read_committed`: a consumer group's progress on a topic; each message is committed
  once the caller is done with it (the next iteration), so a re-run resumes after it;
* :func:`read_one`: the message at one (topic, partition, offset);
* :func:`until_idle` and :func:`open_consumer` are what the three are made of (e.g. for a
  reader that looks up offsets by time before assigning, as :mod:`agents.replay` does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from agents.kafka.clients import client_config


class TopicMissing(LookupError):
    """The topic does not exist (or its metadata could not be read)."""


@contextmanager
def open_consumer(bootstrap: str, group: str | None = None, **conf: Any) -> Iterator[Consumer]:
    """A consumer that never auto-commits (``group``: a fresh random one unless given; extra
    librdkafka ``conf`` as keyword arguments with dots spelled as in librdkafka, e.g.
    ``**{"fetch.message.max.bytes": n}``), closed on exit."""
    consumer = Consumer(client_config({
        "bootstrap.servers": bootstrap,
        "group.id": group or f"darkroom-read-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "log_level": 3,
        **conf,
    }))
    try:
        yield consumer
    finally:
        consumer.close()


def partitions(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    """The partition numbers of ``topic``, sorted; :class:`TopicMissing` when it has none."""
    md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise TopicMissing(f"no topic {topic}")
    return sorted(md.partitions)


def until_idle(consumer: Consumer, idle_s: float, *, batch: int = 500, poll_s: float = 0.2,
               ready: Callable[[], bool] | None = None, ready_timeout_s: float = 60.0,
               ) -> Iterator[Message]:
    """The messages ``consumer`` receives (errors skipped) until none came for ``idle_s``.

    ``ready``: for a subscribed consumer, whether the group join has given it partitions; the
    idle clock starts only then (nothing is yielded, and reading ends, if that takes longer
    than ``ready_timeout_s``)."""
    start = time.monotonic()
    last: float | None = None if ready is not None else start
    while True:
        now = time.monotonic()
        if last is None:
            if ready is not None and ready():
                last = now
            elif now - start > ready_timeout_s:
                return
        elif now - last >= idle_s:
            return
        for msg in consumer.consume(batch, timeout=poll_s):
            if msg.error() is not None:
                continue
            yield msg
            last = time.monotonic()  # the caller's time with the message is not idleness


def read_assigned(bootstrap: str, topic: str, *, starts: Mapping[int, int] | None = None,
                  idle_s: float = 2.0, **conf: Any) -> Iterator[Message]:
    """Every message of ``topic`` from ``starts`` (partition -> offset; every partition from 0
    by default) until the topic is idle for ``idle_s``. :class:`TopicMissing` if it does not
    exist."""
    with open_consumer(bootstrap, **conf) as consumer:
        parts = partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, (starts or {}).get(p, 0)) for p in parts])
        yield from until_idle(consumer, idle_s)


def read_committed(bootstrap: str, topic: str, group: str, *, idle_s: float,
                   commit: bool = True, session_timeout_s: float | None = None,
                   **conf: Any) -> Iterator[Message]:
    """The messages of ``topic`` that consumer group ``group`` has not committed yet, until the
    topic is idle for ``idle_s`` after the group join. With ``commit`` each message is committed
    (synchronously) when the caller asks for the next one, so what the caller finished handling
    is not read again by the next run."""
    extra: dict[str, Any] = {"auto.offset.reset": "earliest", **conf}
    if session_timeout_s is not None:
        extra["session.timeout.ms"] = int(session_timeout_s * 1000)
    with open_consumer(bootstrap, group, **extra) as consumer:
        assigned: list[bool] = []
        consumer.subscribe([topic], on_assign=lambda _c, _parts: assigned.append(True))
        for msg in until_idle(consumer, idle_s, batch=100, ready=lambda: bool(assigned)):
            yield msg
            if commit:
                consumer.commit(message=msg, asynchronous=False)


def read_one(bootstrap: str, topic: str, partition: int, offset: int, *,
             timeout_s: float = 10.0, **conf: Any) -> Message | None:
    """The message at ``offset`` of ``topic[partition]``; None when nothing came within
    ``timeout_s`` or the first message there has another offset (compacted or deleted)."""
    with open_consumer(bootstrap, **conf) as consumer:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            return msg if msg.offset() == offset else None
    return None
