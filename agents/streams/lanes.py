"""Work lanes: where the blocking work of a worker runs, each kind on threads of its own.

A worker has several kinds of blocking work, and one kind must never wait for another:

======== ===================================== ============================================
lane     runs                                  threads
======== ===================================== ============================================
light    header-only tasks (no decode)         ``DARKROOM_LIGHT_TASK_THREADS`` (2)
cpu      the other processors                  ``DARKROOM_PROCESSOR_THREADS`` (core count)
long     tasks declared ``lane="long"``        ``DARKROOM_LONG_TASK_CONCURRENCY`` (1)
======== ===================================== ============================================

(store and broker calls run on the runtime's ``io_pool``, webhook deliveries on its
``webhook_pool``: plain thread pools, see :mod:`agents.composition`.)

A :class:`WorkLane` differs from a thread pool in three ways:

* **timeouts count run time only**: the clock of an attempt starts when its function starts
  running in a lane thread, never while it waits for one; the function receives that clock as a
  :class:`processors.registry.Deadline`;
* **a job that times out is stopped where it can be**: its deadline is cancelled, which kills an
  ffmpeg child at once (``run_ffmpeg`` watches it) and makes the processor's next
  ``deadline.check()`` raise. Python code inside one native call (a model run, a Pillow encode)
  cannot be interrupted from another thread: such a job runs on, its result is thrown away, and
  **its thread stays counted** until it really ends (threads are never added to make up for it),
  so the lane is never oversubscribed. ``overdue`` counts those;
* **sync requests go first**: jobs wait in a priority queue (``priority`` 0 before 1, then in
  order of arrival), so a sync upload's task never queues behind a backlog of async ones.

Lane threads are daemon threads: a job that cannot be stopped never holds the process at exit
(:meth:`WorkLane.close` cancels the deadlines of the running jobs first). A lane made with
``nice`` > 0 runs its threads at that lower CPU priority (Linux: per thread; the ffmpeg children
they start inherit it): the long lane does (``DARKROOM_LONG_TASK_NICE``, 10), so a transcode
uses the cores the other lanes leave idle instead of slowing them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agents.osthreads import name_os_thread
from processors.registry import Deadline

log = logging.getLogger("darkroom.lanes")

T = TypeVar("T")

SYNC, ASYNC = 0, 1
"""Priorities: sync requests before async ones."""


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[[Deadline], T]
    timeout_s: float | None
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future[Deadline]
    done: asyncio.Future[T]
    deadline: Deadline | None = None
    given_up: bool = False
    given_up_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class WorkLane:
    """``threads`` threads running the jobs handed to :meth:`run` (see the module docstring)."""

    def __init__(self, name: str, threads: int, nice: int = 0) -> None:
        if threads < 1:
            raise ValueError(f"lane {name}: threads must be >= 1, not {threads}")
        self.name, self.threads, self.nice = name, threads, nice
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, _Job[Any]]] = []
        self._seq = itertools.count()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._running: set[_Job[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------------------- the API
    async def run(self, fn: Callable[[Deadline], T], *, timeout_s: float | None = None,
                  priority: int = ASYNC, on_start: Callable[[], None] | None = None) -> T:
        """Run ``fn(deadline)`` on a lane thread and return its result (or raise its error).

        ``timeout_s`` counts from the moment ``fn`` starts running (``on_start`` is called on the
        event loop then); past it the deadline is cancelled and :class:`TimeoutError` raised
        (the thread may run on: see the module docstring). Cancelling the caller cancels the
        job: dropped if it had not started, its deadline cancelled if it had."""
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, timeout_s, loop, loop.create_future(), loop.create_future())
        self._submit(job, priority)
        try:
            deadline = await job.started
            if on_start is not None:
                on_start()
            left = None if timeout_s is None else max(0.0, deadline.end - time.monotonic())
            finished, _ = await asyncio.wait([job.done], timeout=left)
            if not finished:
                self._give_up(job, f"timed out after {timeout_s:g}s")
                raise TimeoutError(f"timed out after {timeout_s:g}s")
            return job.done.result()
        except asyncio.CancelledError:
            self._give_up(job, "cancelled: the attempt was abandoned (the worker is stopping)")
            raise

    def stats(self) -> dict[str, int]:
        """``threads``, ``busy`` (threads running a job, overdue ones included), ``queued``,
        ``overdue`` (jobs given up on whose thread is still running)."""
        with self._cond:
            return {"threads": self.threads, "busy": len(self._running),
                    "queued": sum(1 for *_, j in self._queue if not j.given_up),
                    "overdue": sum(1 for j in self._running if j.given_up)}

    def close(self) -> None:
        """Cancel the running jobs' deadlines, drop the queued ones, let the threads end."""
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            running = list(self._running)
            self._cond.notify_all()
        for *_, job in queued:
            job.given_up = True
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                job.loop.call_soon_threadsafe(
                    _resolve, job.started, None, RuntimeError(f"lane {self.name} is closed"))
        for job in running:
            if job.deadline is not None:
                job.deadline.cancel("cancelled: the worker is stopping")

    # ------------------------------------------------------------------------------ internals
    def _submit(self, job: _Job[Any], priority: int) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"lane {self.name} is closed")
            heapq.heappush(self._queue, (priority, next(self._seq), job))
            if self._idle == 0 and len(self._workers) < self.threads:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"darkroom-{self.name}-{len(self._workers)}")
                self._workers.append(t)
                t.start()
            else:
                self._cond.notify()

    def _give_up(self, job: _Job[Any], reason: str) -> None:
        with self._cond:
            job.given_up, job.given_up_at = True, time.monotonic()
            deadline = job.deadline
        if deadline is not None:
            deadline.cancel(reason)  # ffmpeg is killed, the next check() raises

    def _next(self) -> _Job[Any] | None:
        with self._cond:
            while True:
                while self._queue:
                    *_, job = heapq.heappop(self._queue)
                    if job.given_up:
                        continue
                    job.deadline = Deadline(job.timeout_s)  # the clock starts now
                    self._running.add(job)
                    return job
                if self._closed:
                    return None
                self._idle += 1
                try:
                    self._cond.wait()
                finally:
                    self._idle -= 1

    def _lower_priority(self) -> None:
        """This thread (and what it starts) at ``nice`` (raising niceness needs no privilege;
        where per-thread priorities do not exist, nothing happens)."""
        if self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        except OSError:
            log.debug("lane %s: could not lower its priority", self.name, exc_info=True)

    def _work(self) -> None:
        name_os_thread()
        self._lower_priority()
        while (job := self._next()) is not None:
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_resolve, job.started, job.deadline, None)
            value: Any = None
            error: BaseException | None = None
            started = time.monotonic()
            try:
                value = job.fn(job.deadline)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                error = exc
            with self._cond:
                self._running.discard(job)
                overdue = job.given_up
            if overdue:
                log.warning("lane %s: a job given up on (%s) ended %.1fs later, after %.1fs in "
                            "all; its thread is free again", self.name,
                            job.deadline.reason if job.deadline else "?",
                            time.monotonic() - job.given_up_at, time.monotonic() - started)
                continue
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_resolve, job.done, value, error)
