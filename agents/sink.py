"""Sink agent: darkroom.results.<task> -> metadata store -> darkroom.assets.

Merges each TaskResult into the asset idempotently (keyed by asset, post-process and request id;
duplicates and replays are no-ops) and emits an AssetUpdate only when the asset actually changed.
Also hosts the sweeper, which makes sure no asset waits forever for a request the broker lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import faust
from faust.types import EventT

from agents.metrics import RESULTS_MERGED
from agents.records import DeadLetter, TaskRequest, TaskResult, now_ms
from agents.router import asset_update, retry_forever
from agents.runtime import Runtime
from agents.streaming import pipelined_batches
from sinks import faces as faces_index
from sinks import similarity as similarity_index
from sinks.store import ResultRecord

log = logging.getLogger("darkroom.sink")


def merge_batch(rt: Runtime, raw: list[tuple[str, bytes | None, bytes]]) -> int:
    """Blocking: merge a batch of results; returns how many assets changed."""
    s = rt.settings
    changed = 0
    for topic, key, value in raw:
        try:
            res = TaskResult.from_bytes(value)
        except Exception as exc:  # noqa: BLE001 - malformed result: dead letter
            dl = DeadLetter(source_topic=topic, error=f"malformed task result: {exc}",
                            original=value, original_key=key, failed_at=now_ms())
            rt.producer.send(s.topic("dlq", "results"), key, dl.to_bytes())
            continue
        asset = rt.store.merge_result(to_record(res))
        if res.task == faces_index.TASK:
            # the face-cluster index follows the stored result (idempotent; heals on replay)
            try:
                faces_index.on_result(rt.store.engine, res.asset_id, res.postprocess, res.data)
            except Exception:
                log.exception("face index update failed for %s", res.asset_id)
        elif res.task == similarity_index.TASK:
            try:
                dups = similarity_index.on_result(rt.store.engine, res.asset_id,
                                                  res.postprocess, res.data, rt.settings.data_dir)
                if dups:
                    # flagged on the asset (a notice: in GET, AssetUpdates and webhooks)
                    flagged = rt.store.add_asset_verdict(
                        res.asset_id, "notice", "near-duplicate of: " + ", ".join(sorted(dups)))
                    asset = flagged or asset
            except Exception:
                log.exception("similarity index update failed for %s", res.asset_id)
        if asset is not None:
            changed += 1
            RESULTS_MERGED.inc()
            update = asset_update(asset).to_bytes()
            rt.producer.send(s.topic("assets"), asset.asset_id, update)
            if asset.reply_to and wants_reply(asset, res.postprocess):
                rt.producer.send(asset.reply_to, asset.asset_id, update)
        else:
            # a duplicate: but if a crash came between the merge and the completion step,
            # the asset is final and not finalized yet, so finish that now
            asset = rt.store.get_asset(res.asset_id)
        if asset is not None and asset.final and asset.finalized_version is None:
            complete(rt, asset)
    rt.producer.flush_sync()
    return changed


def complete(rt: Runtime, asset: Any) -> None:
    """Blocking: on-success steps and webhooks of a finished asset (once; see completion)."""
    from agents.completion import finalize

    done = finalize(rt, asset)
    if done is None:
        return
    new, fresh = done
    s = rt.settings
    if new.version != asset.version:
        rt.producer.send(s.topic("assets"), new.asset_id, asset_update(new).to_bytes())
    for d in fresh:
        rt.producer.send(s.topic("webhooks"), d.asset_id, d.to_bytes())


def wants_reply(asset: Any, postprocess: str) -> bool:
    """The waiting API instance needs every change of a sync task (and a refusal); async
    results after the answer would only be noise on its reply topic."""
    result = asset.results.get(postprocess, {})
    return bool(result.get("mode") == "sync" or asset.status == "refused")


def to_record(res: TaskResult) -> ResultRecord:
    return ResultRecord(
        asset_id=res.asset_id,
        postprocess=res.postprocess,
        task=res.task,
        request_id=res.request_id,
        status=res.status,
        data=res.data if res.status == "ok" else None,
        error=res.error,
        error_kind=res.error_kind,
        verdicts=res.verdicts,
        processor_version=res.processor_version,
        attempts=res.attempts,
        duration_ms=res.duration_ms,
        finished_at=res.finished_at,
    )


def sweep(rt: Runtime) -> int:
    """Re-dispatch requests pending too long; give up with an error result after N dispatches.

    The embedded broker keeps messages in memory only, so a restart can lose requests the store
    still waits for. Returns how many tasks were acted on.
    """
    s = rt.settings
    cutoff = now_ms() - int(s.task_timeout_s * 1000 * 2)
    acted = 0
    for row in rt.store.pending_tasks(cutoff):
        acted += 1
        if row["dispatches"] < s.task_attempts:
            props = json.loads(row["properties_json"])
            req = TaskRequest(
                request_id=row["request_id"], asset_id=row["asset_id"], task=row["task"],
                postprocess=row["postprocess"], uri=row["uri"], mode=row["mode"],
                filename=row["filename"], folder=row["folder"],
                content_type=row["content_type"], size_bytes=row["size_bytes"],
                width=props.get("width"), height=props.get("height"),
                format=props.get("format"), duration=props.get("duration"),
                bitrate=props.get("bitrate"),
                params_json=json.dumps(
                    rt.postprocesses[row["postprocess"]].params
                    if row["postprocess"] in rt.postprocesses else {}, sort_keys=True),
                attempt=row["dispatches"] + 1, requested_at=now_ms(),
            )
            rt.producer.send(s.topic("tasks", row["task"]), row["asset_id"], req.to_bytes())
            rt.store.mark_redispatched(row["asset_id"], row["postprocess"], row["request_id"])
        else:
            res = TaskResult(
                request_id=row["request_id"], asset_id=row["asset_id"], task=row["task"],
                postprocess=row["postprocess"], status="error",
                error=f"no result after {row['dispatches']} dispatches", error_kind="timeout",
                attempts=row["dispatches"], finished_at=now_ms(),
            )
            rt.producer.send(s.topic("results", row["task"]), row["asset_id"], res.to_bytes())
    rt.producer.flush_sync()
    return acted


def install(app: faust.App, rt: Runtime, batch: int = 200) -> None:
    within = rt.settings.batch_wait_ms / 1000
    names = [rt.settings.topic("results", t) for t in rt.processors]
    topic = app.topic(*names, key_type=bytes, value_type=bytes)

    @app.agent(topic, name="darkroom.sink")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()

        async def handle(events: Sequence[EventT[Any]]) -> None:
            raw = [(ev.message.topic, ev.message.key, ev.message.value) for ev in events]
            await retry_forever(loop, rt, "merging results", merge_batch, rt, raw)

        await pipelined_batches(stream, handle, batch=batch, within=within)

    @app.timer(  # type: ignore[untyped-decorator]
        interval=max(5.0, rt.settings.task_timeout_s / 2), name="darkroom.sweeper"
    )
    async def sweeper() -> None:
        loop = asyncio.get_running_loop()
        from agents.delivery import resend_stale

        try:
            acted = await loop.run_in_executor(rt.pool, sweep, rt)
            resent = await loop.run_in_executor(rt.pool, resend_stale, rt)
        except Exception:
            log.exception("sweep failed")
            return
        if acted or resent:
            log.info("sweeper: %d overdue tasks, %d webhook messages re-sent", acted, resent)
