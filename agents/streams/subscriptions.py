"""Which task and result topics a worker consumes: those of the tasks in use.

Every fetch a consumer sends names each partition assigned to it, and the embedded broker pays
for each one whether it holds data or not (~140 µs per partition per fetch on tansu: 315
partitions fetched once a second keep it at ~4 % of a core). A worker consuming the task and
result topics of all 31 registered tasks fetches ~210 partitions; one consuming the tasks a
deployment uses fetches a fraction of that, idle and under load alike.

*In use* (``DARKROOM_TASK_TOPICS=used``, the default): the tasks the post-process definitions
name, and every task a router ever sent a request for (``task_usage`` in the store, recorded
before the request is produced: an upload may name any registered task, which then runs as an
implicit manual-only post-process). A worker reads both at start and every
``DARKROOM_TASK_FOLLOW_S``; a task that appears gets its agent (and the sink a part for its
results) in the running app: Faust subscribes to the new topics and the group rebalances
(seconds on tansu; the requests already written wait in the topic, read from its beginning).
Topics are only ever added, never dropped while the worker runs. ``DARKROOM_TASKS`` still pins
the task agents of a worker; ``DARKROOM_TASK_TOPICS=all`` consumes every registered task's.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from agents.composition import Runtime

log = logging.getLogger("darkroom.subscriptions")

RESUBSCRIBE_S = 2.0
"""Faust's conductor waits this long before it subscribes to topics added while running (its
default, 45 s, would leave a newly used task unserved for most of a minute)."""


def tasks_in_use(rt: Runtime) -> set[str]:
    """Blocking: the registered tasks the definitions name or a router sent requests for."""
    if rt.settings.task_topics == "all":
        return set(rt.processors)
    rt.definitions.refresh()
    named = {pp.task for pp in rt.definitions.config.postprocesses}
    return {t for t in named | rt.store.used_tasks() if t in rt.processors}


class TaskTopics:
    """The task agents and sink parts installed in one app, and how to add more."""

    def __init__(self, app: faust.App, rt: Runtime) -> None:
        self.app, self.rt = app, rt
        s = rt.settings
        self.runs_tasks = "tasks" in s.agents
        self.runs_sink = "sink" in s.agents
        self.pinned = set(s.tasks) if s.tasks is not None else None
        self.tasks: set[str] = set()  # task agents installed
        self.results: set[str] = set()  # tasks whose results a sink part reads
        self.parts = 0

    def install(self, tasks: set[str]) -> list[Any]:
        """Install agents for what ``tasks`` adds; returns the new agents (to start when the
        app runs already)."""
        from agents.streams import sink
        from agents.streams import tasks as processing

        added: list[Any] = []
        if self.runs_tasks:
            for name in sorted(self._mine(tasks) - self.tasks):
                added.append(processing.install(self.app, self.rt, self.rt.processors[name]))
                self.tasks.add(name)
        if self.runs_sink:
            new = tasks - self.results
            if new or self.parts == 0:  # part 0 also reads the commands
                added.append(sink.install(self.app, self.rt, new, part=self.parts))
                self.parts += 1
                self.results |= new
        return added

    async def follow(self) -> None:
        """One look for newly used tasks; their agents start in the running app."""
        try:
            found = await self.rt.in_pool(tasks_in_use, self.rt, pool=self.rt.io_pool)
        except Exception:
            log.warning("looking for newly used tasks failed (again in %gs)",
                        self.rt.settings.task_follow_s, exc_info=True)
            return
        new_results = self.runs_sink and bool(found - self.results)
        if not (new_results or (self.runs_tasks and self._mine(found) - self.tasks)):
            return
        for agent in self.install(found):
            log.info("now consuming %s", agent.channel)
            await agent.maybe_start()

    def _mine(self, tasks: set[str]) -> set[str]:
        """The registered ones of ``tasks`` this worker runs agents for."""
        known = tasks & set(self.rt.processors)
        return known if self.pinned is None else known & self.pinned


def install(app: faust.App, rt: Runtime) -> TaskTopics:
    """The task agents and the sink of this worker, following the tasks in use."""
    topics = TaskTopics(app, rt)
    pinned_only = topics.pinned is not None and not topics.runs_sink
    if rt.settings.task_topics == "all" or pinned_only:
        # every task's topics, or a fixed set of task agents: nothing to follow
        topics.install(set(rt.processors))
        return topics
    topics.install(tasks_in_use(rt))
    app.topics._resubscribe_sleep_lock_seconds = RESUBSCRIBE_S  # type: ignore[attr-defined]

    @app.timer(interval=rt.settings.task_follow_s, name="darkroom.task_topics")  # type: ignore[untyped-decorator]
    async def follow() -> None:
        await topics.follow()

    return topics
