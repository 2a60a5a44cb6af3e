"""The shared producer reports delivery failures although it asks librdkafka for failure
reports only (``delivery.report.only.error``: no Python callback per delivered message)."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import KafkaException

from agents.kafka.producer import OutputProducer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_delivery_raises_from_flush() -> None:
    p = OutputProducer(f"127.0.0.1:{_closed_port()}", **{"message.timeout.ms": 300})
    assert p.send("darkroom.assets", "a1", b"value")
    with pytest.raises(KafkaException, match=r"errors: \['.*timed out"):
        p.flush_sync(timeout=10)
    # the failure was reported once: the next flush has nothing left to say
    assert p.flush_sync(timeout=1) == []
