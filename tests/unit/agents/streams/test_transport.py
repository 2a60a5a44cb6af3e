"""The fetch wait is capped through the workers' own Faust transport, nothing process-wide;
it adapts to idleness, and every fetch is counted (records or empty, partitions named)."""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
import faust
import pytest
from prometheus_client import REGISTRY

from agents.streams.transport import (
    FAUST_FETCH_MAX_WAIT_MS,
    AdaptiveFetchWait,
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


class _Fetcher:
    """What AdaptiveFetchWait needs of aiokafka's Fetcher: the wait and the fetch call."""

    def __init__(self, answers: list[bool]) -> None:
        self._fetch_max_wait_ms = 10
        self._fetch_min_bytes = 1
        self.answers = answers

    async def _proc_fetch_request(self, assignment: Any, node_id: Any, request: Any) -> bool:
        return self.answers.pop(0)


class _Request:
    topics: ClassVar[list[Any]] = [("darkroom.uploads", [(0, 0, 1), (1, 0, 1)]),
                                   ("darkroom.results", [(2, 0, 1)])]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_fetch_wait_adapts_and_every_fetch_is_counted() -> None:
    fetcher = _Fetcher([True, False, False, False, False, False, True])
    adaptive = AdaptiveFetchWait(fetcher, idle_ms=35, idle_after_s=0.0)
    before = (_sample("darkroom_fetch_requests_total", outcome="records"),
              _sample("darkroom_fetch_requests_total", outcome="empty"),
              _sample("darkroom_fetch_partitions_total"))
    waits = []
    for _ in range(7):
        await fetcher._proc_fetch_request(None, 0, _Request())
        waits.append(fetcher._fetch_max_wait_ms)
    assert adaptive.short_ms == 10
    assert waits == [10, 20, 35, 35, 35, 35, 10]  # doubles to the idle cap, short at data
    after = (_sample("darkroom_fetch_requests_total", outcome="records"),
             _sample("darkroom_fetch_requests_total", outcome="empty"),
             _sample("darkroom_fetch_partitions_total"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 5, 21]


async def test_a_backlog_makes_the_wait_the_busy_one_until_the_agents_catch_up() -> None:
    backlog = [0, 3, 3, 1, 0, 0]
    fetcher = _Fetcher([True, True, False, True, True, False])
    AdaptiveFetchWait(fetcher, idle_ms=1000, idle_after_s=60.0, busy_ms=25,
                      backlog=lambda: backlog.pop(0))
    waits = []
    for _ in range(6):
        await fetcher._proc_fetch_request(None, 0, _Request())
        waits.append(fetcher._fetch_max_wait_ms)
    assert waits == [10, 25, 25, 25, 10, 10]  # short again once nothing waits


async def test_while_busy_a_fetch_asks_for_more_bytes() -> None:
    backlog = [0, 2, 2, 0, 0]
    fetcher = _Fetcher([True, True, True, True, False])
    AdaptiveFetchWait(fetcher, idle_ms=1000, idle_after_s=60.0, busy_ms=25,
                      backlog=lambda: backlog.pop(0), busy_min_bytes=32768)
    asked = []
    for _ in range(5):
        await fetcher._proc_fetch_request(None, 0, _Request())
        asked.append((fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes))
    assert asked == [(10, 1), (25, 32768), (25, 32768), (10, 1), (10, 1)]
    # without a busy wait there is no busy state: the minimum stays aiokafka's
    plain = _Fetcher([True])
    AdaptiveFetchWait(plain, idle_ms=1000, idle_after_s=60.0, backlog=lambda: 5,
                      busy_min_bytes=32768)
    await plain._proc_fetch_request(None, 0, _Request())
    assert (plain._fetch_max_wait_ms, plain._fetch_min_bytes) == (10, 1)


def test_a_fetcher_without_the_minimum_is_refused() -> None:
    fetcher = _Fetcher([])
    del fetcher._fetch_min_bytes
    with pytest.raises(RuntimeError, match="_fetch_min_bytes"):
        AdaptiveFetchWait(fetcher, idle_ms=1000, idle_after_s=60.0)


async def test_the_backlog_is_what_waits_in_the_apps_channels() -> None:
    app = WorkerApp("transport-test-backlog", fetch_max_wait_ms=10, **OPTIONS)
    assert app.backlog() == 0
    channels = [app.topic("darkroom.uploads"), app.topic("darkroom.results")]
    for ch in channels:
        app.topics.add(ch)
    channels[0].queue.put_nowait(1)
    channels[1].queue.put_nowait(2)
    channels[1].queue.put_nowait(3)
    assert app.backlog() == 3
    channels[1].queue.get_nowait()
    assert app.backlog() == 2
