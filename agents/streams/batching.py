"""Batch pipelining for Faust agents, with acknowledgement only after the work is done.

``take_events`` stops filling its buffer while the agent works on a batch, so consumption and
processing never overlap. :func:`pipelined_batches` reads with ``noack_take`` instead and keeps
filling the next batch while one coroutine handles the previous ones *in order*; each event is
acked only after its batch was handled (its outputs flushed), so committed offsets never run
ahead of the work — at-least-once, as before, with the broker fetch running in parallel with the
work.

When a batch goes (:func:`noack_batches`): once the events fetched with its first have reached
it (a lone event, e.g. a sync upload, goes on at once), and then as soon as the handler is free
— while the handler works, the batch grows (up to its size), so a loaded agent handles large
batches and an idle one answers without a timer. Faust's ``noack_take`` instead waits a timer
after every batch and wakes up every ``within`` seconds with nothing to read (200 times a second
per agent at 5 ms: most of an idle worker's CPU).
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
    free = asyncio.Event()  # set while the handler waits for work: the next batch may go

    async def work() -> None:
        while True:
            if queue.empty():
                free.set()
            events = await queue.get()
            free.clear()
            if events is None:
                return
            await handle(events)
            for ev in events:
                ev.ack()

    worker = asyncio.ensure_future(work())
    try:
        async for events in noack_batches(cast(faust.Stream[Any], stream), batch, within,
                                          free):
            if worker.done():  # the handler broke its contract: surface it, do not ack
                worker.result()
            await queue.put(cast(Sequence[EventT[Any]], events))
    finally:
        if not worker.done():
            worker.cancel()


async def noack_batches(stream: faust.Stream[Any], max_: int, within: float,
                        go: asyncio.Event | None = None) -> AsyncIterator[list[EventT[Any]]]:
    """Faust's ``Stream.noack_take`` (events, never acknowledged here: the caller acks each
    after its work), except when a batch goes: it waits without a timer while there is nothing
    to read; after its first event, for the events fetched with it (at most ``within``
    seconds); then, when ``go`` is given, until ``go`` is set (the handler is free) or the
    batch is full. Built on the same stream hooks as ``noack_take`` (a processor fills the
    buffer while the stream is consumed passively)."""
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
                if go is not None:
                    go.set()  # a full batch goes, busy handler or not
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
            await fetched_with_first(buffer, max_, within)
            if go is not None and not go.is_set() and not buffer_full.is_set():
                await stream.wait_for_stopped(go)  # type: ignore[arg-type]
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


async def fetched_with_first(buffer: list[Any], max_: int, within: float,
                             quiet_turns: int = 3) -> None:
    """After a batch's first event: return once the events fetched with it have reached the
    buffer — it stopped growing for ``quiet_turns`` turns of the loop (the stream's drainer
    hands them over one after another), it is full, or ``within`` seconds passed. A lone event
    (light traffic, a sync upload) goes on after three turns, with no timer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen, quiet = len(buffer), 0
    while quiet < quiet_turns and seen < max_:
        await asyncio.sleep(0)
        if len(buffer) > seen:
            seen, quiet = len(buffer), 0
            if loop.time() >= deadline:
                return
        else:
            quiet += 1
