"""The sink's half of workflow logic: when a result lands, decide its dependents.

Called by :func:`agents.streams.sink.merge_group` for every merged (or duplicate) result of a
post-process that others run ``after`` (:mod:`agents.policy.workflow`). The decisions are
written in one transaction (:meth:`sinks.store.metadata.MetadataStore.decide_dependents`); the
TaskRequests of the dependents to run are produced after that commit and the result's offset is
acknowledged only after the flush (at-least-once). Their request ids are the ones the router
computed, so a duplicate result re-sends at most a request the task's merge deduplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agents.composition import Runtime
from agents.metrics import TASK_REQUESTS_SENT
from agents.policy.postprocess import PostProcess
from agents.policy.workflow import Decision, decide, dependents_of
from schemas.records import TaskRequest, TaskResult, now_ms
from sinks.store.metadata import Asset

log = logging.getLogger("darkroom.workflow")


def follow(rt: Runtime, res: TaskResult, data: dict[str, Any] | None,
           asset: Asset | None) -> Asset | None:
    """Decide and dispatch the dependents of ``res``'s post-process, and the asset's deferred
    requests once nothing else of it is pending; returns the asset's new state when that
    changed it (the caller publishes it). ``asset``: its state after the merge."""
    rt.definitions.refresh()  # (blocking, a lookup only when due): a sink-only worker too
    config = rt.definitions.config
    deps = dependents_of(config.postprocesses, res.postprocess)
    upstream = config.get(res.postprocess) if deps else None
    new: Asset | None = None
    rows: list[dict[str, Any]] = []
    if deps and upstream is not None and asset is not None:
        decisions = decide(upstream, deps, asset.properties, res.status, data)
        decisions += skipped_below(config.postprocesses, decisions)
        new, rows = rt.store.decide_dependents(
            res.asset_id, res.postprocess, res.request_id,
            [(d.postprocess, d.run, d.reason, moves_original(rt, d.postprocess))
             for d in decisions])
    current = new or asset
    if current is not None and not rows:
        deferred = any(r.get("status") == "deferred" for r in current.results.values())
        queued = [n for n, r in current.results.items()
                  if r.get("status") == "pending" and moves_original(rt, n)]
        if deferred or queued:
            released, rows = rt.store.release_deferred(res.asset_id, also=queued)
            new = released or new
            current = new or current
    if current is None:
        return new
    s = rt.settings
    ts = now_ms()
    for row in rows:
        TASK_REQUESTS_SENT.labels(row["task"]).inc()
        req = request_of(current, row, ts)
        rt.producer.send(s.topic("tasks", row["task"]), res.asset_id, req.to_bytes())
        log.info("%s/%s: %s runs after %s", res.asset_id, row["postprocess"], row["task"],
                 res.postprocess)
    return new


def moves_original(rt: Runtime, postprocess: str) -> bool:
    """Whether the post-process's task moves or deletes the original (declared ``effect``):
    it is dispatched only once no other request of the asset is pending, so none of them
    finds its file gone."""
    pp = rt.definitions.config.get(postprocess)
    proc = rt.processors.get(pp.task) if pp is not None else None
    return proc is not None and proc.effect in ("quarantine-original", "delete-original")


def skipped_below(postprocesses: Sequence[PostProcess], decisions: Sequence[Decision]
                  ) -> list[Decision]:
    """A skipped dependent's own dependents will never see a result: skipped with it (the
    store only skips rows still waiting), transitively."""
    out: list[Decision] = []
    todo = [d for d in decisions if not d.run]
    seen = {d.postprocess.casefold() for d in decisions}
    while todo:
        d = todo.pop()
        for pp in dependents_of(postprocesses, d.postprocess):
            if pp.name.casefold() in seen:
                continue
            seen.add(pp.name.casefold())
            below = Decision(pp.name, False, f"{d.postprocess} was skipped")
            out.append(below)
            todo.append(below)
    return out


def request_of(asset: Asset, row: dict[str, Any], ts: int) -> TaskRequest:
    """The TaskRequest of a dependent's row, on the asset as it is now (its object may have
    moved since the upload)."""
    props = asset.properties
    return TaskRequest(
        request_id=row["request_id"],
        asset_id=asset.asset_id,
        task=row["task"],
        postprocess=row["postprocess"],
        uri=asset.uri,
        mode="async",
        filename=asset.filename,
        folder=asset.folder,
        content_type=asset.content_type,
        size_bytes=asset.size_bytes,
        width=props.get("width"),
        height=props.get("height"),
        format=props.get("format"),
        duration=props.get("duration"),
        bitrate=props.get("bitrate"),
        params_json=row.get("params_json") or "{}",
        requested_at=ts,
    )
