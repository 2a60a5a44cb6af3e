"""Calls of concurrent handlers combined into one: one thread hop, one transaction, one flush.

Every task request marks itself started in the store before it runs and publishes its result
after (one transaction and one broker flush, each on a thread of the I/O pool). Under load many
handlers do this at the same moment, and each transaction, flush and thread hop costs more than
the work inside it. A :class:`Coalescer` hands the calls that arrive while one is in flight to
the next call together. There is no timer: a lone call (a sync upload, light traffic) goes at
once and waits for nothing; only calls that would have queued behind each other are combined.

Each caller gets its own outcome (a value or an exception). ``run_many`` returns one outcome per
item; :func:`isolated` runs a failed batch again one item at a time unless the failure is
transient, so one bad item never fails the others, and a transient failure (the database or the
broker away) reaches every caller, whose own retry (:func:`agents.streams.poison.settle`) tries
again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from agents.streams.poison import classify

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

class Coalescer(Generic[I, R]):
    """``await coalescer(item)`` runs ``run_many([..., item, ...])`` through ``submit`` (a thread
    of the I/O pool) together with the items of the other callers that came while the previous
    call was in flight, at most ``max_items`` at a time, in arrival order."""

    def __init__(self, run_many: Callable[[Sequence[I]], Sequence[R | BaseException]],
                 submit: Callable[[Callable[[], Sequence[R | BaseException]]],
                                  Awaitable[Sequence[R | BaseException]]],
                 max_items: int = 64) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, not {max_items}")
        self._run_many, self._submit, self.max_items = run_many, submit, max_items
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0  # run_many calls made (tests, benchmarks)

    async def __call__(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): nothing of the old one is kept
            self._loop, self._queue, self._drainer = loop, [], None
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        if self._drainer is None or self._drainer.done():
            # a context of its own: the batch must not run in (and log as) its first caller's
            self._drainer = loop.create_task(self._drain(), context=contextvars.Context())
        return await fut

    async def _drain(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._queue[:self.max_items]
                del self._queue[:self.max_items]
                items = [item for item, _ in batch]
                self.calls += 1
                try:
                    outcomes = list(await self._submit(functools.partial(self._run_many, items)))
                except Exception as exc:  # noqa: BLE001 - handed to each caller
                    outcomes = [exc] * len(batch)
                if len(outcomes) != len(batch):
                    outcomes = [RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} items")
                                ] * len(batch)
                for (_, fut), out in zip(batch, outcomes, strict=True):
                    if fut.done():  # its caller was cancelled
                        continue
                    if isinstance(out, BaseException):
                        fut.set_exception(out)
                    else:
                        fut.set_result(out)
                batch = []
        except asyncio.CancelledError:
            for _, fut in [*batch, *self._queue]:
                fut.cancel()
            self._queue = []
            raise


def isolated(run_many: Callable[[Sequence[I]], Sequence[R]], items: Sequence[I]
             ) -> list[R | BaseException]:
    """``run_many(items)``; when it raises for a reason that is not transient, each item alone,
    so that only the culprit gets the error. Blocking (call it on the pool's thread)."""
    try:
        return list(run_many(items))
    except Exception as exc:  # noqa: BLE001 - sorted below
        if len(items) == 1 or classify(exc) == "transient":
            return [exc] * len(items)
    out: list[R | BaseException] = []
    for item in items:
        try:
            out.append(run_many([item])[0])
        except Exception as exc:  # noqa: BLE001 - this item's outcome
            out.append(exc)
    return out
