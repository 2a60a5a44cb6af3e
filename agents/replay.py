"""Replays: run post-processing again for chosen uploads, safely.

Two sources:

* **the store** (``--asset``, ``--folder``, ``--missing TASK``): the upload event is rebuilt from
  the asset's record, so it works even when the broker no longer holds the original event (the
  embedded broker forgets everything on restart);
* **the uploads topic** (``--from/--to`` time window, ``--from-offset``): the original events,
  re-sent with ``replay`` set. Time lookups on the embedded broker are by write time and answer 0
  past the end, so every message read is checked against the window itself; a wrong lookup costs
  reading more, never replaying the wrong uploads.

Replayed events carry ``replay=true`` (and ``replay_tasks`` for ``--task``/``--missing``): the
router re-runs those post-processes, the sink keeps the old result unless the new one differs, and
only a real change bumps the asset's version and sends a webhook. Progress is saved in the store
(the ``replays`` table) after every flushed batch, so an interrupted replay resumes where it
stopped instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import TopicPartition

from agents.settings import Settings
from schemas.records import UploadEvent
from sinks.store.metadata import Asset, MetadataStore

if TYPE_CHECKING:
    from agents.composition import Runtime


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 ('2026-11-22T10:00:00Z'), epoch seconds or ms."""
    t = text.strip()
    if t.isdigit():
        n = int(t)
        return n if n > 10**11 else n * 1000
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)


@dataclass
class Selector:
    assets: list[str] = field(default_factory=list)
    folder: str | None = None
    tasks: list[str] = field(default_factory=list)
    missing: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    from_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def from_topic(self) -> bool:
        return self.from_ms is not None or self.to_ms is not None or bool(self.from_offsets)

    def as_dict(self) -> dict[str, Any]:
        return {"assets": sorted(self.assets), "folder": self.folder,
                "tasks": sorted(self.tasks), "missing": self.missing, "from_ms": self.from_ms,
                "to_ms": self.to_ms, "from_offsets": {str(k): v for k, v in
                                                      sorted(self.from_offsets.items())}}

    def default_name(self) -> str:
        raw = json.dumps(self.as_dict(), sort_keys=True)
        return "replay-" + hashlib.sha256(raw.encode()).hexdigest()[:12]

    @property
    def replay_tasks(self) -> list[str]:
        return [self.missing] if self.missing else list(self.tasks)


def event_from_asset(asset: Asset, replay_tasks: Sequence[str]) -> UploadEvent:
    props = asset.properties
    return UploadEvent(
        asset_id=asset.asset_id, uri=asset.uri, filename=asset.filename, folder=asset.folder,
        content_type=asset.content_type, size_bytes=asset.size_bytes,
        uploaded_at=asset.uploaded_at, postprocess=list(asset.requested), mode="async",
        notification_url=asset.notification_url, on_success=asset.on_success,
        eager_notification_url=asset.eager_notification_url,
        tags=list(asset.tags), context=dict(asset.context), width=props.get("width"),
        height=props.get("height"), format=props.get("format"),
        duration=props.get("duration"), bitrate=props.get("bitrate"), replay=True,
        replay_tasks=list(replay_tasks),
    )


@dataclass
class Planned:
    event: UploadEvent
    cursor: dict[str, Any]


class RateLimiter:
    def __init__(self, per_s: float | None) -> None:
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


def from_store(store: MetadataStore, sel: Selector, cursor: dict[str, Any]) -> Iterator[Planned]:
    after = cursor.get("after")
    while True:
        batch = store.replay_candidates(asset_ids=sel.assets, folder=sel.folder,
                                        missing=sel.missing, after=after, limit=200)
        if not batch:
            return
        for asset in batch:
            after = asset.asset_id
            if not asset.uri:
                continue  # a refused upload whose object is gone: nothing to run on
            yield Planned(event_from_asset(asset, sel.replay_tasks), {"after": after})


