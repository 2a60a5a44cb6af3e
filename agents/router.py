"""Router agent: darkroom.uploads -> trigger rules -> darkroom.tasks.<task>.

For each upload event: decode (malformed -> darkroom.dlq.uploads), probe missing media properties
(image header / ffprobe, never a full decode), select the post-processes whose trigger rules hold
(automatic ones plus those the upload asks for), record in the store what the asset waits for, and
send one TaskRequest per post-process. Work is done in batches: one store transaction and one
producer flush per batch, and the batch is acknowledged only after the flush (at-least-once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT

from agents.metrics import EVENTS_ROUTED, TASK_REQUESTS_SENT
from agents.records import AssetUpdate, DeadLetter, TaskRequest, UploadEvent, now_ms
from agents.runtime import Runtime
from agents.storage import normalize_folder
from agents.streaming import pipelined_batches
from sinks.store import PlannedTask, UploadRecord

log = logging.getLogger("darkroom.router")

PROBED = ("width", "height", "format", "duration", "bitrate")


def upload_key(ev: UploadEvent) -> str:
    """Identity of one upload of an asset: a duplicate event has the same key."""
    ident = "\x1f".join(
        (ev.uri, str(ev.uploaded_at), str(ev.size_bytes), ",".join(sorted(ev.postprocess)),
         ev.mode)
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def request_id(asset_id: str, postprocess: str, ukey: str, params_json: str) -> str:
    """Deterministic per (asset, post-process, upload, parameters): merges are keyed by it."""
    raw = "\x1f".join((asset_id, postprocess, ukey, params_json))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass
class Routed:
    event: UploadEvent
    record: UploadRecord
    requests: dict[str, TaskRequest]


def needs_probe(ev: UploadEvent) -> bool:
    return ev.size_bytes < 0 or ev.width is None or ev.height is None or ev.format is None


def probe_event(rt: Runtime, ev: UploadEvent) -> None:
    """Fill absent properties in place (blocking: runs in the thread pool)."""
    from agents.probe import probe_file

    try:
        path = rt.storage.local_path(ev.uri)
        found = probe_file(path, ev.content_type, ev.filename)
    except Exception as exc:  # noqa: BLE001 - a bad object is the tasks' error to report
        log.info("probe failed for %s: %s", ev.asset_id, exc)
        return
    if ev.size_bytes < 0:
        ev.size_bytes = int(found.get("file_size", -1))
    for name in PROBED:
        if getattr(ev, name) is None and found.get(name) is not None:
            setattr(ev, name, found[name])


_PARAMS_JSON: dict[int, tuple[Any, str]] = {}


def params_json_of(pp: Any) -> str:
    """Canonical JSON of a post-process's parameters, computed once per definition (the entry
    keeps the definition alive, so its id cannot be reused)."""
    found = _PARAMS_JSON.get(id(pp))
    if found is None:
        found = _PARAMS_JSON[id(pp)] = (pp, json.dumps(pp.params, sort_keys=True))
    return found[1]


def valid_reply_topic(rt: Runtime, topic: str | None) -> str | None:
    """Only ``<prefix>.replies.<instance>`` topics: an event cannot make us write elsewhere."""
    prefix = rt.settings.topic("replies") + "."
    if topic and topic.startswith(prefix) and len(topic) > len(prefix):
        return topic
    return None


def asset_kind(ev: UploadEvent) -> str:
    """'image', 'video' or 'other'; a probed image format wins over a misleading name."""
    from agents.probe import media_kind

    kind = media_kind(ev.content_type, ev.filename)
    if kind == "other" and ev.width is not None and ev.format is not None:
        return "image"
    return kind


def plan(rt: Runtime, ev: UploadEvent) -> Routed:
    ev.folder = normalize_folder(ev.folder or "/")
    props = ev.properties()
    selection = rt.config.select(props, ev.postprocess)
    kind = asset_kind(ev)
    ukey = upload_key(ev)
    ts = now_ms()
    requests: dict[str, TaskRequest] = {}
    planned = []
    if ev.replay:
        # a replay re-runs an upload the store knows: same identity, same request ids
        ukey = rt.store.upload_key_of(ev.asset_id) or ukey
    only = {n.lower() for n in ev.replay_tasks} if ev.replay else set()
    for pp in selection.selected:
        proc = rt.processors.get(pp.task)
        if proc is None or kind not in proc.media:
            continue  # an image task never runs on a video, a text file gets none
        if only and pp.name.lower() not in only and pp.task.lower() not in only:
            continue  # a replay of some tasks only
        params_json = params_json_of(pp)
        rid = request_id(ev.asset_id, pp.name, ukey, params_json)
        planned.append(PlannedTask(pp.name, pp.task, rid, pp.mode))
        requests[pp.name] = TaskRequest(
            request_id=rid,
            asset_id=ev.asset_id,
            task=pp.task,
            postprocess=pp.name,
            uri=ev.uri,
            mode=pp.mode,
            filename=ev.filename,
            folder=ev.folder,
            content_type=ev.content_type,
            size_bytes=ev.size_bytes,
            width=ev.width,
            height=ev.height,
            format=ev.format,
            duration=ev.duration,
            bitrate=ev.bitrate,
            params_json=params_json,
            requested_at=ts,
            replay=ev.replay,
        )
    record = UploadRecord(
        asset_id=ev.asset_id,
        upload_key=ukey,
        uri=ev.uri,
        filename=ev.filename,
        folder=ev.folder,
        content_type=ev.content_type,
        size_bytes=ev.size_bytes,
        mode=ev.mode,
        notification_url=ev.notification_url,
        on_success=ev.on_success,
        properties=props,
        tags=ev.tags,
        context=ev.context,
        uploaded_at=ev.uploaded_at,
        tasks=planned,
        unknown=list(selection.unknown),
        replay=ev.replay,
        requested=list(ev.postprocess),
        reply_to=valid_reply_topic(rt, ev.reply_to),
    )
    return Routed(ev, record, requests)


def route_batch(rt: Runtime, raw: list[tuple[bytes | None, bytes]]) -> int:
    """Route one batch (blocking). Returns the number of TaskRequests sent."""
    s = rt.settings
    routed: list[Routed] = []
    for key, value in raw:
        try:
            ev = UploadEvent.from_bytes(value)
            if needs_probe(ev):
                probe_event(rt, ev)
            routed.append(plan(rt, ev))
        except Exception as exc:  # noqa: BLE001 - malformed event: dead-letter, keep going
            log.warning("malformed upload event dead-lettered: %s", exc)
            dl = DeadLetter(
                source_topic=s.topic("uploads"),
                error=f"malformed upload event: {exc}",
                original=value,
                original_key=key,
                asset_id=key.decode(errors="replace") if key else None,
                failed_at=now_ms(),
            )
            rt.producer.send(s.topic("dlq", "uploads"), key, dl.to_bytes())
    sent = 0
    if routed:
        EVENTS_ROUTED.inc(len(routed))
        dispatch = rt.store.register_uploads([r.record for r in routed])
        for r, tasks in zip(routed, dispatch, strict=True):
            for t in tasks:
                TASK_REQUESTS_SENT.labels(t.task).inc()
                rt.producer.send(
                    s.topic("tasks", t.task), r.event.asset_id, r.requests[t.postprocess].to_bytes()
                )
                sent += 1
            no_sync_wait = not any(t.mode == "sync" for t in r.record.tasks)
            if not r.record.tasks or (r.record.reply_to and no_sync_wait):
                # nothing to wait for: tell the assets topic (no tasks at all) and the API
                # instance waiting on a sync upload (no sync tasks) right away
                asset = rt.store.get_asset(r.event.asset_id)
                if asset is not None:
                    update = asset_update(asset).to_bytes()
                    if not r.record.tasks:
                        rt.producer.send(s.topic("assets"), asset.asset_id, update)
                    if r.record.reply_to:
                        rt.producer.send(r.record.reply_to, asset.asset_id, update)
    rt.producer.flush_sync()
    return sent


def asset_update(asset: Any) -> AssetUpdate:
    return AssetUpdate(
        asset_id=asset.asset_id,
        version=asset.version,
        status=asset.status,
        uri=asset.uri,
        filename=asset.filename,
        folder=asset.folder,
        content_type=asset.content_type,
        size_bytes=asset.size_bytes,
        info_json=json.dumps(asset.info, sort_keys=True),
        tags=list(asset.tags),
        context=dict(asset.context),
        metadata_json=json.dumps(asset.metadata, sort_keys=True),
        results_json=json.dumps(asset.results, sort_keys=True),
        notices=list(asset.notices),
        refusals=list(asset.refusals),
        updated_at=asset.updated_at,
    )


def install(app: faust.App, rt: Runtime, batch: int = 500) -> None:
    within = rt.settings.batch_wait_ms / 1000
    topic = app.topic(rt.settings.topic("uploads"), key_type=bytes, value_type=bytes)

    @app.agent(topic, name="darkroom.router")
    async def router(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()

        async def handle(events: Sequence[EventT[Any]]) -> None:
            raw = [(ev.message.key, ev.message.value) for ev in events]
            # Store or broker trouble is retried (with backoff) until the batch is through;
            # the events are acked only afterwards.
            await retry_forever(loop, rt, "routing a batch", route_batch, rt, raw)

        await pipelined_batches(stream, handle, batch=batch, within=within)


async def retry_forever(loop: asyncio.AbstractEventLoop, rt: Runtime, what: str,
                        fn: Any, *args: Any, pool: Any = None) -> Any:
    """Run blocking ``fn`` in a thread until it succeeds (store/broker trouble is transient)."""
    delay = 0.5
    while True:
        try:
            return await loop.run_in_executor(pool or rt.pool, fn, *args)
        except Exception:
            log.exception("%s failed; retrying in %.1fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
