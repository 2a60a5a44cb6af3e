"""Sink agent: darkroom.results.<task> -> metadata store -> darkroom.assets.

Merges each TaskResult into the asset idempotently (keyed by asset, post-process and request id;
duplicates and replays are no-ops) and emits an AssetUpdate only when the asset actually changed.
What a result does beyond its own entry is what its task declared at registration
(:func:`processors.registry.register`): the ``tags`` it adds (merged in the same transaction) and
the result ``hooks`` run after the merge (their notices are added to the asset); no task is
named here. Also hosts the sweeper, which makes sure no asset waits forever for a request the
broker lost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import faust
from faust.types import EventT

from agents.composition import Runtime
from agents.kafka.headers import TRACE, child
from agents.metrics import RESULTS_MERGED
from agents.policy.workflow import dependents_of
from agents.streams import validation
from agents.streams.batching import pipelined_batches
from agents.streams.commands import apply_command
from agents.streams.completion import complete, inline_plan, send_deliveries, webhook_deliveries
from agents.streams.effects import apply_effect
from agents.streams.lifecycle import eager_notify, late_result, notifies_early
from agents.streams.outputs import publish_update
from agents.streams.poison import Msg, Poison, apply_batch, classify
from agents.streams.workflow import follow
from processors.registry import ResultEvent, Services, describe_ref, resolve
from schemas.records import TaskResult
from sinks.store.metadata import ResultRecord

log = logging.getLogger("darkroom.sink")


RESULT_OBJECT = "_result.json"


def full_data(rt: Runtime, res: TaskResult, data: dict[str, Any]) -> dict[str, Any] | None:
    """The result's data (parsed by validation); one too large for a message travels as an
    object of this asset (``derived/<asset>/<post-process>/_result.json``, nothing else is
    read)."""
    if res.status != "ok":
        return None
    uri = data.get("_result_uri")
    if not isinstance(uri, str):
        return data
    from sinks.objects.base import derived_key

    if rt.storage.key_of(uri) != derived_key(res.asset_id, res.postprocess, RESULT_OBJECT):
        raise Poison(f"result object {uri[:100]!r} is not this result's")
    value = validation.strict_json(rt.storage.read_bytes(uri).decode("utf-8"), "result object")
    if not isinstance(value, dict):
        raise Poison("result object is not a JSON object")
    return value


def merge_batch(rt: Runtime, msgs: Sequence[Msg]) -> int:
    """Blocking: merge a batch of results; returns how many assets changed. Invalid results
    are dead-lettered here; other failures fail the batch (see
    agents.streams.poison.apply_batch).

    The results of one asset in the batch are merged together (:func:`merge_group`: one
    transaction, one version for what they change), except across a command: a command and
    the results around it keep their order."""
    s = rt.settings
    changed = 0
    sent: list[Any] = []  # every new version, in order: acknowledged in the outbox after flush
    commands = s.topic("commands")
    groups: dict[str, list[tuple[Msg, TaskResult, dict[str, Any] | None]]] = {}

    def merge_groups() -> int:
        n = 0
        for group in groups.values():
            n += merge_group(rt, group, sent)
        groups.clear()
        return n

    for msg in msgs:
        try:
            if msg.topic == commands:
                changed += merge_groups()
                TRACE.set(child(msg.traceparent))  # what it causes joins its trace
                changed += apply_command(rt, validation.asset_command(msg), sent)
                continue
            res, parsed = validation.parsed_result(msg)
            groups.setdefault(res.asset_id, []).append((msg, res, full_data(rt, res, parsed)))
        except Exception as exc:
            if classify(exc) != "poison":
                raise
            log.warning("invalid task result %s dead-lettered: %s", msg.where, exc)
            rt.send_dead_letter(s.topic("dlq", "results"), msg, str(exc))
    changed += merge_groups()
    rt.producer.flush_sync()
    rt.store.ack_updates([(a.asset_id, a.version) for a in sent])
    return changed


def merge_group(rt: Runtime, group: Sequence[tuple[Msg, TaskResult, dict[str, Any] | None]],
                sent: list[Any]) -> int:
    """Merge the results of one asset in one transaction (one new version for all they
    change), then take each through the steps after its merge, in order; returns 1 when the
    asset changed. (A batch that fails is applied again one message at a time: the merge is
    idempotent, see agents.streams.poison.apply_batch.)"""
    s = rt.settings
    TRACE.set(child(group[0][0].traceparent))  # the version it makes joins the first's trace
    plain = nothing_between(rt, [res for _, res, _ in group])
    asset, merged, inline = rt.store.merge_and_complete(
        group[0][1].asset_id,
        [(to_record(res, data), tags_of(rt, res, data)) for _, res, data in group],
        (lambda new: inline_plan(rt, new)) if plain else None)
    finished = asset if inline is not None else None  # completed in the merge's transaction
    changed = 0
    if asset is not None:
        if s.fault_point == "after-merge-commit":
            os._exit(137)  # tests: die like kill -9 between the commit and the send
        RESULTS_MERGED.inc(sum(merged))
        reply = any(wants_reply(asset, res.postprocess) for _, res, _ in group)
        publish_update(rt, asset, sent, reply=reply)
        changed = 1
    for (msg, res, data), was_merged in zip(group, merged, strict=True):
        TRACE.set(child(msg.traceparent))
        try:
            more, asset = after_merge_steps(rt, res, data, asset, was_merged, sent)
            changed = max(changed, more)
        except Exception as exc:
            if classify(exc) != "poison":
                raise
            log.warning("invalid task result %s dead-lettered: %s", msg.where, exc)
            rt.send_dead_letter(s.topic("dlq", "results"), msg, str(exc))
    if finished is not None and inline is not None:  # its webhooks go out with the update
        send_deliveries(rt, webhook_deliveries(finished, inline))
    # complete once the steps of all are done (their notices and decisions count); also
    # after duplicates only: a crash between a merge and its completion is made good here
    elif asset is not None and asset.final and asset.finalized_version is None:
        complete(rt, asset, sent)
    return changed


def nothing_between(rt: Runtime, results: Sequence[TaskResult]) -> bool:
    """Whether nothing the sink runs after merging ``results`` can change the asset (no
    result hook, effect, early notification or dependent post-process for any of them): the
    merge that finishes the asset may then complete it in the same transaction
    (:func:`~agents.streams.completion.inline_plan` decides the rest on the new state)."""
    rt.definitions.refresh()  # (blocking, a lookup only when due), as the workflow does
    postprocesses = rt.definitions.config.postprocesses
    for res in results:
        proc = rt.processors.get(res.task)
        if (proc is None or proc.hooks or proc.effect is not None or notifies_early(res.task)
                or dependents_of(postprocesses, res.postprocess)):
            return False
    return True


def after_merge_steps(rt: Runtime, res: TaskResult, data: dict[str, Any] | None,
                      asset: Any, merged: bool, sent: list[Any]) -> tuple[int, Any]:
    """What follows a result's merge (``asset``: the state after it, None when nothing
    changed): its task's hooks, the early notification, its effect, the workflow. Returns
    (1 when one of them changed the asset, else 0; the newest state; the caller
    completes the asset when it is final)."""
    changed = 0
    if merged and asset is not None:
        noticed = after_merge(rt, res, data)
        if noticed is not None:
            publish_update(rt, noticed, sent, reply=wants_reply(noticed, res.postprocess))
            asset = noticed
        changed = 1
    elif asset is None:
        # a duplicate (or a stale result of an earlier upload): but if a crash came between
        # the merge and the completion step, the asset is final and not finalized yet, so
        # finish that now
        asset = rt.store.get_asset(res.asset_id)
        if asset is None and late_result(rt, res.asset_id, res.postprocess):
            return 0, None  # the asset was deleted: nothing brings it back
        if asset is None:
            raise Poison(f"a result for {res.asset_id!r}, an asset the store does not know")
    eager_notify(rt, asset, res.postprocess, res.task, res.request_id)
    # what the task declares its result does to the original or beyond (idempotent)
    acted = apply_effect(rt, res, data)
    if acted is not None:
        publish_update(rt, acted, sent, reply=False)
        asset, changed = acted, 1
    # workflow: the post-processes that run after this one are decided now (also on a
    # duplicate: a decision committed before a crash still gets its requests sent)
    decided = follow(rt, res, data, asset)
    if decided is not None:
        publish_update(rt, decided, sent, reply=False)
        asset, changed = decided, 1
    return changed, asset


def tags_of(rt: Runtime, res: TaskResult, data: dict[str, Any] | None) -> list[str]:
    """The tags the result's task declares for an ``ok`` result (none when unreadable)."""
    proc = rt.processors.get(res.task)
    if data is None or proc is None or proc.tags is None:
        return []
    try:
        return proc.tags_of(data)
    except Exception:
        log.exception("tags of %s/%s unreadable", res.asset_id, res.postprocess)
        return []


