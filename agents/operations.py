"""Operations shared by the command line (:mod:`agents.cli.ops`) and the console's JSON API
(:mod:`agents.api.console.ops`): dead letters (read, resolve the original, requeue) and the
per-task status figures of ``darkroom status``.

Topics are read with :mod:`agents.kafka.reading` (to the end by idleness, never by end offsets).
Every function blocks; the API calls them in a thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.composition import Runtime
    from schemas.records import DeadLetter

DeadLetterAt = tuple[int, int, "DeadLetter"]
"""(partition, offset, dead letter)."""

OPS_TOPICS = ("uploads", "results", "webhooks")
"""Dead-letter topics besides one per task: ``darkroom.dlq.uploads``, ``.results``,
``.webhooks``."""


def read_dead_letters(bootstrap: str, topic: str, *, idle_s: float = 2.0,
                      on_skip: Callable[[int, int, str], None] | None = None,
                      ) -> list[DeadLetterAt]:
    """Every dead letter of ``topic`` (read to the end by idleness), sorted by partition and
    offset. A value that is not a DeadLetter (anyone can write to a dlq topic) is skipped and
    told to ``on_skip(partition, offset, why)``. :class:`agents.kafka.reading.TopicMissing`
    when the topic does not exist."""
    from agents.kafka.reading import read_assigned
    from schemas.records import DeadLetter

    out: list[DeadLetterAt] = []
    for msg in read_assigned(bootstrap, topic, idle_s=idle_s):
        value = msg.value()
        if value is None:
            continue
        try:
            letter = DeadLetter.from_bytes(value)
        except ValueError as exc:
            if on_skip is not None:
                on_skip(int(msg.partition() or 0), int(msg.offset() or 0), str(exc))
            continue
        out.append((int(msg.partition() or 0), int(msg.offset() or 0), letter))
    return sorted(out, key=lambda t: (t[0], t[1]))


def original_of(bootstrap: str, dl: DeadLetter) -> bytes | None:
    """The original value of a dead letter: embedded, or (too large to embed) read back from
    its source topic at the recorded position and checked against its SHA-256. None for a
    tombstone or an original no longer in the log."""
    from agents.kafka.reading import read_one

    if dl.original_kind == "embedded":
        return bytes(dl.original)
    if dl.original_kind != "omitted" or dl.source_offset < 0:
        return None
    msg = read_one(bootstrap, dl.source_topic, dl.source_partition, dl.source_offset,
                   **{"fetch.message.max.bytes": 64 << 20})
    if msg is None:
        return None  # compacted or deleted meanwhile
    value = msg.value() or b""
    return value if hashlib.sha256(value).hexdigest() == dl.original_sha256 else None


def requeue_letter(root: Runtime, bootstrap: str, topic: str, partition: int, offset: int,
                   dl: DeadLetter) -> bool:
    """Send the dead letter's original back to its source topic (the normal path) and mark it
    ``requeued`` in the store; False (nothing sent) when the original cannot be had."""
    original = original_of(bootstrap, dl)
    if original is None:
        return False
    root.producer.send(dl.source_topic, dl.original_key, original)
    root.producer.flush_sync()
    root.store.mark_dead_letter(topic, partition, offset, "requeued")
    return True


def describe_letter(partition: int, offset: int, dl: DeadLetter,
                    mark: str | None) -> dict[str, Any]:
    """A dead letter as JSON (without its original's bytes)."""
    return {
        "ref": f"{partition}:{offset}", "partition": partition, "offset": offset,
        "asset_id": dl.asset_id, "task": dl.task, "error": dl.error[:4000],
        "error_kind": dl.error_kind, "attempts": dl.attempts, "failed_at": dl.failed_at,
        "source_topic": dl.source_topic, "source_partition": dl.source_partition,
        "source_offset": dl.source_offset, "original_kind": dl.original_kind,
        "original_size": dl.original_size, "mark": mark,
    }


def task_status(root: Runtime, window_s: float) -> dict[str, Any]:
    """The figures of ``darkroom status``: per registered task pending, in flight, done,
    failed, dead letters, rate over ``window_s`` and the requests the workers' consumer group
    has committed (from the store and the group's committed offsets, never from end offsets);
    and the stalled agents of the last two minutes."""
    from confluent_kafka import TopicPartition

    from agents.kafka.reading import open_consumer
    from schemas.records import now_ms

    settings, store = root.settings, root.store
    stats = store.task_stats(now_ms() - int(window_s * 1000))
    rows = []
    with open_consumer(root.bootstrap, settings.group_id) as consumer:
        for task in sorted(root.processors):
            topic = settings.topic("tasks", task)
            md = consumer.list_topics(topic, timeout=10).topics.get(topic)
            committed = 0
            if md is not None and md.error is None:
                tps = [TopicPartition(topic, p) for p in md.partitions]
                committed = sum(max(tp.offset, 0)
                                for tp in consumer.committed(tps, timeout=10))
            s = stats.get(task, {"pending": 0, "in_flight": 0, "done": 0, "failed": 0,
                                 "recent": 0})
            rows.append({"task": task, "pending": s["pending"], "in_flight": s["in_flight"],
                         "done": s["done"], "failed": s["failed"],
                         "dead_letters": s["failed"],
                         "rate_per_s": round(s["recent"] / window_s, 2),
                         "committed_requests": committed})
    # stalls are refreshed by the stuck worker at least every 30 s while it retries
    stalled = store.stalls(now_ms() - 120_000)
    return {"tasks": rows, "stalled": stalled}
