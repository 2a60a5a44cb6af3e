"""Batch pipelining for Faust agents, with acknowledgement only after the work is done.

``take_events`` stops filling its buffer while the agent works on a batch, so consumption and
processing never overlap. :func:`pipelined_batches` reads with ``noack_take`` instead and keeps up
to ``depth`` batches queued while one coroutine handles them *in order*; each event is acked only
after its batch was handled (its outputs flushed), so committed offsets never run ahead of the
work — at-least-once, as before, with the broker fetch running in parallel with the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust.types import EventT

log = logging.getLogger("darkroom.streaming")

BatchHandler = Callable[[Sequence[EventT[Any]]], Awaitable[Any]]


async def pipelined_batches(stream: faust.StreamT[Any], handle: BatchHandler, *, batch: int,
                            within: float, depth: int = 2) -> None:
    """Consume ``stream`` in batches; ``handle`` must not raise (retry inside it)."""
    queue: asyncio.Queue[Sequence[EventT[Any]] | None] = asyncio.Queue(maxsize=depth)

    async def work() -> None:
        while True:
            events = await queue.get()
            if events is None:
                return
            await handle(events)
            for ev in events:
                ev.ack()

    worker = asyncio.ensure_future(work())
    try:
        async for events in cast(faust.Stream[Any], stream).noack_take(batch, within=within):
            if worker.done():  # the handler broke its contract: surface it, do not ack
                worker.result()
            await queue.put(cast(Sequence[EventT[Any]], events))
    finally:
        if not worker.done():
            worker.cancel()
