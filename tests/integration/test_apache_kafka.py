"""The same contracts against Apache Kafka (KRaft) through testcontainers, where Docker exists."""

from __future__ import annotations

import pytest

from agents.kafka.producer import OutputProducer
from agents.kafka.topics import ensure_topics
from schemas.records import UploadEvent
from tests.conftest import TopicReader, docker_available

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers: the testcontainers "
                    "Apache Kafka path is skipped (the suite runs on the embedded tansu broker)")
def test_contracts_roundtrip_on_apache_kafka() -> None:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        bootstrap = kafka.get_bootstrap_server()
        ensure_topics(bootstrap, ["darkroom.uploads"], 3, 1)
        ev = UploadEvent(asset_id="k1", uri="file:///x", filename="x.jpg", tags=["a"])
        p = OutputProducer(bootstrap)
        p.send("darkroom.uploads", ev.asset_id, ev.to_bytes())
        p.flush_sync()
        msgs = TopicReader(bootstrap, "darkroom.uploads").read_until(lambda ms: len(ms) >= 1)
        assert UploadEvent.from_bytes(msgs[0].value()) == ev
