"""Two deployments with different topic prefixes on one broker: each has its own consumer group
(derived from the prefix) and processes only its own uploads."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import start_worker, stop_worker
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration


def test_two_prefixes_two_groups_each_its_own_uploads(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    workers = {p: start_worker(kafka_bootstrap, tmp_path_factory.mktemp(p),
                               extra_env={"DARKROOM_TOPIC_PREFIX": p})
               for p in ("depa", "depb")}
    try:
        sent: dict[str, list[str]] = {}
        for prefix, w in workers.items():
            ids = []
            for i in range(3):
                path = photo(w.inbox / f"{prefix}{i}.jpg", seed=i)
                ev = UploadEvent(asset_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
                                 uri=LocalStorage.uri_for(path), filename=path.name,
                                 content_type="image/jpeg", uploaded_at=now_ms())
                p = OutputProducer(kafka_bootstrap)
                p.send(f"{prefix}.uploads", ev.asset_id, ev.to_bytes())
                p.flush_sync()
                ids.append(ev.asset_id)
            sent[prefix] = ids
        for prefix, w in workers.items():
            done = w.wait_assets(sent[prefix])
            assert all(a.status == "complete" for a in done.values())
            other = "depb" if prefix == "depa" else "depa"
            assert w.store().get_assets(sent[other]) == {}  # never saw the other's uploads
        # each deployment's group is its prefix: it committed offsets on its own uploads only
        for prefix in workers:
            other = "depb" if prefix == "depa" else "depa"
            assert _committed(kafka_bootstrap, prefix, f"{prefix}.uploads") > 0
            assert _committed(kafka_bootstrap, other, f"{prefix}.uploads") == 0
    finally:
        for w in workers.values():
            stop_worker(w)


def _committed(bootstrap: str, group: str, topic: str, timeout: float = 20) -> int:
    """Offsets ``group`` committed on ``topic`` (Faust commits every second: wait for it)."""
    import time

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False, "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        deadline = time.monotonic() + timeout
        while True:
            total = sum(max(tp.offset, 0) for tp in c.committed(
                [TopicPartition(topic, p) for p in parts], timeout=10))
            if total or time.monotonic() > deadline or group not in topic:
                return total
            time.sleep(0.5)
    finally:
        c.close()
