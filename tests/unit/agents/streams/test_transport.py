"""The fetch wait is capped through the workers' own Faust transport, nothing process-wide."""

from __future__ import annotations

import aiokafka
import faust

from agents.streams.transport import (
    FAUST_FETCH_MAX_WAIT_MS,
    FetchWaitConsumerThread,
    FetchWaitTransport,
    WorkerApp,
)

OPTIONS = {"broker": "kafka://127.0.0.1:1", "store": "memory://", "autodiscover": False,
           "topic_disable_leader": True}


async def _wait_of(app: faust.App) -> int:
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        return int(consumer._fetch_max_wait_ms)
    finally:
        await consumer.stop()  # never started: only releases what the constructor made


async def test_the_worker_app_caps_the_fetch_wait_of_its_consumer() -> None:
    init = aiokafka.AIOKafkaConsumer.__init__
    app = WorkerApp("transport-test-capped", fetch_max_wait_ms=10, **OPTIONS)
    assert isinstance(app.transport, FetchWaitTransport)
    assert isinstance(app.consumer._thread, FetchWaitConsumerThread)  # type: ignore[attr-defined]
    assert await _wait_of(app) == 10
    assert aiokafka.AIOKafkaConsumer.__init__ is init  # no monkeypatch


async def test_the_cap_never_raises_fausts_wait_and_other_apps_keep_theirs() -> None:
    high = WorkerApp("transport-test-high", fetch_max_wait_ms=5000, **OPTIONS)
    assert await _wait_of(high) == FAUST_FETCH_MAX_WAIT_MS
    plain = faust.App("transport-test-plain", **OPTIONS)
    assert type(plain.transport) is not FetchWaitTransport
    assert await _wait_of(plain) == FAUST_FETCH_MAX_WAIT_MS  # Faust's own 1500 ms