def from_topic(settings: Settings, bootstrap: str, sel: Selector, cursor: dict[str, Any],
               idle_s: float = 3.0) -> Iterator[Planned]:
    from agents.kafka.reading import open_consumer, partitions, until_idle

    topic = settings.topic("uploads")
    with open_consumer(bootstrap, f"replay-{uuid.uuid4()}",
                       **{"auto.offset.reset": "earliest"}) as consumer:
        parts = partitions(consumer, topic)
        saved = {int(k): int(v) for k, v in cursor.get("offsets", {}).items()}
        starts: dict[int, int] = {}
        for p in parts:
            if p in saved:
                starts[p] = saved[p]
            elif p in sel.from_offsets:
                starts[p] = sel.from_offsets[p]
            elif sel.from_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(topic, p, sel.from_ms)],
                                                   timeout=10)[0].offset
                starts[p] = max(found, 0)  # checked against each message's timestamp below
            else:
                starts[p] = 0
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        offsets = dict(starts)
        done: set[int] = set()
        for msg in until_idle(consumer, idle_s):
            if msg.partition() in done:
                continue
            p, ts, value = int(msg.partition() or 0), msg.timestamp()[1], msg.value()
            offsets[p] = int(msg.offset() or 0) + 1
            if sel.to_ms is not None and ts > sel.to_ms:
                done.add(p)
                if len(done) == len(parts):
                    return
                continue
            if sel.from_ms is not None and ts < sel.from_ms:
                continue
            try:
                ev = UploadEvent.from_bytes(value or b"")
            except Exception:  # noqa: BLE001 - malformed events are the DLQ's business
                continue
            if ev.replay or (sel.folder and not ev.folder.startswith(sel.folder)):
                continue
            if sel.assets and ev.asset_id not in sel.assets:
                continue
            ev.replay, ev.replay_tasks, ev.reply_to, ev.mode = (
                True, sel.replay_tasks, None, "async")
            yield Planned(ev, {"offsets": {str(k): v for k, v in offsets.items()}})


def run_replay(root: Runtime, sel: Selector, *, name: str | None = None, dry_run: bool = False,
               max_rate: float | None = None, restart: bool = False,
               on_event: Callable[[UploadEvent, int], None] | None = None) -> tuple[str, int]:
    """Send the selected replays with the root's store and producer; returns (replay name,
    events sent in this run)."""
    settings, bootstrap, store = root.settings, root.bootstrap, root.store
    name = name or sel.default_name()
    state = None if restart or dry_run else store.replay_state(name)
    cursor: dict[str, Any] = json.loads(state["cursor_json"]) if state and \
        state["status"] != "done" else {}
    total = int(state["sent"]) if state and state["status"] != "done" else 0
    source = (from_topic(settings, bootstrap, sel, cursor) if sel.from_topic
              else from_store(store, sel, cursor))
    producer = None if dry_run else root.producer
    limiter = RateLimiter(max_rate)
    sent = 0
    last_cursor = cursor
    stop = _GracefulStop()
    for planned in source:
        if stop.requested:
            break
        limiter.wait()
        if producer is not None:
            producer.send(settings.topic("uploads"), planned.event.asset_id,
                          planned.event.to_bytes())
            producer.flush_sync()  # saved progress never runs ahead of what was sent
            store.save_replay(name, sel.as_dict(), planned.cursor, total + sent + 1, "running")
        sent += 1
        last_cursor = planned.cursor
        if on_event:
            on_event(planned.event, sent)
    stop.restore()
    if producer is not None and not stop.requested:
        store.save_replay(name, sel.as_dict(), last_cursor, total + sent, "done")
    if stop.requested:
        raise KeyboardInterrupt(f"replay {name} interrupted after {sent} events; run the same "
                                "command again to resume")
    return name, sent


class _GracefulStop:
    """SIGINT/SIGTERM end the loop between two events, after the progress of the last one was
    saved, so a resumed replay neither repeats nor skips anything."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, _sig: int, _frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