def after_merge(rt: Runtime, res: TaskResult, data: dict[str, Any] | None) -> Any:
    """Run the result hooks the task declares after its ``ok`` result was merged; returns a
    newer asset state if their notices changed it. A failing hook is logged, never fatal: the
    result is merged already (a hook is idempotent, and a replay runs it again)."""
    proc = rt.processors.get(res.task)
    if data is None or proc is None or not proc.hooks:
        return None
    event = ResultEvent(asset_id=res.asset_id, postprocess=res.postprocess, task=res.task,
                        data=data, services=Services(engine=rt.store.engine,
                                                     data_dir=rt.settings.data_dir,
                                                     settings=rt.settings))
    newer = None
    for ref in proc.hooks:
        try:
            outcome = resolve(ref)(event)
            for notice in outcome.notices if outcome is not None else ():
                # a notice: in GET, AssetUpdates and webhooks
                newer = rt.store.add_asset_verdict(res.asset_id, "notice", notice) or newer
        except Exception:
            log.exception("result hook %s of %s failed for %s", describe_ref(ref), res.task,
                          res.asset_id)
    return newer


def wants_reply(asset: Any, postprocess: str) -> bool:
    """The waiting API instance needs every change of a sync task (and a refusal); async
    results after the answer would only be noise on its reply topic."""
    result = asset.results.get(postprocess, {})
    return bool(result.get("mode") == "sync" or asset.status == "refused")


