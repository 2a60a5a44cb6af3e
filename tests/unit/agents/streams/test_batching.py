"""The batch wait applies only when more events follow the first one at once."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.streams.batching import _more_coming


def test_a_lone_event_goes_on_without_waiting() -> None:
    assert asyncio.run(_more_coming(["first"])) is False


def test_events_arriving_with_the_first_fill_the_batch() -> None:
    async def run() -> bool:
        buffer: list[Any] = ["first"]

        async def feed() -> None:  # the stream's drainer handing over the fetched rest
            buffer.append("second")

        task = asyncio.ensure_future(feed())
        found = await _more_coming(buffer)
        await task
        return found

    assert asyncio.run(run()) is True
