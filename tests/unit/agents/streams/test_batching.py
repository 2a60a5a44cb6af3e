"""A batch goes once the events fetched with its first have reached it: no timer for a lone
event, and none while the rest of a fetch keeps arriving (up to the batch's size or wait)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from agents.streams.batching import fetched_with_first

LONG = 3600.0  # a wait that would hang the test if the batch waited for its timer


def test_a_lone_event_goes_on_without_waiting() -> None:
    buffer: list[Any] = ["first"]
    asyncio.run(asyncio.wait_for(fetched_with_first(buffer, 100, LONG), 5))
    assert buffer == ["first"]


async def _with_feed(buffer: list[Any], feed_items: int | None, max_: int, within: float
                     ) -> int:
    """Run the wait while a drainer hands over one event per turn of the loop (``None``: for
    ever); the batch's size when the wait ended."""

    async def feed() -> None:
        for i in itertools.count() if feed_items is None else range(feed_items):
            buffer.append(i)
            await asyncio.sleep(0)

    async def waited() -> int:
        await fetched_with_first(buffer, max_, within)
        return len(buffer)

    task = asyncio.ensure_future(feed())
    try:
        return await asyncio.wait_for(waited(), 5)
    finally:
        task.cancel()


def test_the_events_fetched_with_the_first_all_join_the_batch() -> None:
    buffer: list[Any] = ["first"]
    assert asyncio.run(_with_feed(buffer, 40, 100, LONG)) == 41


def test_a_full_batch_goes_at_once() -> None:
    buffer: list[Any] = ["first"]
    assert asyncio.run(_with_feed(buffer, None, 10, LONG)) == 10


def test_an_endless_stream_is_cut_at_the_batch_wait() -> None:
    buffer: list[Any] = ["first"]
    assert asyncio.run(_with_feed(buffer, None, 10**9, 0.02)) > 1
