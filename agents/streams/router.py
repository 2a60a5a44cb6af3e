"""Router agent: darkroom.uploads -> trigger rules -> darkroom.tasks.<task>.

For each upload event: decode (malformed -> darkroom.dlq.uploads), probe missing media properties
(image header / ffprobe, never a full decode), select the post-processes whose trigger rules hold
(automatic ones plus those the upload asks for), record in the store what the asset waits for, and
send one TaskRequest per post-process. Work is done in batches: one store transaction and one
producer flush per batch, and the batch is acknowledged only after the flush (at-least-once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT

from agents.composition import Runtime
from agents.kafka.headers import TRACE, child
from agents.metrics import EVENTS_ROUTED, TASK_REQUESTS_SENT
from agents.policy.workflow import arrange
from agents.streams import validation
from agents.streams.batching import pipelined_batches
from agents.streams.bundles import bundle
from agents.streams.outputs import asset_update as asset_update
from agents.streams.outputs import publish_update
from agents.streams.poison import Msg, Poison, apply_batch, classify
from schemas.records import TaskRequest, UploadEvent, now_ms
from sinks.objects.base import normalize_folder
from sinks.store.metadata import PlannedTask, UploadRecord

log = logging.getLogger("darkroom.router")

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
    trace: str | None = None


MEDIA_HINTS = ("width", "height", "format", "duration", "bitrate")


def probe_event(rt: Runtime, ev: UploadEvent) -> None:
    """Replace the event's media hints by what the file says (blocking: a header read for
    images, one ffprobe for videos). The file wins: an event declaring a 300x200 JPEG to be a
    1x1 PNG gets the JPEG's properties, and the pixel limit applies to the file's header.
    An unreadable object keeps no hints (its tasks report the error)."""
    from processors.media.probe import probe_file

    kind = asset_kind(ev)
    try:
        path = rt.storage.local_path(ev.uri)
        found = probe_file(path, ev.content_type, ev.filename)
    except Exception as exc:
        if classify(exc) == "transient":
            raise  # storage trouble: route again later rather than route blind
        log.info("probe failed for %s: %s", ev.asset_id, exc)
        found = {}
    if kind != "other":
        for name in MEDIA_HINTS:
            setattr(ev, name, found.get(name))
    if "file_size" in found:
        ev.size_bytes = int(found["file_size"])
    if ev.width and ev.height and asset_kind(ev) == "image":
        pixels = ev.width * ev.height
        if pixels > rt.settings.max_image_pixels:
            raise Poison(f"image is {ev.width}x{ev.height} = {pixels} pixels, over the limit of "
                         f"{rt.settings.max_image_pixels} (decompression bomb guard)")


_PARAMS_JSON: dict[int, tuple[Any, str]] = {}


def params_json_of(pp: Any) -> str:
    """Canonical JSON of a post-process's parameters, computed once per definition (the entry
    keeps the definition alive, so its id cannot be reused)."""
    found = _PARAMS_JSON.get(id(pp))
    if found is None:
        found = _PARAMS_JSON[id(pp)] = (pp, json.dumps(pp.params, sort_keys=True))
    return found[1]


_REPLY_TOPICS: dict[tuple[str, str], tuple[bool, float]] = {}


def valid_reply_topic(rt: Runtime, topic: str | None) -> str | None:
    """A reply topic that exists (validation already checked its name and prefix): an API
    replica creates its own at start, so one that does not exist names no waiting replica and
    writing to it would only create junk topics (or wait for ever where auto-creation is off)."""
    if not topic:
        return None
    key = (rt.bootstrap, topic)
    known, checked = _REPLY_TOPICS.get(key, (False, -1.0))
    if checked < 0 or (not known and time.monotonic() - checked > 30):
        from confluent_kafka.admin import AdminClient

        from agents.kafka.clients import client_config

        admin = AdminClient(client_config({"bootstrap.servers": rt.bootstrap, "log_level": 0}))
        known = topic in admin.list_topics(timeout=10).topics
        _REPLY_TOPICS[key] = (known, time.monotonic())
        if not known:
            log.warning("reply_to %s names no existing topic; sync replies for it are dropped",
                        topic)
    return topic if known else None


_LOGGED_UNKNOWN: set[str] = set()


def unknown_notice(rt: Runtime, unknown: Sequence[str]) -> str:
    """A Kafka upload that names unknown post-processes cannot be refused after the fact: the
    asset gets a notice naming them (and the known ones), and the router logs each name once."""
    fresh = [n for n in unknown if n.casefold() not in _LOGGED_UNKNOWN]
    if fresh and len(_LOGGED_UNKNOWN) < 10_000:
        _LOGGED_UNKNOWN.update(n.casefold() for n in fresh)
        log.warning("upload events ask for unknown post-processes: %s", ", ".join(fresh))
    return rt.definitions.config.unknown_message(list(unknown))


def clear_caches() -> None:
    """Forget the parameter JSON of post-process definitions and the reply topics known to
    exist (``agents.composition.reset_caches``)."""
    _PARAMS_JSON.clear()
    _REPLY_TOPICS.clear()
    _LOGGED_UNKNOWN.clear()


def asset_kind(ev: UploadEvent) -> str:
    """'image', 'video' or 'other'; a probed image format wins over a misleading name."""
    from processors.media.probe import media_kind

    kind = media_kind(ev.content_type, ev.filename)
    if kind == "other" and ev.width is not None and ev.format is not None:
        return "image"
    return kind


def plan(rt: Runtime, ev: UploadEvent) -> Routed:
    ev.folder = normalize_folder(ev.folder or "/")
    props = ev.properties()
    selection = rt.definitions.config.select(props, ev.postprocess)
    kind = asset_kind(ev)
    ukey = upload_key(ev)
    ts = now_ms()
    requests: dict[str, TaskRequest] = {}
    planned = []
    if ev.replay:
        # a replay re-runs an upload the store knows: same identity, same request ids
        ukey = rt.store.upload_key_of(ev.asset_id) or ukey
    only = {n.lower() for n in ev.replay_tasks} if ev.replay else set()
    runnable = []
    for pp in selection.selected:
        proc = rt.processors.get(pp.task)
        if proc is None or kind not in proc.media:
            continue  # an image task never runs on a video, a text file gets none
        runnable.append(pp)
    # a replay of some tasks only; a dependent (after:) with its upstream, waiting for it
    for pp in arrange(runnable, only):
        params_json = params_json_of(pp)
        # a reprocess (POST /v1/assets/{id}/reprocess) is a new request of the same upload
        rid = request_id(ev.asset_id, pp.name, ukey, params_json if not ev.reprocess_id
                         else f"{params_json}\x1freprocess:{ev.reprocess_id}")
        waiting = pp.after is not None
        planned.append(PlannedTask(pp.name, pp.task, rid, pp.mode, params_json, waiting))
        if waiting:
            continue  # the sink dispatches it when the upstream's result decides
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
            definitions_version=max(rt.definitions.version, 0),
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
        eager_notification_url=ev.eager_notification_url,
        on_success=ev.on_success,
        properties=props,
        tags=ev.tags,
        context=ev.context,
        uploaded_at=ev.uploaded_at,
        tasks=planned,
        unknown=list(selection.unknown),
        notices=[unknown_notice(rt, selection.unknown)] if selection.unknown else [],
        replay=ev.replay,
        requested=list(ev.postprocess),
        reply_to=valid_reply_topic(rt, ev.reply_to),
        moderation=ev.moderation,
    )
    return Routed(ev, record, requests)


def decode(rt: Runtime, msg: Msg) -> Routed:
    """Blocking: validate, probe and plan one upload event (Poison when it is invalid)."""
    ev = validation.upload_event(msg, rt.settings.topic("replies") + ".")
    # accepted under newer post-process definitions than this router holds: load them first
    rt.definitions.refresh(ev.definitions_version)
    probe_event(rt, ev)
    routed = plan(rt, ev)
    routed.trace = child(msg.traceparent)  # the router's span of the upload's trace
    return routed


def route_batch(rt: Runtime, msgs: Sequence[Msg]) -> int:
    """Route one batch (blocking). Returns the number of TaskRequests sent.

    Invalid events are dead-lettered here, in the same flush as the rest (the batch goes on);
    anything else that fails fails the batch, and :func:`agents.streams.poison.apply_batch` sorts it
    out (retry, or isolate the culprit).
    """
    s = rt.settings
    routed: list[Routed] = []
    for msg in msgs:
        try:
            routed.append(decode(rt, msg))
        except Exception as exc:
            if classify(exc) != "poison":
                raise
            log.warning("invalid upload event %s dead-lettered: %s", msg.where, exc)
            rt.send_dead_letter(s.topic("dlq", "uploads"), msg, str(exc))
    n_requests = 0
    sent: list[Any] = []
    per_task: Counter[str] = Counter()  # one metric update per task and batch, not per request
    if routed:
        EVENTS_ROUTED.inc(len(routed))
        dispatch, changed = rt.store.register_uploads_and_updates([r.record for r in routed])
        # before the requests go out: the workers then consume these tasks' topics (a no-op
        # for tasks this process recorded before; see agents.streams.subscriptions)
        rt.store.mark_tasks_used({t.task for tasks in dispatch for t in tasks})
        versions = {a.asset_id: a for a in changed}
        for r, tasks in zip(routed, dispatch, strict=True):
            TRACE.set(r.trace)  # what this event causes belongs to its trace
            # (waiting ones are dispatched by the sink: agents.policy.workflow)
            todo = [r.requests[t.postprocess] for t in tasks if not t.waiting]
            per_task.update(req.task for req in todo)
            n_requests += len(todo)
            # the cheap ones as one request (all of them where no API instance waits)
            for req in bundle(todo, rt.processors, waiting=bool(r.record.reply_to)):
                rt.producer.send(s.topic("tasks", req.task), r.event.asset_id, req.to_bytes())
            asset = versions.pop(r.event.asset_id, None)
            if asset is not None:
                # the new version (pending, or complete when no task applies) goes out; the API
                # instance waiting on a sync upload with no sync task learns it at once
                no_sync_wait = not any(t.mode == "sync" for t in r.record.tasks)
                publish_update(rt, asset, sent, reply=bool(r.record.reply_to) and no_sync_wait)
    rt.producer.flush_sync()
    for task, n in per_task.items():
        TASK_REQUESTS_SENT.labels(task).inc(n)
    if sent:
        rt.store.ack_updates([(a.asset_id, a.version) for a in sent])
    return n_requests


def install(app: faust.App, rt: Runtime, batch: int = 500) -> None:
    within = rt.settings.batch_wait_ms / 1000
    topic = app.topic(rt.settings.topic("uploads"), key_type=bytes, value_type=bytes)

    @app.agent(topic, name="darkroom.router")
    async def router(stream: faust.StreamT[bytes]) -> None:
        lane = rt.health.lane("router", busy_seconds=120)
        dead = rt.dead_letter_sender(rt.settings.topic("dlq", "uploads"))

        async def apply(msgs: Sequence[Msg]) -> int:
            return int(await rt.in_pool(route_batch, rt, msgs))

        async def handle(events: Sequence[EventT[Any]]) -> None:
            # store or broker trouble is retried (with backoff) until the batch is through;
            # the events are acked only afterwards
            await apply_batch(lane, [Msg.of(ev) for ev in events], apply, dead, rt.retry_policy)

        await pipelined_batches(stream, handle, batch=batch, within=within)

