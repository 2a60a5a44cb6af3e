"""An upload's cheap tasks as one unit of work.

Validating an image's header, its BlurHash and its dominant colours cost a few milliseconds each
on one shared decode, while each request of its own costs more than that around it: a message
consumed, a start mark, a flush of its result, a result consumed and merged, a version of the
asset. So the router sends the requests of an upload whose tasks are declared ``cheap``
(:func:`processors.registry.register`) as one request, on the topic of the first, carrying the
others in ``bundle_json`` (:func:`bundle`). The task agent that gets it marks them all started
at once, runs each on its own lane (they share the decode), and publishes every result with
one flush; the sink finds them in one batch and merges them into one version.

Nothing else changes: each member keeps its request id, its result goes to its own results
topic, a member this worker does not run (``DARKROOM_TASKS``) is forwarded to its own task
topic, and the sweeper re-dispatches a member that was lost on its own topic. Sync requests
ride only with sync ones (and run first on their lanes, as alone): the waiting upload is
answered once, when their results are merged together, instead of once per task. An upload
that nobody waits for (no ``reply_to``: produced to Kafka, or async) sends all its cheap
requests as one, behind an async one: one message, one start mark, one flush and one version
fewer than a sync group and an async group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from agents.composition import Runtime
from agents.streams.validation import MAX_BUNDLE
from processors.registry import Processor
from schemas.records import TaskRequest


def bundle(requests: Sequence[TaskRequest], processors: Mapping[str, Processor],
           waiting: bool = True) -> list[TaskRequest]:
    """The requests to send for one upload: its cheap ones folded into the first of them of
    the same mode (sync ones with sync ones: a sync upload waits for them all; at most
    ``MAX_BUNDLE`` ride along, the rest start another), the others as they are.

    ``waiting``: an API instance waits for the upload's sync results (its ``reply_to``).
    When none does (an upload produced to Kafka, an async upload), the mode only orders the
    lanes, so all the cheap ones ride together, behind an async one where there is one (the
    members run at the carrier's priority: nobody waits for them)."""
    out: list[TaskRequest] = []
    carriers: dict[str, tuple[TaskRequest, list[dict[str, str]]]] = {}
    if not waiting:
        requests = sorted(requests, key=lambda r: r.mode == "sync")  # stable: async first
    for req in requests:
        proc = processors.get(req.task)
        if proc is None or not proc.cheap:
            out.append(req)
            continue
        mode = req.mode if waiting else ""
        found = carriers.get(mode)
        if found is None or len(found[1]) >= MAX_BUNDLE:
            carriers[mode] = (req, [])
            out.append(req)
            continue
        found[1].append(req.as_entry())
        found[0].bundle_json = json.dumps(found[1])
    return out


def runs_here(rt: Runtime, task: str) -> bool:
    """Whether this worker runs ``task``'s requests (else a member of it is forwarded)."""
    only = rt.settings.tasks
    return task in rt.processors and (only is None or task in only)
