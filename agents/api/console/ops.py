"""Operations over HTTP (under ``/v1``, so the API key guard checks them): what ``darkroom
status``, ``darkroom dlq`` and ``darkroom replay`` show, for the console's pages and any client.

* ``GET /v1/status?window=60``: the figures of ``darkroom status --json``;
* ``GET /v1/replays``: replays (the store's ``replays`` table), newest first, with their
  progress where it can be known (store-driven replays: assets up to the cursor of those the
  selector names; topic-driven ones: unknown, ``progress: null``);
* ``GET /v1/dead-letters``: the dead-letter topics (one per task, and ``uploads``, ``results``,
  ``webhooks``) with each task's failed count;
* ``GET /v1/dead-letters/{name}?all=false``: the dead letters of ``darkroom.dlq.<name>``
  (``all``: also those already requeued or purged), as ``darkroom dlq list`` shows them;
* ``POST /v1/dead-letters/{name}/requeue`` ``{"refs": ["0:12"]}`` or ``{"all": true}``: send
  them back through their source topic, as ``darkroom dlq requeue`` does (the same function,
  :func:`agents.operations.requeue_letter`);
* ``PUT /v1/faces/clusters/{cluster_id}/name`` ``{"name": "Ana"}``: name a face cluster (an
  empty name removes it; :mod:`sinks.indexes.face_names`).

Reading a topic ends by idleness (two seconds without a message), so the dead-letter routes
take that long at least.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from agents.composition import Runtime
from agents.operations import (
    OPS_TOPICS,
    describe_letter,
    read_dead_letters,
    requeue_letter,
    task_status,
)

MAX_REFS: Final = 1000


class _Problem(BaseModel):
    detail: str


class TaskStatus(BaseModel):
    task: str
    pending: int
    in_flight: int
    done: int
    failed: int
    dead_letters: int
    rate_per_s: float
    committed_requests: int


class StatusOut(BaseModel):
    tasks: list[TaskStatus]
    stalled: list[dict[str, Any]] = Field(description="agents stuck on a message (see /readyz)")


class ReplayProgress(BaseModel):
    done: int
    total: int


class ReplayOut(BaseModel):
    name: str
    status: str = Field(description="running | done")
    sent: int = Field(description="upload events sent so far")
    selector: dict[str, Any]
    cursor: dict[str, Any]
    progress: ReplayProgress | None = Field(
        description="assets passed of those the selector names (null: a topic replay)")
    created_at: int
    updated_at: int


class ReplayPage(BaseModel):
    items: list[ReplayOut]


class DeadLetterTopic(BaseModel):
    name: str
    topic: str
    failed: int | None = Field(description="failed results of the task (null: not a task)")


class DeadLetterTopics(BaseModel):
    items: list[DeadLetterTopic]


class DeadLetterOut(BaseModel):
    ref: str = Field(description="PARTITION:OFFSET")
    partition: int
    offset: int
    asset_id: str | None
    task: str | None
    error: str
    error_kind: str
    attempts: int
    failed_at: Any
    source_topic: str
    source_partition: int
    source_offset: int
    original_kind: str
    original_size: int
    mark: str | None = Field(description="requeued | purged | null")


class DeadLetterPage(BaseModel):
    name: str
    topic: str
    items: list[DeadLetterOut]
    hidden: int = Field(description="requeued or purged ones left out (all=false)")


class RequeueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refs: list[str] = Field(default_factory=list, max_length=MAX_REFS,
                            description="PARTITION:OFFSET of each dead letter")
    all: bool = Field(default=False, description="every one not yet requeued or purged")


class RequeueOut(BaseModel):
    requeued: list[str]
    skipped: list[str] = Field(description="whose original cannot be had (a tombstone, or no "
                               "longer in the log)")
    missing: list[str] = Field(description="refs that name no dead letter of the topic")


class ClusterNameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200, description="empty: remove the name")


class ClusterNameOut(BaseModel):
    cluster_id: int
    name: str | None


def parse_ref(ref: str) -> tuple[int, int]:
    part, _, off = ref.partition(":")
    if not (part.isdigit() and off.isdigit() and len(part) < 10 and len(off) < 20):
        raise HTTPException(400, f"{ref[:40]!r}: expected PARTITION:OFFSET")
    return int(part), int(off)


def dlq_names(root: Runtime) -> list[str]:
    return [*sorted(root.processors), *OPS_TOPICS]


def _topic_of(root: Runtime, name: str) -> str:
    if name not in dlq_names(root):
        raise HTTPException(404, f"no dead-letter topic for {name[:100]!r}")
    return root.settings.topic("dlq", name)


def dead_letters(root: Runtime, name: str, show_all: bool) -> DeadLetterPage:
    """Blocking: the dead letters of ``name`` (404 when the topic does not exist)."""
    from agents.kafka.reading import TopicMissing

    topic = _topic_of(root, name)
    marks = root.store.dlq_marks(topic)
    try:
        letters = read_dead_letters(root.bootstrap, topic)
    except TopicMissing as exc:
        raise HTTPException(404, str(exc)) from exc
    items, hidden = [], 0
    for part, off, dl in letters:
        mark = marks.get((part, off))
        if mark and not show_all:
            hidden += 1
            continue
        items.append(DeadLetterOut.model_validate(describe_letter(part, off, dl, mark)))
    return DeadLetterPage(name=name, topic=topic, items=items, hidden=hidden)


def requeue(root: Runtime, name: str, body: RequeueIn) -> RequeueOut:
    """Blocking: ``darkroom dlq requeue`` for ``body.refs`` (or ``all``)."""
    from agents.kafka.reading import TopicMissing

    if not body.refs and not body.all:
        raise HTTPException(400, "name dead letters (refs) or set all")
    wanted = {parse_ref(r) for r in body.refs}
    topic = _topic_of(root, name)
    marks = root.store.dlq_marks(topic)
    try:
        letters = read_dead_letters(root.bootstrap, topic)
    except TopicMissing as exc:
        raise HTTPException(404, str(exc)) from exc
    out = RequeueOut(requeued=[], skipped=[], missing=[])
    seen = set()
    for part, off, dl in letters:
        seen.add((part, off))
        if (wanted and (part, off) not in wanted) or (body.all and (part, off) in marks):
            continue
        ref = f"{part}:{off}"
        if requeue_letter(root, root.bootstrap, topic, part, off, dl):
            out.requeued.append(ref)
        else:
            out.skipped.append(ref)
    out.missing = [f"{p}:{o}" for p, o in sorted(wanted - seen)]
    return out


def replays(root: Runtime, limit: int) -> ReplayPage:
    """Blocking: the replays, newest first, with their progress."""
    from sinks.store.metadata import replays as table

    engine = root.store.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.updated_at.desc())
                            .limit(limit)).mappings().all()
    items = []
    for row in rows:
        selector = _loads(row["selector_json"])
        cursor = _loads(row["cursor_json"])
        items.append(ReplayOut(
            name=str(row["name"]), status=str(row["status"]), sent=int(row["sent"] or 0),
            selector=selector, cursor=cursor,
            progress=replay_progress(engine, str(row["status"]), int(row["sent"] or 0),
                                     selector, cursor),
            created_at=int(row["created_at"]), updated_at=int(row["updated_at"])))
    return ReplayPage(items=items)


def _loads(text: Any) -> dict[str, Any]:
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def replay_progress(engine: Any, status: str, sent: int, selector: dict[str, Any],
                    cursor: dict[str, Any]) -> ReplayProgress | None:
    """How far a replay is: for one driven by the store (asset-id order), the selected assets
    up to its cursor of all it selects; a finished one is complete; a topic replay's end is not
    known (the embedded broker's end offsets cannot be trusted)."""
    from sinks.store.metadata import assets

    if status == "done":
        return ReplayProgress(done=max(sent, 1), total=max(sent, 1))
    if selector.get("from_ms") is not None or selector.get("to_ms") is not None \
            or selector.get("from_offsets"):
        return None
    q = sa.select(sa.func.count()).select_from(assets)
    ids = [i for i in selector.get("assets") or [] if isinstance(i, str)]
    if ids:
        q = q.where(assets.c.asset_id.in_(ids[:10_000]))
    folder = selector.get("folder")
    if isinstance(folder, str) and folder:
        q = q.where(assets.c.folder.startswith(folder, autoescape=True))
    after = cursor.get("after")
    with engine.connect() as conn:
        total = int(conn.execute(q).scalar_one())
        done = int(conn.execute(q.where(assets.c.asset_id <= after)).scalar_one()) \
            if isinstance(after, str) else 0
    return ReplayProgress(done=min(done, total), total=total)


def make_router(get_root: Callable[[], Runtime], auth: Sequence[Any]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["operations"], dependencies=list(auth))
    Name = Path(min_length=1, max_length=128, description="a task, or uploads/results/webhooks")

    @router.get("/status", response_model=StatusOut)
    async def get_status(window: float = Query(60.0, gt=0, le=86_400,
                                               description="seconds for the rate")) -> StatusOut:
        """Per task: pending, in flight, done, failed, dead letters, rate, committed requests
        (``darkroom status --json``)."""
        found = await asyncio.to_thread(task_status, get_root(), window)
        return StatusOut.model_validate(found)

    @router.get("/replays", response_model=ReplayPage)
    async def get_replays(limit: int = Query(50, ge=1, le=500)) -> ReplayPage:
        """Replays, newest first, with their progress."""
        return await asyncio.to_thread(replays, get_root(), limit)

    @router.get("/dead-letters", response_model=DeadLetterTopics)
    async def list_dead_letter_topics() -> DeadLetterTopics:
        """The dead-letter topics, with each task's failed count."""

        def read() -> DeadLetterTopics:
            root = get_root()
            stats = root.store.task_stats(0)
            return DeadLetterTopics(items=[
                DeadLetterTopic(name=n, topic=root.settings.topic("dlq", n),
                                failed=int(stats.get(n, {}).get("failed", 0))
                                if n in root.processors else None)
                for n in dlq_names(root)])

        return await asyncio.to_thread(read)

    @router.get("/dead-letters/{name}", response_model=DeadLetterPage,
                responses={404: {"model": _Problem}})
    async def list_dead_letters(
        name: str = Name,
        all: bool = Query(False, description="include requeued and purged ones"),
    ) -> DeadLetterPage:
        """The dead letters of ``darkroom.dlq.<name>`` (``darkroom dlq list``)."""
        return await asyncio.to_thread(dead_letters, get_root(), name, all)

    @router.post("/dead-letters/{name}/requeue", response_model=RequeueOut,
                 responses={400: {"model": _Problem}, 404: {"model": _Problem}})
    async def requeue_dead_letters(body: RequeueIn, name: str = Name) -> RequeueOut:
        """Send dead letters back through their source topic (``darkroom dlq requeue``)."""
        return await asyncio.to_thread(requeue, get_root(), name, body)

    @router.put("/faces/clusters/{cluster_id}/name", response_model=ClusterNameOut,
                tags=["faces"], responses={404: {"model": _Problem}})
    async def name_cluster(body: ClusterNameIn,
                           cluster_id: int = Path(ge=0, le=2**63 - 1)) -> ClusterNameOut:
        """Name a face cluster (an empty name removes it)."""
        from sinks.indexes.face_names import set_name
        from sinks.indexes.faces import index_for

        def write() -> str | None:
            engine = get_root().store.engine
            if index_for(engine).cluster(cluster_id, limit=1) is None:
                raise HTTPException(404, f"no face cluster {cluster_id}")
            try:
                return set_name(engine, cluster_id, body.name)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc

        return ClusterNameOut(cluster_id=cluster_id, name=await asyncio.to_thread(write))

    return router
