"""agents.kafka.reading on a real broker: to the end by idleness, committed progress, one
message by position."""

from __future__ import annotations

import uuid

import pytest

from agents.kafka.producer import OutputProducer
from agents.kafka.reading import TopicMissing, read_assigned, read_committed, read_one
from agents.kafka.topics import ensure_topics

pytestmark = pytest.mark.integration


def test_reading_to_the_end_committed_progress_and_one_message(kafka_bootstrap: str) -> None:
    topic = f"reading-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=2, replication=1)
    producer = OutputProducer(kafka_bootstrap)
    for i in range(6):
        producer.send(topic, f"k{i}", f"v{i}".encode())
    producer.flush_sync()

    got = list(read_assigned(kafka_bootstrap, topic, idle_s=1.0))
    assert sorted(m.value() for m in got) == [f"v{i}".encode() for i in range(6)]

    group = f"reading-group-{uuid.uuid4().hex[:8]}"
    first = list(read_committed(kafka_bootstrap, topic, group, idle_s=1.0,
                                session_timeout_s=6))
    assert len(first) == 6
    assert list(read_committed(kafka_bootstrap, topic, group, idle_s=1.0,
                               session_timeout_s=6)) == []  # each one committed

    some = got[0]
    found = read_one(kafka_bootstrap, topic, int(some.partition() or 0), int(some.offset() or 0))
    assert found is not None and found.value() == some.value()

    with pytest.raises(TopicMissing):
        list(read_assigned(kafka_bootstrap, f"missing-{uuid.uuid4().hex[:8]}", idle_s=0.5))
