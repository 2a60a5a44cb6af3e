"""The workers' Faust transport: Faust's aiokafka transport with a configurable fetch wait.

Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` and has no setting for it. On a
broker that holds a fetch for the whole wait when no data is there (tansu: it does not answer a
waiting fetch when data arrives), that costs ~0.75 s per hop on average. The classes here cap
it (``DARKROOM_FETCH_MAX_WAIT_MS``) for the consumer of one app only, nothing process-wide:
:class:`WorkerApp` builds a :class:`FetchWaitTransport` (its ``Consumer`` runs a
:class:`FetchWaitConsumerThread`, whose ``_create_worker_consumer`` applies the cap to the
aiokafka consumer before it starts).

A short wait costs a fetch round trip every few milliseconds while nothing happens (on tansu
~3 ms of broker CPU each: an idle worker kept the broker at 30 % of a core). So the wait adapts
(:class:`AdaptiveFetchWait`): ``fetch_max_wait_ms`` while data flows and for
``fetch_idle_after_s`` after the last record, then doubling up to ``fetch_idle_wait_ms``; the
first fetch that brings data makes it short again. Only the first hop after an idle spell pays
the long wait.

Each fetch names every partition it may read, and tansu pays per partition named (~140 µs, data
or not); a worker reads ~30, a third of them on topics that rarely carry anything (commands,
webhooks, the topics of cheap tasks whose requests ride in another's). So topics on which nothing
was read for ``quiet_after_s`` are left out of most fetches (:class:`QuietTopics`): they are read
at least every ``quiet_poll_s`` (a record there waits at most that much longer), and every fetch
names them again for a while after a spell in which the whole consumer was idle (the hops of the
first upload after a pause pay nothing more).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import faust
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ConsumerT, TransportT

from agents.metrics import FETCH_PARTITIONS, FETCHES
from agents.osthreads import name_os_thread

FAUST_FETCH_MAX_WAIT_MS = 1500  # what faust passes; the cap never raises it


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; the worker consumer it creates waits at most the transport's
    ``fetch_max_wait_ms`` for data."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        cap = getattr(transport, "fetch_max_wait_ms", None)
        if cap is None:
            return consumer
        # aiokafka keeps the constructor's value here and hands it to its Fetcher in start()
        if not isinstance(getattr(consumer, "_fetch_max_wait_ms", None), int):
            raise RuntimeError("this aiokafka version keeps no _fetch_max_wait_ms: the fetch "
                               "wait cannot be capped (agents/streams/transport.py)")
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, int(cap))
        return consumer

    async def on_thread_started(self) -> None:
        name_os_thread("dr-consumer")  # this runs in the consumer's own thread
        await super().on_thread_started()

    async def on_start(self) -> None:
        await super().on_start()
        transport = self.transport
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is None:
            return
        idle_ms = getattr(transport, "fetch_idle_wait_ms", None)
        if idle_ms is not None:
            app = getattr(transport, "app", None)
            AdaptiveFetchWait(fetcher, idle_ms,
                              float(getattr(transport, "fetch_idle_after_s", 5.0)),
                              busy_ms=getattr(transport, "fetch_busy_wait_ms", None),
                              backlog=getattr(app, "backlog", None),
                              busy_min_bytes=getattr(transport, "fetch_busy_min_bytes", None))
        quiet_after = getattr(transport, "quiet_after_s", None)
        if quiet_after is not None:
            QuietTopics(fetcher, float(quiet_after),
                        float(getattr(transport, "quiet_poll_s", 0.1)))


class AdaptiveFetchWait:
    """Wraps an aiokafka ``Fetcher``'s fetch request: after each response, the wait of the next
    request is ``busy_ms`` while ``backlog()`` says records fetched before still wait for an
    agent; else the fetcher's configured one when data came (or came within ``idle_after_s``),
    else twice the last, at most ``idle_ms``. aiokafka reads ``_fetch_max_wait_ms`` (and
    ``_fetch_min_bytes``) each time it builds a request.

    Why the busy wait: tansu does not answer a waiting fetch when data arrives (it reads again
    after sleeping half the time left, so an empty fetch lasts the whole wait), so a loaded
    worker sent a fetch every ~12 ms, most of them empty, each naming ~20 partitions that the
    broker (and the consumer thread, in Python) pays for. While the agents are behind, records
    fetched sooner would only wait in their queues; a longer wait makes fewer, fuller fetches.
    A worker that keeps up (a sync upload on an otherwise quiet worker) has no backlog and
    keeps the short wait.

    ``busy_min_bytes`` (while busy, instead of the fetcher's own, 1): tansu answers a fetch as
    soon as it holds more than the minimum, so under load a fetch came back with the few
    records that had arrived since the last one; asking for more makes the broker read again
    until that much is there or the busy wait ends, and the consumer thread builds and parses
    fewer fetches."""

    def __init__(self, fetcher: Any, idle_ms: int, idle_after_s: float,
                 busy_ms: int | None = None, backlog: Callable[[], int] | None = None,
                 busy_min_bytes: int | None = None) -> None:
        if not isinstance(getattr(fetcher, "_fetch_max_wait_ms", None), int) or \
                not isinstance(getattr(fetcher, "_fetch_min_bytes", None), int):
            raise RuntimeError("this aiokafka version keeps no Fetcher._fetch_max_wait_ms or "
                               "_fetch_min_bytes: the fetch cannot adapt "
                               "(agents/streams/transport.py)")
        self.fetcher = fetcher
        self.short_ms = int(fetcher._fetch_max_wait_ms)
        self.idle_ms = max(int(idle_ms), self.short_ms)
        self.busy_ms = self.short_ms if busy_ms is None else max(int(busy_ms), self.short_ms)
        self.min_bytes = int(fetcher._fetch_min_bytes)
        self.busy_min_bytes = self.min_bytes if busy_min_bytes is None else max(
            int(busy_min_bytes), self.min_bytes)
        self.backlog = backlog
        self.idle_after_s = idle_after_s
        self.last_data = time.monotonic()
        self._proc = fetcher._proc_fetch_request
        fetcher._proc_fetch_request = self.proc_fetch_request

    async def proc_fetch_request(self, assignment: Any, node_id: Any, request: Any) -> Any:
        got = await self._proc(assignment, node_id, request)
        now = time.monotonic()
        FETCHES.labels("records" if got else "empty").inc()
        FETCH_PARTITIONS.inc(sum(len(parts) for _, parts in getattr(request, "topics", ())))
        busy = self.busy_ms > self.short_ms and self.backlog is not None and self.backlog() > 0
        self.fetcher._fetch_min_bytes = self.busy_min_bytes if busy else self.min_bytes
        if busy:
            self.last_data = now
            self.fetcher._fetch_max_wait_ms = self.busy_ms
        elif got:
            self.last_data = now
            self.fetcher._fetch_max_wait_ms = self.short_ms
        elif now - self.last_data > self.idle_after_s:
            self.fetcher._fetch_max_wait_ms = min(self.idle_ms,
                                                  2 * self.fetcher._fetch_max_wait_ms)
        return got


class QuietTopics:
    """Wraps an aiokafka ``Fetcher``'s choice of what to fetch: the partitions of a topic whose
    positions did not move for ``quiet_after_s`` are named in a fetch only every ``poll_s``, and
    in every fetch for ``quiet_after_s`` after the whole consumer was quiet. A partition that is
    not plainly fetchable (being reset, paused, holding unread records) is always handed on as
    it is: only what a fetch names changes, never what is read or committed."""

    def __init__(self, fetcher: Any, quiet_after_s: float, poll_s: float,
                 clock: Any = time.monotonic) -> None:
        if not callable(getattr(fetcher, "_get_actions_per_node", None)):
            raise RuntimeError("this aiokafka version has no Fetcher._get_actions_per_node: "
                               "quiet topics cannot be left out (agents/streams/transport.py)")
        self.fetcher = fetcher
        self.quiet_after_s = quiet_after_s
        self.poll_s = poll_s
        self.clock = clock
        self.positions: dict[Any, int | None] = {}
        self.moved: dict[str, float] = {}  # topic -> when a position of it last moved
        self.last_full = -1e18
        self.awake_until = -1e18
        self._choose = fetcher._get_actions_per_node
        fetcher._get_actions_per_node = self.actions

    def actions(self, assignment: Any) -> Any:
        now = self.clock()
        quiet = self.quiet(assignment, now)
        if not quiet or now - self.last_full >= self.poll_s or now < self.awake_until:
            self.last_full = now
            return self._choose(assignment)
        requests, resets, timeout, invalid, resumes = self._choose(
            _Without(assignment, quiet, self.fetcher._records))
        # come back for the quiet ones in time even when nothing else is fetched
        left = max(0.0, self.poll_s - (now - self.last_full))
        return requests, resets, min(timeout, left), invalid, resumes

    def quiet(self, assignment: Any, now: float) -> set[str]:
        """The assigned topics on which nothing was read for ``quiet_after_s``."""
        topics: set[str] = set()
        was_all_quiet = bool(self.moved) and all(
            now - at > self.quiet_after_s for at in self.moved.values())
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            position = state.position if state.has_valid_position else None
            if self.positions.get(tp, -1) != position:
                self.positions[tp] = position
                self.moved[tp.topic] = now
            topics.add(tp.topic)
        if was_all_quiet and any(self.moved[t] == now for t in topics):
            # the first records after an idle spell: their next hops are named at once
            self.awake_until = now + self.quiet_after_s
        return {t for t in topics if now - self.moved.get(t, now) > self.quiet_after_s}


class _Without:
    """An assignment as ``Fetcher._get_actions_per_node`` reads it (``tps``,
    ``state_value``), less the plainly fetchable partitions of ``topics``."""

    def __init__(self, assignment: Any, topics: set[str], records: Any) -> None:
        self._assignment = assignment

        def left_out(tp: Any) -> bool:
            if tp.topic not in topics or tp in records:
                return False
            state = assignment.state_value(tp)
            return bool(state.has_valid_position and not state.paused)

        self.tps = frozenset(tp for tp in assignment.tps if not left_out(tp))

    def state_value(self, tp: Any) -> Any:
        return self._assignment.state_value(tp)


class FetchWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose consumer caps the fetch wait at
    ``fetch_max_wait_ms`` (None: Faust's own 1500 ms)."""

    Consumer: ClassVar[type[ConsumerT]] = FetchWaitConsumer
    fetch_max_wait_ms: int | None = None
    #: the wait once idle (None: never longer than ``fetch_max_wait_ms``), and after how long
    fetch_idle_wait_ms: int | None = None
    fetch_idle_after_s: float = 5.0
    #: the wait while fetched records wait for an agent (None: no longer than the short one),
    #: and the bytes a fetch then asks for (None: aiokafka's own, 1)
    fetch_busy_wait_ms: int | None = None
    fetch_busy_min_bytes: int | None = None
    #: topics read nothing for this long are named in a fetch only every ``quiet_poll_s``
    #: (None: every fetch names every partition)
    quiet_after_s: float | None = None
    quiet_poll_s: float = 0.1


class WorkerApp(faust.App):
    """A Faust app whose consumer transport is :class:`FetchWaitTransport` with
    ``fetch_max_wait_ms`` (the broker URL still names the scheme: ``kafka://``)."""

    def __init__(self, id: str, *, fetch_max_wait_ms: int | None = None,
                 fetch_idle_wait_ms: int | None = None, fetch_idle_after_s: float = 5.0,
                 fetch_busy_wait_ms: int | None = None, fetch_busy_min_bytes: int | None = None,
                 quiet_after_s: float | None = None, quiet_poll_s: float = 0.1,
                 **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_idle_wait_ms = fetch_idle_wait_ms
        self.fetch_busy_wait_ms = fetch_busy_wait_ms
        self.fetch_busy_min_bytes = fetch_busy_min_bytes
        self.fetch_idle_after_s = fetch_idle_after_s
        self.quiet_after_s = quiet_after_s
        self.quiet_poll_s = quiet_poll_s
        super().__init__(id, **options)

    def backlog(self) -> int:
        """Records delivered to this app's channels that no agent has taken yet (read from the
        consumer thread: a plain length, a moment old at worst)."""
        conductor = self.topics
        return sum(q.qsize() for ch in tuple(getattr(conductor, "_topics", ()))
                   if (q := getattr(ch, "_queue", None)) is not None)

    def _new_transport(self) -> TransportT:
        scheme = self.conf.broker_consumer[0].scheme
        if drivers.by_url(self.conf.broker_consumer[0]) is not faust_aiokafka.Transport:
            raise ValueError(f"the workers need Faust's aiokafka transport, not {scheme}://")
        transport = FetchWaitTransport(self.conf.broker_consumer, self)
        transport.fetch_max_wait_ms = self.fetch_max_wait_ms
        transport.fetch_idle_wait_ms = self.fetch_idle_wait_ms
        transport.fetch_idle_after_s = self.fetch_idle_after_s
        transport.fetch_busy_wait_ms = self.fetch_busy_wait_ms
        transport.fetch_busy_min_bytes = self.fetch_busy_min_bytes
        transport.quiet_after_s = self.quiet_after_s
        transport.quiet_poll_s = self.quiet_poll_s
        return transport
