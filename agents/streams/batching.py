"""Batch pipelining for Faust agents, with acknowledgement only after the work is done.

``take_events`` stops filling its buffer while the agent works on a batch, so consumption and
processing never overlap. :func:`pipelined_batches` reads with ``noack_take`` instead and keeps up
to ``depth`` batches queued while one coroutine handles them *in order*; each event is acked only
after its batch was handled (its outputs flushed), so committed offsets never run ahead of the
work — at-least-once, as before, with the broker fetch running in parallel with the work.

Faust's ``noack_take`` wakes up every ``within`` seconds even with nothing to read (200 times a
second per agent at 5 ms: most of an idle worker's CPU). :func:`noack_batches` is the same
batching with the timer started by the first event of a batch: an idle agent sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
        async for events in noack_batches(cast(faust.Stream[Any], stream), batch, within):
            if worker.done():  # the handler broke its contract: surface it, do not ack
                worker.result()
            await queue.put(cast(Sequence[EventT[Any]], events))
    finally:
        if not worker.done():
            worker.cancel()


async def noack_batches(stream: faust.Stream[Any], max_: int, within: float
                        ) -> AsyncIterator[list[EventT[Any]]]:
    """Faust's ``Stream.noack_take`` (events, never acknowledged here: the caller acks each
    after its work), except that it waits without a timer while there is nothing to read: the
    ``within`` deadline of a batch starts at its first event. Built on the same stream hooks
    as ``noack_take`` (a processor fills the buffer while the stream is consumed passively)."""
    buffer: list[EventT[Any]] = []
    buffer_full = asyncio.Event()
    buffer_nonempty = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            buffer.append(event)
            buffer_nonempty.set()
            if len(buffer) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # type: ignore[arg-type]
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # pragma: no cover - as Faust's take
            log.exception("error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)  # type: ignore[arg-type]
    try:
        while not stream.should_stop:
            # no timer while idle: the first event starts the batch's deadline
            await stream.wait_for_stopped(buffer_nonempty)  # type: ignore[arg-type]
            if not buffer_full.is_set() and await _more_coming(buffer):
                await stream.wait_for_stopped(buffer_full, timeout=within)  # type: ignore[arg-type]
            if buffer:
                loop = asyncio.get_running_loop()
                buffer_consuming = loop.create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    buffer_full.clear()
                    buffer_nonempty.clear()
                    if not buffer_consuming.done():
                        buffer_consuming.set_result(None)
                    buffer_consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


async def _more_coming(buffer: list[Any], turns: int = 3) -> bool:
    """After a batch's first event: True when more follow at once (events fetched with it
    reach the buffer within a few turns of the loop), so waiting ``within`` fills the batch;
    False for a lone event (light traffic, a sync upload), which goes on without the wait."""
    for _ in range(turns):
        await asyncio.sleep(0)
        if len(buffer) > 1:
            return True
    return False