def to_record(res: TaskResult, data: dict[str, Any] | None) -> ResultRecord:
    return ResultRecord(
        asset_id=res.asset_id,
        postprocess=res.postprocess,
        task=res.task,
        request_id=res.request_id,
        status=res.status,
        data=data if res.status == "ok" else None,
        error=res.error,
        error_kind=res.error_kind,
        verdicts=res.verdicts,
        processor_version=res.processor_version,
        attempts=res.attempts,
        duration_ms=res.duration_ms,
        finished_at=res.finished_at,
    )


def install(app: faust.App, rt: Runtime, tasks: Iterable[str] | None = None, *,
            part: int = 0, batch: int = 200) -> Any:
    """The sink agent over the results of ``tasks`` (unset: every registered task) and, in
    ``part`` 0, the commands topic; a worker that starts consuming more tasks later adds a
    part for their results (:mod:`agents.streams.subscriptions`). Returns the agent."""
    within = rt.settings.batch_wait_ms / 1000
    # results of the tasks, and the decisions made outside the pipeline (the single writer)
    names = [rt.settings.topic("results", t)
             for t in sorted(rt.processors if tasks is None else tasks)]
    if part == 0:
        names.append(rt.settings.topic("commands"))
    topic = app.topic(*names, key_type=bytes, value_type=bytes)
    lane_name = "sink" if part == 0 else f"sink.{part}"

    @app.agent(topic, name="darkroom.sink" if part == 0 else f"darkroom.sink.{part}")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        lane = rt.health.lane(lane_name, busy_seconds=120)
        dead = rt.dead_letter_sender(rt.settings.topic("dlq", "results"))

        async def apply(msgs: Sequence[Msg]) -> int:
            return int(await rt.in_pool(merge_batch, rt, msgs))

        async def handle(events: Sequence[EventT[Any]]) -> None:
            await apply_batch(lane, [Msg.of(ev) for ev in events], apply, dead, rt.retry_policy)

        await pipelined_batches(stream, handle, batch=batch, within=within)

    return sink
