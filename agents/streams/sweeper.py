"""The sweeper: what makes sure no asset waits forever, run by one worker of the cluster at a time.

Kafka is at-least-once but not infallible here: a worker can die mid-task, the embedded broker
forgets everything on restart, a writer can die between its commit and its send. The database
knows what is owed, so one worker (the holder of the ``sweeper`` lease in the store; any worker
takes over within a lease period when the holder dies) periodically:

* re-dispatches requests a task agent **started** and never answered within the task's whole
  budget (every attempt at its timeout, plus margin) — with the request's original parameters and
  request id; requests still **queued** are never re-sent, whatever the backlog: they are only
  waiting (:meth:`sinks.store.metadata.MetadataStore.pending_tasks`);
* after ``DARKROOM_TASK_ATTEMPTS`` dispatches gives up once with a ``timeout`` error result (which
  never replaces an ``ok`` result: the store's merge has precedence rules);
* sends the asset updates and webhook deliveries whose writer died before the broker had them
  (the outboxes);
* notices when the broker lost its log (a new epoch: its marker on ``<prefix>.epoch`` is not the
  one the store last saw — the embedded broker keeps everything in memory) and then ensures the
  topics again, re-dispatches every request still pending from before the epoch, and re-publishes
  every upload the API recorded that was never routed — from the database.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import faust

from agents.composition import Runtime
from agents.streams.poison import classify
from schemas.records import TaskRequest, TaskResult, UploadEvent, now_ms

log = logging.getLogger("darkroom.sweeper")

LEASE = "sweeper"
MARKER_VALUE = b"darkroom-epoch"


def started_budget_ms(rt: Runtime) -> int:
    """How long a started request may stay unanswered before it counts as lost: every attempt at
    its full timeout, the backoffs, queueing for a processor thread (x2), and at least 2 min."""
    s = rt.settings
    budget = s.task_timeout_s * s.task_attempts + s.retry_backoff_s * 2 ** s.task_attempts
    return int(max(120.0, 2 * budget) * 1000)


def interval_s(rt: Runtime) -> float:
    return max(5.0, min(60.0, rt.settings.task_timeout_s / 2))


def sweep(rt: Runtime, lost_before_ms: int | None = None) -> int:
    """Re-dispatch lost requests, give up on exhausted ones (blocking). ``lost_before_ms``: the
    broker lost its log, so requests queued before then are lost too. Returns how many rows it
    acted on."""
    now = now_ms()
    rows = rt.store.pending_tasks(now - started_budget_ms(rt), queued_before_ms=lost_before_ms)
    for row in rows:
        try:
            sweep_one(rt, row, lost_before_ms is not None)
        except Exception as exc:
            if classify(exc) == "transient":
                raise
            log.exception("sweeper: skipping %s/%s", row["asset_id"], row["postprocess"])
    rt.producer.flush_sync()
    return len(rows)


def sweep_one(rt: Runtime, row: dict[str, Any], lost_log: bool = False) -> None:
    """Re-dispatch one lost request with its original parameters, or give up on it once."""
    s = rt.settings
    if row["dispatches"] < s.task_attempts or lost_log:
        props = json.loads(row["properties_json"])
        req = TaskRequest(
            request_id=row["request_id"], asset_id=row["asset_id"], task=row["task"],
            postprocess=row["postprocess"], uri=row["uri"], mode=row["mode"],
            filename=row["filename"], folder=row["folder"],
            content_type=row["content_type"], size_bytes=row["size_bytes"],
            width=props.get("width"), height=props.get("height"),
            format=props.get("format"), duration=props.get("duration"),
            bitrate=props.get("bitrate"), params_json=row["params_json"] or "{}",
            attempt=row["dispatches"] + 1, requested_at=now_ms(),
        )
        rt.producer.send(s.topic("tasks", row["task"]), row["asset_id"], req.to_bytes())
        rt.store.mark_redispatched(row["asset_id"], row["postprocess"], row["request_id"])
        log.info("re-dispatched %s/%s (dispatch %d)", row["asset_id"], row["postprocess"],
                 row["dispatches"] + 1)
    elif rt.store.mark_gave_up(row["asset_id"], row["postprocess"], row["request_id"]):
        res = TaskResult(
            request_id=row["request_id"], asset_id=row["asset_id"], task=row["task"],
            postprocess=row["postprocess"], status="error",
            error=f"no result after {row['dispatches']} dispatches", error_kind="timeout",
            attempts=row["dispatches"], finished_at=now_ms(),
        )
        rt.producer.send(s.topic("results", row["task"]), row["asset_id"], res.to_bytes())


def resend_updates(rt: Runtime, older_than_s: float | None = None) -> int:
    """Send asset updates a writer committed but never saw acknowledged, oldest first."""
    s = rt.settings
    after = s.outbox_resend_after_s if older_than_s is None else older_than_s
    rows = rt.store.stale_updates(now_ms() - int(after * 1000))
    for row in rows:
        rt.producer.send(s.topic("assets"), row["asset_id"], bytes(row["payload"]))
    if rows:
        rt.producer.flush_sync()
        rt.store.ack_updates([(r["asset_id"], int(r["version"])) for r in rows])
    return len(rows)


def requeue_unrouted(rt: Runtime, older_than_s: float = 60.0) -> int:
    """Re-publish the upload events of assets the API recorded but no router ever registered
    (their event was lost with the broker's log): rebuilt from the placeholder."""
    s = rt.settings
    found = rt.store.unrouted_placeholders(now_ms() - int(older_than_s * 1000))
    for a in found:
        ev = UploadEvent(asset_id=a.asset_id, uri=a.uri, filename=a.filename, folder=a.folder,
                         content_type=a.content_type, size_bytes=a.size_bytes,
                         uploaded_at=a.uploaded_at, postprocess=list(a.requested), mode=a.mode,
                         notification_url=a.notification_url, on_success=a.on_success,
                         eager_notification_url=a.eager_notification_url,
                         tags=list(a.tags), context=dict(a.context), reply_to=None,
                         width=a.properties.get("width"), height=a.properties.get("height"),
                         format=a.properties.get("format"))
        rt.producer.send(s.topic("uploads"), a.asset_id, ev.to_bytes())
    if found:
        rt.producer.flush_sync()
    return len(found)


# ------------------------------------------------------------------ the broker's epoch
# The broker's log has an epoch: a marker message (id and start time) on ``<prefix>.epoch``,
# written when the topics are first made (``ensure_epoch``, at every start) or found missing.
# The store remembers the epoch the sweeper last saw; a different one means the broker lost its
# log since (the embedded broker keeps everything in memory), so everything the database still
# waits for from before the new epoch began is sent again.

EPOCH_STATE = "broker-epoch"


def _marker_topic(rt: Runtime) -> str:
    return rt.settings.topic("epoch")


def read_epoch(rt: Runtime) -> tuple[str, int] | None:
    """(id, start ms) of the broker's current epoch, or None when its marker is gone."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = _marker_topic(rt)
    consumer = Consumer({"bootstrap.servers": rt.bootstrap, "group.id": f"epoch-{uuid.uuid4()}",
                         "enable.auto.commit": False, "allow.auto.create.topics": False,
                         "log_level": 0})
    try:
        md = consumer.list_topics(timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return None
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                parts = (msg.value() or b"").split(b":")
                if len(parts) == 3 and parts[0] == MARKER_VALUE and parts[2].isdigit():
                    return parts[1].decode(), int(parts[2])
                return None
        return None
    finally:
        consumer.close()


def ensure_epoch(rt: Runtime) -> tuple[str, int]:
    """The current epoch, starting a new one (a new marker) when the broker has none."""
    from agents.kafka.topics import ensure_topics

    found = read_epoch(rt)
    if found is not None:
        return found
    epoch = (uuid.uuid4().hex, now_ms())
    # kept for ever: a marker deleted by retention would look like a lost log
    ensure_topics(rt.bootstrap, [_marker_topic(rt)], 1, rt.settings.replication_factor,
                  config={"retention.ms": "-1", "retention.bytes": "-1"})
    rt.producer.send(_marker_topic(rt), b"epoch",
                     b":".join([MARKER_VALUE, epoch[0].encode(), str(epoch[1]).encode()]),
                     partition=0)  # whatever partitions an auto-created topic got
    rt.producer.flush_sync()
    return read_epoch(rt) or epoch  # a concurrent writer's marker, if it came first


def recover_lost_log(rt: Runtime, since_ms: int) -> None:
    """The broker lost its log: topics again, then everything the database still waits for from
    before ``since_ms`` (the new epoch's start)."""
    from agents.kafka.topics import all_topics, ensure_topics

    s = rt.settings
    log.warning("the broker lost its log (a new epoch): ensuring topics and re-dispatching "
                "what the database still waits for")
    ensure_topics(rt.bootstrap, all_topics(s, rt.processors), s.partitions, s.replication_factor)
    requeued = requeue_unrouted(rt, older_than_s=max(0.0, (now_ms() - since_ms) / 1000))
    swept = sweep(rt, lost_before_ms=since_ms)
    updates = resend_updates(rt, older_than_s=0)
    log.warning("recovered: %d uploads re-published, %d requests re-dispatched, %d updates "
                "re-sent", requeued, swept, updates)


def check_epoch(rt: Runtime) -> None:
    """Recover when the broker's epoch is not the one the store saw last (also on the first
    sweep with a database that outlived its broker: what is older than the epoch was never in
    this log)."""
    epoch_id, started = ensure_epoch(rt)
    last = rt.store.state(EPOCH_STATE)
    if last != epoch_id:
        if last is not None or rt.store.state(FIRST_EPOCH_STATE) != epoch_id:
            recover_lost_log(rt, started)
        rt.store.set_state(EPOCH_STATE, epoch_id)


def run_once(rt: Runtime) -> dict[str, int]:
    """One sweep if this worker holds the lease (blocking)."""
    from agents.streams.delivery import resend_stale

    ttl = int(interval_s(rt) * 3 * 1000)
    if not rt.store.acquire_lease(LEASE, rt.worker_name, ttl):
        return {}
    check_epoch(rt)
    return {"requests": sweep(rt), "updates": resend_updates(rt), "webhooks": resend_stale(rt)}


def follow_epoch(rt: Runtime, seen: list[str]) -> None:
    """Every worker (blocking): when the broker's epoch changes under it, its consumer state
    (positions, read offsets of the old log) is wrong for the new log — start afresh. A
    ``darkroom worker`` re-executes itself (same process id: supervisors see no exit); other
    hosts of the agents only log it."""
    found = read_epoch(rt)
    current = found[0] if found is not None else None
    if not seen:  # the epoch this worker joined at start, or the first one it reads
        joined = rt.epoch_id or current
        if joined is None:
            return
        seen.append(joined)
    if current is None or current == seen[0]:
        return  # (no marker: the sweeper's holder writes the new epoch's, then all follow)
    argv = getattr(rt, "reexec_argv", None)
    log.warning("the broker's log changed under this worker (epoch %s -> %s)%s", seen[0] or "-",
                current or "none", ": restarting it" if argv else "")
    if argv:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
    seen[0] = current or ""


FIRST_EPOCH_STATE = "first-broker-epoch"


def join_epoch(rt: Runtime, epoch_id: str) -> None:
    """Choose the workers' consumer group for the broker's current epoch (before joining it).

    On the broker log the database first saw, the group is ``DARKROOM_WORKER_ID`` (or the topic
    prefix) as configured. On a later log (the embedded broker restarted), the positions that
    group committed belong to the old log — the old consumers kept committing them into the new
    one — so a worker resuming from them would skip what the new log holds, the sweeper's
    re-dispatches among it; and the broker refuses to reset them while any member is left. So
    the workers join a group of that epoch, ``<group>.<epoch>``, which starts at the beginning
    of the new log; every worker of the deployment (restarted in place, or started later)
    computes the same one. Reading the new log from its start repeats some work, which the
    idempotent merges absorb. Apache Kafka keeps its log: the group never changes there."""
    rt.epoch_id = epoch_id
    first = rt.store.state_or_init(FIRST_EPOCH_STATE, epoch_id)
    rt.settings.group_epoch = None if first == epoch_id else epoch_id[:12]


def install(app: faust.App, rt: Runtime) -> None:
    seen: list[str] = []

    @app.timer(interval=interval_s(rt), name="darkroom.sweeper")  # type: ignore[untyped-decorator]
    async def sweeper() -> None:
        try:
            await rt.in_pool(follow_epoch, rt, seen, pool=rt.io_pool)
            acted = await rt.in_pool(run_once, rt, pool=rt.io_pool)
        except Exception:
            log.exception("sweep failed (retried next interval)")
            return
        if any(acted.values()):
            log.info("sweeper: %s", ", ".join(f"{v} {k}" for k, v in acted.items() if v))
