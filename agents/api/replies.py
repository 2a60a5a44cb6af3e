"""The reply path of synchronous uploads: one Kafka topic per API instance.

An API instance creates ``<prefix>.replies.<instance>`` and names it in the ``reply_to`` field of
each sync upload's event. The router and the sink send that asset's AssetUpdates there while its
sync tasks run, so every replica receives exactly the replies of its own uploads, whatever
partition the work ran on. A background thread reads the topic with a plain confluent-kafka
consumer (assigned, no group, from the beginning: a fresh topic per instance name) and completes
the asyncio futures of the requests waiting in this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agents.kafka.topics import ensure_topics
from schemas.records import AssetUpdate

log = logging.getLogger("darkroom.replies")


def sync_done(update: AssetUpdate) -> bool:
    """True when the asset's sync tasks have all ended (or it was refused)."""
    if update.status == "refused":
        return True
    results: dict[str, Any] = json.loads(update.results_json or "{}")
    return all(r.get("status") in ("ok", "error") for r in results.values()
               if r.get("mode") == "sync")


class ReplyListener:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[AssetUpdate]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ensure_topics(self.bootstrap, [self.topic], partitions=1, replication=1)
        from agents.kafka.clients import client_config

        consumer = Consumer(client_config({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"darkroom-replies-{self.topic}",  # required by the client; never joined
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,  # replies are latency-critical and tiny
            "log_level": 3,
        }))
        consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True,
                                        name="darkroom-replies")
        self._thread.start()
        log.info("sync replies arrive on %s", self.topic)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def expect(self, asset_id: str) -> asyncio.Future[AssetUpdate]:
        """Register before publishing the upload, so no reply can be missed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AssetUpdate] = loop.create_future()
        with self._lock:
            self._waiters[asset_id] = (loop, fut)
        return fut

    def forget(self, asset_id: str) -> None:
        with self._lock:
            self._waiters.pop(asset_id, None)

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) returns only once n messages came or the timeout ran
                # out: every answer would wait up to the timeout. poll() returns at the first
                # message; what came with it is taken without waiting.
                first = consumer.poll(0.05)
                if first is None:
                    continue
                for msg in [first, *consumer.consume(100, timeout=0)]:
                    key, value = msg.key(), msg.value()
                    if msg.error() is not None or key is None or value is None:
                        continue
                    self._deliver(key.decode(errors="replace"), value)
        finally:
            consumer.close()

    def _deliver(self, asset_id: str, value: bytes) -> None:
        with self._lock:
            waiter = self._waiters.get(asset_id)
        if waiter is None:
            return  # another life of this instance, or a request that gave up
        try:
            update = AssetUpdate.from_bytes(value)
        except Exception:
            log.warning("undecodable reply for %s", asset_id, exc_info=True)
            return
        if not sync_done(update):
            return
        loop, fut = waiter
        with self._lock:
            self._waiters.pop(asset_id, None)
        loop.call_soon_threadsafe(_resolve, fut, update)


def _resolve(fut: asyncio.Future[AssetUpdate], update: AssetUpdate) -> None:
    if not fut.done():
        fut.set_result(update)
