"""Coalescer: concurrent calls share one batch call, each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc

from agents.streams.coalesce import Coalescer, isolated
from agents.streams.poison import Poison

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")


def pool_submit(pool: ThreadPoolExecutor) -> Callable[[Callable[[], Any]], Any]:
    async def submit(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    return submit


def test_a_lone_call_goes_at_once_and_concurrent_ones_are_combined() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def run_many(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            gate.wait(5)  # the first call is in flight while the others arrive
        return [i * 10 for i in items]

    async def main() -> list[int]:
        with ThreadPoolExecutor(2) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool))
            first = asyncio.ensure_future(c(1))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(c(i)) for i in (2, 3, 4)]
            await asyncio.sleep(0.05)
            gate.set()
            return list(await asyncio.gather(first, *rest))

    assert asyncio.run(main()) == [10, 20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


def test_max_items_splits_a_long_queue_in_order() -> None:
    batches: list[list[int]] = []

    def run_many(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return list(items)

    async def main() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool), max_items=2)
            return list(await asyncio.gather(*(c(i) for i in range(5))))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert batches == [[0, 1], [2, 3], [4]]


def test_each_caller_gets_its_own_error() -> None:
    def run_many(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {i}") if i % 2 else i for i in items]

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool))
            return list(await asyncio.gather(*(c(i) for i in range(4)),
                                             return_exceptions=True))

    out = asyncio.run(main())
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad 1"
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"


def test_a_failing_batch_call_reaches_every_caller_and_the_next_call_works() -> None:
    calls = 0

    def run_many(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sa_exc.OperationalError("stmt", {}, Exception("database away"))
        return list(items)

    async def main() -> tuple[list[Any], int]:
        with ThreadPoolExecutor(1) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool))
            failed = await asyncio.gather(c(1), return_exceptions=True)
            return failed, await c(2)

    failed, again = asyncio.run(main())
    assert isinstance(failed[0], sa_exc.OperationalError) and again == 2


def test_the_batch_runs_in_a_context_of_its_own() -> None:
    seen: list[str] = []

    def run_many(items: Sequence[int]) -> list[int]:
        seen.append(VAR.get())
        return list(items)

    async def main() -> None:
        VAR.set("first caller")
        with ThreadPoolExecutor(1) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool))
            await c(1)

    asyncio.run(main())
    assert seen == ["none"]


def test_a_cancelled_caller_does_not_break_the_others() -> None:
    gate = threading.Event()

    def run_many(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        return list(items)

    async def main() -> int:
        with ThreadPoolExecutor(1) as pool:
            c: Coalescer[int, int] = Coalescer(run_many, pool_submit(pool))
            first = asyncio.ensure_future(c(1))
            second = asyncio.ensure_future(c(2))
            await asyncio.sleep(0.02)
            first.cancel()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await first
            return await second

    assert asyncio.run(main()) == 2


def test_isolated_finds_the_culprit_unless_the_failure_is_transient() -> None:
    def run_many(items: Sequence[int]) -> list[int]:
        if 3 in items:
            raise Poison("three is bad")
        return [i + 1 for i in items]

    out = isolated(run_many, [1, 3, 5])
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], Poison)

    tried: list[list[int]] = []

    def away(items: Sequence[int]) -> list[int]:
        tried.append(list(items))
        raise sa_exc.OperationalError("stmt", {}, Exception("database away"))

    out = isolated(away, [1, 2])
    assert all(isinstance(o, sa_exc.OperationalError) for o in out)
    assert tried == [[1, 2]]  # transient: not retried one by one here (each caller retries)
