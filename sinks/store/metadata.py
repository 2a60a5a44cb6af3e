"""The metadata store: the source of truth for asset state.

Kafka is the transport and the replayable log; this database decides what an asset waits for and
what it has become. Every write is an idempotent upsert keyed by (asset, post-process, request):
a duplicated or replayed event finds its result already there and changes nothing.

SQLite (WAL) by default, PostgreSQL when ``DARKROOM_DATABASE_URL`` names it. Only portable SQL is
used (``INSERT .. ON CONFLICT`` exists in both).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sinks.store import moderation
from sinks.store import statements as st

log = logging.getLogger("darkroom.store")

metadata = sa.MetaData()

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("upload_key", sa.String(64), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("folder", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False, default=""),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, default=-1),
    sa.Column("mode", sa.String(10), nullable=False, default="async"),
    sa.Column("notification_url", sa.Text),
    sa.Column("eager_notification_url", sa.Text),
    sa.Column("on_success", sa.Text),
    sa.Column("reply_to", sa.Text),
    sa.Column("properties_json", sa.Text, nullable=False, default="{}"),
    sa.Column("tags_json", sa.Text, nullable=False, default="[]"),
    sa.Column("context_json", sa.Text, nullable=False, default="{}"),
    sa.Column("metadata_json", sa.Text, nullable=False, default="{}"),
    sa.Column("unknown_json", sa.Text, nullable=False, default="[]"),
    sa.Column("asset_notices_json", sa.Text, nullable=False, server_default="[]", default="[]"),
    sa.Column("asset_refusals_json", sa.Text, nullable=False, server_default="[]",
              default="[]"),
    sa.Column("finalized_version", sa.BigInteger),
    sa.Column("requested_json", sa.Text, nullable=False, server_default="[]", default="[]"),
    sa.Column("on_success_json", sa.Text),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("version", sa.BigInteger, nullable=False, default=1),
    sa.Column("uploaded_at", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("completed_at", sa.BigInteger),
    # moderation (sinks.store.moderation): what the upload asked for, the derived status (a
    # column for the queue's index), the reviewers' decisions
    sa.Column("moderation_kind", sa.Text),
    sa.Column("moderation_status", sa.String(16)),
    sa.Column("moderation_json", sa.Text, nullable=False, server_default="[]", default="[]"),
    sa.Index("ix_assets_moderation", "moderation_status", "created_at"),
)

asset_tasks = sa.Table(
    "asset_tasks",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("postprocess", sa.String(200), primary_key=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("mode", sa.String(10), nullable=False, default="async"),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("data_json", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_kind", sa.String(32)),
    sa.Column("verdicts_json", sa.Text, nullable=False, default="[]"),
    sa.Column("result_hash", sa.String(64)),
    sa.Column("processor_version", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("dispatches", sa.Integer, nullable=False, default=1),
    sa.Column("duration_ms", sa.Float),
    sa.Column("progress", sa.Float),
    sa.Column("requested_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    # when a task agent started the request (None: still queued): only started requests that
    # went quiet are ever re-dispatched, so a backlog of any size is never re-sent
    sa.Column("started_at", sa.BigInteger),
    # the request's parameters as dispatched: a re-dispatch sends these, never today's config
    sa.Column("params_json", sa.Text),
    # a row a replay added to a finished asset stays out of its state until its result lands
    # (so a replay that adds one result moves the version once)
    sa.Column("visible", sa.Boolean, nullable=False, server_default="1", default=True),
    sa.Column("gave_up_at", sa.BigInteger),
    sa.Index("ix_asset_tasks_status", "status", "requested_at"),
)

# Every AssetUpdate is written here in the transaction that makes the change and deleted once
# the broker acknowledged it: a worker killed in between leaves it for the sweeper to send.
update_outbox = sa.Table(
    "update_outbox",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reply_to", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Small named facts about the deployment (e.g. the broker epoch the sweeper last saw).
cluster_state = sa.Table(
    "cluster_state",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Cluster-wide jobs (the sweeper) run where the lease is held: one holder, renewed, expiring.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", sa.String(64), primary_key=True),
    sa.Column("asset_id", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # queued|retrying|delivered|refused|dead
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("http_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("delivered_at", sa.BigInteger),
)

replays = sa.Table(
    "replays",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("selector_json", sa.Text, nullable=False),
    sa.Column("cursor_json", sa.Text, nullable=False, default="{}"),
    sa.Column("sent", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False),  # running|done
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

dlq_marks = sa.Table(
    "dlq_marks",
    metadata,
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # requeued|purged
    sa.Column("at", sa.BigInteger, nullable=False),
)

stalls = sa.Table(
    "stalls",
    metadata,
    sa.Column("worker", sa.String(200), primary_key=True),
    sa.Column("lane", sa.String(200), primary_key=True),
    sa.Column("agent", sa.String(200), nullable=False),
    sa.Column("topic", sa.String(255)),
    sa.Column("partition", sa.Integer),
    sa.Column("offset", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("since", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# A deleted asset leaves only this (see sinks.store.lifecycle): the id, the upload it was and
# when, so a late or replayed event of that upload never brings it back, and a replayed delete
# finds it done. No content of the asset stays.
deleted_assets = sa.Table(
    "deleted_assets",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("upload_key", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("command_id", sa.String(200), nullable=False),
    sa.Column("deleted_at", sa.BigInteger, nullable=False),
)

# Commands already applied (patch, reprocess): a replayed command changes nothing.
applied_commands = sa.Table(
    "applied_commands",
    metadata,
    sa.Column("command_id", sa.String(200), primary_key=True),
    sa.Column("asset_id", sa.String(200), nullable=False, index=True),
    sa.Column("command", sa.String(32), nullable=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

# Every task a router has sent a request for, ever: the workers consume the task and result
# topics of these (and of the tasks the definitions name) only, not of every registered task
# (see agents.streams.subscriptions). Rows are only added.
task_usage = sa.Table(
    "task_usage",
    metadata,
    sa.Column("task", sa.String(200), primary_key=True),
    sa.Column("first_used_at", sa.BigInteger, nullable=False),
)

TERMINAL = ("ok", "error", "skipped")
FINAL_STATUSES = ("complete", "partial", "failed", "refused")

# A database row as a mapping (SQLAlchemy RowMapping or a plain dict built from one).
Row = Mapping[Any, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(value: Any) -> str:
    if not value:  # most columns hold an empty list or object: no encoder for those
        if type(value) in (list, tuple):
            return "[]"
        if type(value) is dict:
            return "{}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(raw: str | bytes) -> Any:
    """``json.loads`` with the empty list and object (most of an asset's columns, read on
    every state change) answered without the decoder; each call returns a fresh value."""
    if raw == "[]":
        return []
    if raw == "{}":
        return {}
    return json.loads(raw)


@dataclass
class PlannedTask:
    """A post-process the router decided to run for an upload."""

    postprocess: str
    task: str
    request_id: str
    mode: str
    params_json: str = "{}"
    # a dependent (``after:``): recorded as "waiting" (pending for the asset), dispatched by the
    # sink once its upstream's result decides (agents.policy.workflow)
    waiting: bool = False


@dataclass
class UploadRecord:
    asset_id: str
    upload_key: str
    uri: str
    filename: str
    folder: str
    content_type: str
    size_bytes: int
    mode: str
    notification_url: str | None
    on_success: str | None
    properties: Mapping[str, Any]
    tags: Sequence[str]
    context: Mapping[str, str]
    uploaded_at: int
    tasks: Sequence[PlannedTask]
    unknown: Sequence[str] = ()
    replay: bool = False
    reply_to: str | None = None
    requested: Sequence[str] = ()
    notices: Sequence[str] = ()  # asset-level notices known at upload (e.g. unknown names)
    moderation: str | None = None  # 'manual' or a post-process name (sinks.store.moderation)
    eager_notification_url: str | None = None


@dataclass
class ResultRecord:
    asset_id: str
    postprocess: str
    task: str
    request_id: str
    status: str
    data: Mapping[str, Any] | None
    error: str | None
    error_kind: str | None
    verdicts: Sequence[Mapping[str, Any]]
    processor_version: str
    attempts: int
    duration_ms: float
    finished_at: int


@dataclass
class Asset:
    asset_id: str
    status: str
    version: int
    uri: str
    filename: str
    folder: str
    content_type: str
    size_bytes: int
    mode: str
    notification_url: str | None
    on_success: str | None
    properties: dict[str, Any]
    tags: list[str]
    context: dict[str, str]
    metadata: dict[str, Any]
    results: dict[str, dict[str, Any]]
    notices: list[str]
    refusals: list[str]
    unknown_postprocesses: list[str]
    reply_to: str | None
    finalized_version: int | None
    requested: list[str]
    uploaded_at: int
    created_at: int
    updated_at: int
    completed_at: int | None
    info: dict[str, Any] = field(default_factory=dict)
    on_success_result: dict[str, Any] | None = None
    #: the ``moderation`` object of the asset JSON (None: not moderated)
    moderation: dict[str, Any] | None = None
    #: the AssetUpdate of this version as the outbox holds it (set by the writing call)
    encoded: bytes | None = None
    eager_notification_url: str | None = None

    @property
    def final(self) -> bool:
        """Every task ended (or the asset was refused)."""
        return self.status in FINAL_STATUSES

    @property
    def moderation_status(self) -> str | None:
        return None if self.moderation is None else str(self.moderation["status"])

    def to_json(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "status": self.status,
            "version": self.version,
            "uri": self.uri,
            "filename": self.filename,
            "folder": self.folder,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "mode": self.mode,
            "info": self.info,
            "tags": self.tags,
            "context": self.context,
            "metadata": self.metadata,
            "results": self.results,
            "notices": self.notices,
            "refusals": self.refusals,
            "unknown_postprocesses": self.unknown_postprocesses,
            "on_success": self.on_success_result,
            "moderation": self.moderation,
            "uploaded_at": self.uploaded_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
        }


def _visible(row: Row) -> bool:
    """A row is part of its asset's state unless a replay added it and no result came yet."""
    return bool(row.get("visible", True) if hasattr(row, "get") else True)


def derive_status(task_rows: Iterable[Row], asset_refused: bool = False) -> str:
    """refused as soon as a validation rule (or the API) refused: that is final; else pending
    while any task waits; else by outcomes."""
    rows = [r for r in task_rows if _visible(r)]
    if asset_refused or any(
        v.get("action") == "refuse" for r in rows for v in _loads(r["verdicts_json"])
    ):
        return "refused"
    if any(r["status"] not in TERMINAL for r in rows):
        return "pending"
    # a dependent its condition skipped (agents.policy.workflow) is neither a success nor a
    # failure: it was not meant to run
    rows = [r for r in rows if not (r["status"] == "skipped"
                                    and r.get("error_kind") == "condition")]
    oks = sum(1 for r in rows if r["status"] == "ok")
    if oks == len(rows):
        return "complete"
    return "failed" if oks == 0 else "partial"


InfoExtractor = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""The info keys one task's ``ok`` result data contributes to its asset's ``info`` (as Filerobot
adds a placeholder hash to file info): what the task declares with ``info=`` at registration
(:meth:`processors.registry.Processor.info_of`)."""


def registered_info() -> dict[str, InfoExtractor]:
    """The info extractors of every registered task that declares info keys."""
    from processors.registry import load_all

    return {name: proc.info_of for name, proc in load_all().items() if proc.info}


class MetadataStore:
    """Thread-safe facade over the database; agents call it from a worker thread.

    ``info`` maps task names to the info their results contribute to an asset (the composition
    root passes the registered tasks' declarations); ``None``: :func:`registered_info`, loaded
    when an asset is first read.
    """

    def __init__(self, url: str, info: Mapping[str, InfoExtractor] | None = None,
                 encode_update: Callable[[Asset], bytes] | None = None) -> None:
        self.url = url
        self._info: Mapping[str, InfoExtractor] | None = info
        self._marked_used: set[str] = set()  # tasks this process recorded in task_usage
        #: builds the AssetUpdate of a new version; with it, every version change writes its
        #: update to the outbox in the same transaction (see ``update_outbox``)
        self.encode_update = encode_update
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"timeout": 30, "check_same_thread": False}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4)
        _create_schema(self.engine)

    # ------------------------------------------------------------------ helpers
    def _begin(self) -> Any:
        return self.engine.begin()

    @property
    def info(self) -> Mapping[str, InfoExtractor]:
        """Task name -> the info its results contribute (see the class docstring)."""
        if self._info is None:
            self._info = registered_info()
        return self._info

    def _to_asset(self, arow: Row, task_rows: Sequence[Row]) -> Asset:
        return _to_asset(arow, task_rows, self.info)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ router side
    def register_uploads(self, uploads: Sequence[UploadRecord]) -> list[list[PlannedTask]]:
        """:meth:`register_uploads_and_updates` without the new asset states."""
        return self.register_uploads_and_updates(uploads)[0]

    def register_uploads_and_updates(self, uploads: Sequence[UploadRecord]
                                     ) -> tuple[list[list[PlannedTask]], list[Asset]]:
        """Record uploads and the tasks they wait for; return, per upload, the tasks to dispatch,
        and the new state of every asset whose version moved (its update is in the outbox).

        A duplicate of an already registered upload (same upload_key) dispatches only tasks that
        have no result yet; a *new* upload of the same asset id (different key) or a replay resets
        its tasks. The whole batch is one transaction with bulk statements (the router calls this
        once per batch of events).
        """
        out: list[list[PlannedTask]] = []
        ts = now_ms()
        new_assets: dict[str, dict[str, Any]] = {}
        reset_assets: dict[str, dict[str, Any]] = {}
        task_rows: dict[str, dict[str, dict[str, Any]]] = {}  # asset -> post-process -> row
        with self._begin() as conn:
            ids = list(dict.fromkeys(u.asset_id for u in uploads))
            existing = _fetch_assets(conn, ids)
            existing_tasks = _fetch_tasks(conn, [i for i in ids if i in existing])
            from sinks.store.lifecycle import deleted_uploads

            dead = deleted_uploads(conn, ids)
            for up in uploads:
                if up.asset_id in dead and dead[up.asset_id].covers(up.upload_key,
                                                                    up.uploaded_at):
                    log.info("upload event of deleted asset %s dropped", up.asset_id)
                    out.append([])
                    continue
                old = existing.get(up.asset_id)
                pending_new = new_assets.get(up.asset_id) or reset_assets.get(up.asset_id)
                same_upload = (
                    (old is not None and old["upload_key"] == up.upload_key)
                    or (pending_new is not None and pending_new["upload_key"] == up.upload_key)
                )
                old_tasks: dict[str, Row] = {}
                if same_upload:
                    old_tasks = {r["postprocess"]: r for r in existing_tasks.get(up.asset_id, [])}
                    old_tasks.update(task_rows.get(up.asset_id, {}))
                dispatch: list[PlannedTask] = []
                for t in up.tasks:
                    prev = old_tasks.get(t.postprocess)
                    if prev is not None and prev["request_id"] == t.request_id:
                        # a duplicate waits for the same result; a replay runs it again and
                        # keeps the old result until a different one arrives
                        if prev["status"] not in TERMINAL or up.replay:
                            dispatch.append(t)
                        continue
                    # a row added to a finished asset (a replay of a task it never ran) stays
                    # out of its state until the result lands: one version for one result
                    hidden = same_upload and old is not None and old["status"] in FINAL_STATUSES
                    task_rows.setdefault(up.asset_id, {})[t.postprocess] = {
                        "asset_id": up.asset_id, "postprocess": t.postprocess, "task": t.task,
                        "request_id": t.request_id, "mode": t.mode,
                        "status": "waiting" if t.waiting else "pending",
                        "verdicts_json": "[]", "attempts": 0, "dispatches": 1,
                        "requested_at": ts, "params_json": t.params_json,
                        "visible": not hidden,
                    }
                    dispatch.append(t)
                out.append(dispatch)
                if same_upload:
                    continue
                # a new asset, a re-upload or a replay: (re)write the asset row
                planned = {t.postprocess for t in up.tasks}
                rows_of = task_rows.get(up.asset_id, {})
                for pp_name in [k for k in rows_of if k not in planned]:
                    del rows_of[pp_name]
                status = "pending" if up.tasks else "complete"
                if old is None and up.asset_id not in reset_assets:
                    # a new upload of a deleted id goes on from the deletion's version
                    first = dead[up.asset_id].version + 1 if up.asset_id in dead else 1
                    new_assets[up.asset_id] = _asset_row(up, status, ts, version=first)
                else:
                    base = old if old is not None else reset_assets[up.asset_id]
                    row = _asset_row(up, status, ts, version=int(base["version"]) + 1)
                    row["created_at"] = base["created_at"]
                    if base["upload_key"] == "":
                        # the API's placeholder: a decision already applied to it (a refusal
                        # after a sync timeout may overtake the upload event) stays
                        for col in ("asset_refusals_json", "asset_notices_json"):
                            kept = _loads(base[col] or "[]")
                            row[col] = _dumps([*kept, *(n for n in _loads(row[col])
                                                        if n not in kept)])
                        if kept_refused := _loads(base["asset_refusals_json"] or "[]"):
                            row["status"] = "refused" if kept_refused else row["status"]
                    reset_assets[up.asset_id] = row
            for chunk in _chunks(list(reset_assets), 500):
                conn.execute(sa.delete(asset_tasks).where(asset_tasks.c.asset_id.in_(chunk)))
            all_rows = [row for rows in task_rows.values() for row in rows.values()]
            if all_rows:
                # rows replacing an existing (asset, post-process) of a same-upload duplicate
                # whose request changed (e.g. new parameters) are deleted first
                for aid, rows in task_rows.items():
                    if aid in existing and aid not in reset_assets:
                        for pp_name in rows:
                            conn.execute(sa.delete(asset_tasks).where(
                                asset_tasks.c.asset_id == aid,
                                asset_tasks.c.postprocess == pp_name))
                st.insert_many(conn, asset_tasks, all_rows)
            if new_assets:
                st.insert_many(conn, assets, list(new_assets.values()))
            for aid, row in reset_assets.items():
                if aid in existing:
                    st.update(conn, assets, {"asset_id": aid}, row)
                else:
                    conn.execute(sa.insert(assets), [row])
            changed = [self._to_asset(row, list(task_rows.get(aid, {}).values()))
                       for aid, row in (*new_assets.items(), *reset_assets.items())]
            self._to_outbox(conn, changed)
        return out, changed

    # ------------------------------------------------------------------ completion (outbox)
    def finalize(self, asset_id: str, expected_version: int, updates: Mapping[str, Any] | None,
                 on_success_record: Mapping[str, Any] | None,
                 plan_deliveries: Callable[[Asset], list[dict[str, Any]]],
                 uri: str | None = None, skip_pending: bool = False,
                 ) -> tuple[Asset, list[dict[str, Any]]] | None:
        """Apply on-success updates and record the webhook deliveries of a finished asset, once.

        One transaction: if the asset is still at ``expected_version`` and not finalized, the
        tags/context/metadata in ``updates`` replace the current ones, the version grows, and
        the deliveries ``plan_deliveries(new_state)`` returns are inserted (their ids are
        idempotency keys: inserting one twice is a no-op). Returns the new state and the
        deliveries to enqueue, or None when another run finalized it first (or it changed).
        """
        with self._begin() as conn:
            arow = st.first(conn, assets, for_update=True, asset_id=asset_id)
            if (arow is None or arow["finalized_version"] is not None
                    or int(arow["version"]) != expected_version):
                return None
            values: dict[str, Any] = {}
            for key, col in (("tags", "tags_json"), ("context", "context_json"),
                             ("metadata", "metadata_json")):
                if updates and key in updates and _dumps(updates[key]) != arow[col]:
                    values[col] = _dumps(updates[key])
            if on_success_record is not None:
                record = _dumps(dict(on_success_record))
                if record != arow["on_success_json"]:
                    values["on_success_json"] = record
            if uri is not None and uri != arow["uri"]:
                values["uri"] = uri  # where a refused asset's object lies now ("" = deleted)
            skipped = 0
            if skip_pending:
                # a refusal closes what still waits: those results will never come
                skipped = conn.execute(sa.update(asset_tasks).where(
                    asset_tasks.c.asset_id == asset_id,
                    asset_tasks.c.status.in_(("pending", "waiting", "deferred")),
                ).values(status="skipped", error="the asset was refused",
                         finished_at=now_ms())).rowcount
            if values or skipped:
                if not values:
                    values["updated_at"] = now_ms()
                # the on_success outcome and its updates are observable: one version more
                st.update(conn, assets, {"asset_id": asset_id}, values)
                refreshed = self._refresh(conn, asset_id)
                assert refreshed is not None
                asset = refreshed
            else:
                # nothing observable changed: the final state already went out at this version
                task_rows = st.rows(conn, asset_tasks, asset_id=asset_id)
                asset = self._to_asset(arow, task_rows)
            st.update(conn, assets, {"asset_id": asset_id},
                      {"finalized_version": asset.version})
            asset.finalized_version = asset.version
            return asset, _insert_deliveries(conn, asset, plan_deliveries(asset))

    def add_delivery(self, d: Mapping[str, Any], asset_id: str, version: int) -> bool:
        """Queue one webhook delivery outside completion (an action task's webhook); its id is
        the idempotency key: False when it is queued already."""
        ts = now_ms()
        with self._begin() as conn:
            if conn.execute(sa.select(deliveries.c.delivery_id).where(
                    deliveries.c.delivery_id == d["delivery_id"])).first():
                return False
            conn.execute(sa.insert(deliveries).values(
                delivery_id=d["delivery_id"], asset_id=asset_id, version=version,
                event=d["event"], url=d["url"], payload=d["payload"], state="queued",
                attempts=0, created_at=ts, updated_at=ts))
        return True

    def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(deliveries).where(
                deliveries.c.delivery_id == delivery_id)).mappings().first()
        return dict(row) if row else None

    def deliveries_of(self, asset_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries).where(deliveries.c.asset_id == asset_id)
                                .order_by(deliveries.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

    def mark_delivery(self, delivery_id: str, state: str, attempts: int,
                      http_status: int | None = None, error: str | None = None) -> bool:
        """Record an attempt's outcome. A delivered one never goes back (returns False then)."""
        ts = now_ms()
        values: dict[str, Any] = {"state": state, "attempts": attempts, "updated_at": ts,
                                  "http_status": http_status, "last_error": error}
        if state == "delivered":
            values["delivered_at"] = ts
        with self._begin() as conn:
            res = conn.execute(sa.update(deliveries).where(
                deliveries.c.delivery_id == delivery_id,
                deliveries.c.state != "delivered").values(values))
            return bool(res.rowcount)

    def stale_deliveries(self, older_than_ms: int, limit: int = 500) -> list[dict[str, Any]]:
        """Queued deliveries with no attempt yet: their Kafka message may have been lost."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries).where(
                deliveries.c.state == "queued", deliveries.c.attempts == 0,
                deliveries.c.updated_at < older_than_ms).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def touch_delivery(self, delivery_id: str) -> None:
        with self._begin() as conn:
            conn.execute(sa.update(deliveries).where(deliveries.c.delivery_id == delivery_id)
                         .values(updated_at=now_ms()))

    def set_progress(self, asset_id: str, postprocess: str, request_id: str,
                     percent: float) -> None:
        """A running task's progress (0..100), shown on the asset until its result arrives."""
        with self._begin() as conn:
            conn.execute(sa.update(asset_tasks).where(
                asset_tasks.c.asset_id == asset_id, asset_tasks.c.postprocess == postprocess,
                asset_tasks.c.request_id == request_id, asset_tasks.c.status == "pending",
            ).values(progress=round(max(0.0, min(100.0, percent)), 1),
                     started_at=sa.func.coalesce(asset_tasks.c.started_at, now_ms())))

    def start_task(self, asset_id: str, postprocess: str, request_id: str) -> str | None:
        """Before a task runs: mark its request started (progress 0, ``started_at`` kept from
        a first start) unless the asset was refused, in one statement; returns "refused" for a
        refused asset (nothing is marked, the task must not run), else the asset's status
        ("pending" when the mark was made; None for an unknown asset)."""
        return self.start_tasks([(asset_id, postprocess, request_id)])[0]

    def start_tasks(self, requests: Sequence[tuple[str, str, str]]) -> list[str | None]:
        """:meth:`start_task` for each ``(asset, post-process, request id)``, in one
        transaction (the task agents combine the marks made at the same moment)."""
        out: list[str | None] = []
        ts = now_ms()
        with self._begin() as conn:
            for asset_id, postprocess, request_id in requests:
                marked = conn.execute(_start_mark(), {"a": asset_id, "p": postprocess,
                                                      "r": request_id, "now": ts}).rowcount
                if marked:
                    out.append("pending")
                    continue
                # not marked: a refused asset, a request already answered, or one the store
                # lacks
                row = st.first(conn, assets, asset_id=asset_id)
                out.append(None if row is None else str(row["status"]))
        return out

    # ------------------------------------------------------------------ replays
    def replay_state(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(replays).where(replays.c.name == name)).mappings().first()
        return dict(row) if row else None

    def save_replay(self, name: str, selector: Mapping[str, Any], cursor: Mapping[str, Any],
                    sent: int, status: str) -> None:
        ts = now_ms()
        values = {"selector_json": _dumps(dict(selector)), "cursor_json": _dumps(dict(cursor)),
                  "sent": sent, "status": status, "updated_at": ts}
        with self._begin() as conn:
            res = conn.execute(sa.update(replays).where(replays.c.name == name).values(values))
            if not res.rowcount:
                conn.execute(sa.insert(replays).values(name=name, created_at=ts, **values))

    def replay_candidates(self, *, asset_ids: Sequence[str] = (), folder: str | None = None,
                          missing: str | None = None, after: str | None = None,
                          limit: int = 500) -> list[Asset]:
        """Assets to replay, in asset-id order after the cursor ``after``. ``missing``: only
        assets that never got a result row for that post-process or task ("never processed",
        unlike "processed and found nothing")."""
        q = sa.select(assets.c.asset_id).order_by(assets.c.asset_id).limit(limit)
        if asset_ids:
            q = q.where(assets.c.asset_id.in_(list(asset_ids)))
        if folder:
            q = q.where(assets.c.folder.startswith(folder, autoescape=True))
        if after:
            q = q.where(assets.c.asset_id > after)
        if missing:
            has = sa.select(asset_tasks.c.asset_id).where(
                asset_tasks.c.asset_id == assets.c.asset_id,
                sa.or_(asset_tasks.c.postprocess == missing, asset_tasks.c.task == missing))
            q = q.where(~sa.exists(has), assets.c.upload_key != "", assets.c.uri != "")
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(q)]
        found = self.get_assets(ids)
        return [found[i] for i in ids if i in found]

    def dlq_marks(self, topic: str) -> dict[tuple[int, int], str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dlq_marks).where(dlq_marks.c.topic == topic)).all()
        return {(int(r.partition), int(r.offset)): str(r.state) for r in rows}

    def mark_dead_letter(self, topic: str, partition: int, offset: int, state: str) -> None:
        with self._begin() as conn:
            conn.execute(sa.delete(dlq_marks).where(
                dlq_marks.c.topic == topic, dlq_marks.c.partition == partition,
                dlq_marks.c.offset == offset))
            conn.execute(sa.insert(dlq_marks).values(topic=topic, partition=partition,
                                                     offset=offset, state=state, at=now_ms()))

    def task_stats(self, since_ms: int) -> dict[str, dict[str, Any]]:
        """Per task: pending (not started), in_flight, done, failed, and recent completions."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(asset_tasks.c.task, asset_tasks.c.status,
                          (asset_tasks.c.progress.is_not(None)).label("started"),
                          sa.func.count().label("n"),
                          sa.func.sum(sa.case((asset_tasks.c.finished_at >= since_ms, 1),
                                              else_=0)).label("recent"))
                .group_by(asset_tasks.c.task, asset_tasks.c.status, "started")
            ).all()
        for r in rows:
            s = out.setdefault(r.task, {"pending": 0, "in_flight": 0, "done": 0, "failed": 0,
                                        "recent": 0})
            if r.status == "pending":
                s["in_flight" if r.started else "pending"] += int(r.n)
            else:
                s["done" if r.status == "ok" else "failed"] += int(r.n)
            s["recent"] += int(r.recent or 0)
        return out

    # ------------------------------------------------------------------ agent health
    def record_stall(self, worker: str, stall: Mapping[str, Any]) -> None:
        """A worker's agent is stuck on a message (best effort: `darkroom status` shows it)."""
        ts = now_ms()
        values = {"agent": stall["agent"], "topic": stall.get("topic"),
                  "partition": stall.get("partition"), "offset": stall.get("offset"),
                  "attempts": int(stall.get("attempts") or 0),
                  "error": str(stall.get("error") or "")[:1000], "updated_at": ts}
        with self._begin() as conn:
            res = conn.execute(sa.update(stalls).where(
                stalls.c.worker == worker, stalls.c.lane == stall["lane"]).values(values))
            if not res.rowcount:
                since = ts - int(float(stall.get("stuck_for_s") or 0) * 1000)
                conn.execute(sa.insert(stalls).values(worker=worker, lane=stall["lane"],
                                                      since=since, **values))

    def clear_stall(self, worker: str, lane: str) -> None:
        with self._begin() as conn:
            conn.execute(sa.delete(stalls).where(stalls.c.worker == worker,
                                                 stalls.c.lane == lane))

    def stalls(self, since_ms: int = 0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(stalls).where(stalls.c.updated_at >= since_ms)
                                .order_by(stalls.c.since)).mappings().all()
        return [dict(r) for r in rows]

    def upload_key_of(self, asset_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(assets.c.upload_key)
                               .where(assets.c.asset_id == asset_id)).first()
        return None if row is None or not row[0] else str(row[0])

    def asset_status(self, asset_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(assets.c.status)
                               .where(assets.c.asset_id == asset_id)).first()
        return None if row is None else str(row[0])

    def create_placeholder(self, up: UploadRecord) -> None:
        """The API records an accepted upload before publishing it, so ``GET`` works at once.
        Its empty upload_key makes the router's registration of the real event a full write."""
        row = _asset_row(up, "pending", now_ms(), version=0)
        row["upload_key"] = ""
        with self._begin() as conn:
            if not conn.execute(sa.select(assets.c.asset_id)
                                .where(assets.c.asset_id == up.asset_id)).first():
                st.insert_many(conn, assets, [row])

    def unrouted_placeholders(self, created_before_ms: int, limit: int = 500) -> list[Asset]:
        """Assets the API recorded (placeholder: no upload key yet) that no router registered."""
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(
                sa.select(assets.c.asset_id).where(assets.c.upload_key == "",
                                                   assets.c.status == "pending",
                                                   assets.c.created_at < created_before_ms)
                .limit(limit))]
        found = self.get_assets(ids)
        return [found[i] for i in ids if i in found]

    def delete_asset(self, asset_id: str) -> None:
        with self._begin() as conn:
            conn.execute(sa.delete(asset_tasks).where(asset_tasks.c.asset_id == asset_id))
            conn.execute(sa.delete(assets).where(assets.c.asset_id == asset_id))

    def pending_tasks(self, started_before_ms: int, limit: int = 500,
                      queued_before_ms: int | None = None) -> list[dict[str, Any]]:
        """Requests a task agent *started* before ``started_before_ms`` and never answered (its
        worker died or the message was lost): the sweeper's to re-dispatch. Queued requests are
        never among them — a backlog of any size is only waiting — unless ``queued_before_ms``
        is given (after the broker lost its log, see the sweeper)."""
        started = sa.and_(asset_tasks.c.started_at.is_not(None),
                          asset_tasks.c.started_at < started_before_ms)
        # (after a lost log, what was sent or started before it began is gone with it)
        cond = started if queued_before_ms is None else sa.or_(
            started, asset_tasks.c.started_at < queued_before_ms, sa.and_(
                asset_tasks.c.started_at.is_(None),
                asset_tasks.c.requested_at < queued_before_ms))
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(asset_tasks, assets.c.uri, assets.c.filename, assets.c.folder,
                          assets.c.content_type, assets.c.size_bytes, assets.c.properties_json)
                .join(assets, assets.c.asset_id == asset_tasks.c.asset_id)
                .where(asset_tasks.c.status == "pending", asset_tasks.c.gave_up_at.is_(None),
                       cond, assets.c.status != "refused")
                .limit(limit)
            ).mappings().all()
        return [dict(r) for r in rows]

    def mark_redispatched(self, asset_id: str, postprocess: str, request_id: str) -> None:
        """Sent again: queued again until a task agent starts it."""
        with self._begin() as conn:
            conn.execute(
                sa.update(asset_tasks)
                .where(asset_tasks.c.asset_id == asset_id,
                       asset_tasks.c.postprocess == postprocess,
                       asset_tasks.c.request_id == request_id)
                .values(dispatches=asset_tasks.c.dispatches + 1, requested_at=now_ms(),
                        started_at=None)
            )

    def mark_gave_up(self, asset_id: str, postprocess: str, request_id: str) -> bool:
        """Record the sweeper's give-up once; False when it was already recorded."""
        with self._begin() as conn:
            return bool(conn.execute(
                sa.update(asset_tasks)
                .where(asset_tasks.c.asset_id == asset_id,
                       asset_tasks.c.postprocess == postprocess,
                       asset_tasks.c.request_id == request_id,
                       asset_tasks.c.gave_up_at.is_(None))
                .values(gave_up_at=now_ms())
            ).rowcount)

    # ------------------------------------------------------------------ sink side
    def merge_result(self, res: ResultRecord, add_tags: Sequence[str] = ()) -> Asset | None:
        """Merge one task result. Returns the new asset state if anything changed, else None.

        Stale results (another request id: an older upload of the asset) and duplicates (same
        content hash) change nothing, so replays never double anything. ``add_tags`` (what the
        task's declared ``tags`` make of an ``ok`` result) are merged after the asset's own tags,
        each once, in the same transaction.
        """
        return self.merge_results(res.asset_id, [(res, add_tags)])[0]

    def merge_results(self, asset_id: str,
                      results: Sequence[tuple[ResultRecord, Sequence[str]]]
                      ) -> tuple[Asset | None, list[bool]]:
        """Merge several results of one asset (each as :meth:`merge_result`, in order) in one
        transaction: one new version for all the changes they make (one observable change),
        or None when none changed anything; and, per result, whether it was merged."""
        asset, merged, _ = self.merge_and_complete(asset_id, results, None)
        return asset, merged

    def merge_and_complete(self, asset_id: str,
                           results: Sequence[tuple[ResultRecord, Sequence[str]]],
                           complete: Callable[[Asset], list[dict[str, Any]] | None] | None,
                           ) -> tuple[Asset | None, list[bool], list[dict[str, Any]] | None]:
        """:meth:`merge_results`, and where the merge makes the asset final and ``complete``
        (called with the new state, finalized at its version) returns the webhook deliveries
        to plan instead of None, its completion in the same transaction: the mark
        :meth:`finalize` would set and those deliveries (returned third: the ones not
        recorded before; None when the completion was left to :meth:`finalize`). The sink
        passes ``complete`` only when nothing runs between a merge and its completion (no
        hook, effect or dependent, no on-success step): one transaction per asset instead of
        two, and the finished state and its mark commit together."""
        merged = [False] * len(results)
        with self._begin() as conn:
            # the asset (locked first, as finalize does), its tasks; then one update per merged
            # task, the asset's update, the outbox row
            arow = st.first(conn, assets, for_update=True, asset_id=asset_id)
            if arow is None:
                return None, merged, None
            task_rows: list[Any] = list(st.rows(conn, asset_tasks, asset_id=asset_id))
            values: dict[str, Any] = {}
            for i, (res, add_tags) in enumerate(results):
                if res.asset_id != asset_id:
                    raise ValueError(f"a result of {res.asset_id!r} among {asset_id!r}'s")
                task_values = _merged_task(task_rows, res)
                if task_values is None:
                    continue
                merged[i] = True
                st.update(conn, asset_tasks,
                          {"asset_id": asset_id, "postprocess": res.postprocess}, task_values)
                # a result that changes a finished asset (a replay that found something new)
                # calls for a new notification: clear the completion mark
                values["finalized_version"] = None
                if add_tags and res.status == "ok":
                    # tags a task adds: merged after the upload's own tags, once
                    current = _loads(values.get("tags_json") or arow["tags_json"] or "[]")
                    tags = list(dict.fromkeys([*current, *(str(t) for t in add_tags)]))
                    values["tags_json"] = _dumps(tags)
                task_rows = [{**r, **task_values} if r["postprocess"] == res.postprocess else r
                             for r in task_rows]
            if not values:
                return None, merged, None
            asset = self._new_version(conn, {**arow, **values}, task_rows, values)
            if complete is None or not asset.final:
                return asset, merged, None
            asset.finalized_version = asset.version
            planned = complete(asset)
            if planned is None:
                asset.finalized_version = None  # completion runs on its own (finalize)
                return asset, merged, None
            st.update(conn, assets, {"asset_id": asset_id}, {"finalized_version": asset.version})
            return asset, merged, _insert_deliveries(conn, asset, planned)

    def decide_dependents(self, asset_id: str, upstream: str, upstream_request_id: str,
                          decisions: Sequence[tuple[str, bool, str, bool]],
                          ) -> tuple[Asset | None, list[dict[str, Any]]]:
        """Apply the decisions ``(post-process, run, reason, defer)`` on the dependents of
        ``upstream`` once its result (request ``upstream_request_id``) is merged: a ``waiting``
        row (or one a condition skipped before: a replay) becomes ``pending`` to run — or
        ``deferred`` with ``defer`` (a task that moves or deletes the original waits until no
        other request of the asset is pending: :meth:`release_deferred`) —, a ``waiting`` one
        becomes ``skipped`` with the reason (error kind ``condition``). Nothing happens for a
        stale upstream request, a refused asset, or a dependent that ran. Returns the new state
        if it changed, and the rows to dispatch (pending, not started: again on a duplicate, so
        a send lost after the commit is made good)."""
        names = [d[0] for d in decisions]
        if not names:
            return None, []
        ts = now_ms()
        with self._begin() as conn:
            arow = conn.execute(sa.select(assets.c.status).where(
                assets.c.asset_id == asset_id)).first()
            up = conn.execute(sa.select(asset_tasks.c.request_id, asset_tasks.c.status).where(
                asset_tasks.c.asset_id == asset_id, asset_tasks.c.postprocess == upstream)).first()
            if (arow is None or arow[0] == "refused" or up is None
                    or up[0] != upstream_request_id or up[1] not in TERMINAL):
                return None, []
            rows = {r["postprocess"]: r for r in conn.execute(sa.select(asset_tasks).where(
                asset_tasks.c.asset_id == asset_id,
                asset_tasks.c.postprocess.in_(names))).mappings().all()}
            changed = False
            for name, run, reason, defer in decisions:
                row = rows.get(name)
                if row is None:
                    continue
                redo = row["status"] == "skipped" and row["error_kind"] == "condition"
                where = sa.update(asset_tasks).where(asset_tasks.c.asset_id == asset_id,
                                                     asset_tasks.c.postprocess == name)
                if run and (row["status"] == "waiting" or redo):
                    conn.execute(where.values(status="deferred" if defer else "pending",
                                              visible=True, error=None, error_kind=None,
                                              result_hash=None, requested_at=ts,
                                              started_at=None, finished_at=None))
                    changed = True
                elif not run and row["status"] == "waiting":
                    conn.execute(where.values(status="skipped", visible=True, error=reason,
                                              error_kind="condition", finished_at=ts))
                    changed = True
            released = self._release(conn, asset_id, ts)
            return self._decided(conn, asset_id, changed or bool(released),
                                 [*names, *released])

    def release_deferred(self, asset_id: str, also: Sequence[str] = ()
                         ) -> tuple[Asset | None, list[dict[str, Any]]]:
        """Dispatch the asset's ``deferred`` requests once no other request of it is pending
        (what :meth:`decide_dependents` returns); nothing when some still are. ``also``:
        post-processes whose pending, not yet started request is handed out again (released
        before, and the send may have been lost after the commit)."""
        with self._begin() as conn:
            released = self._release(conn, asset_id, now_ms())
            if not released and not also:
                return None, []
            return self._decided(conn, asset_id, bool(released), [*released, *also])

    def _release(self, conn: Connection, asset_id: str, ts: int) -> list[str]:
        busy = conn.execute(sa.select(asset_tasks.c.postprocess).where(
            asset_tasks.c.asset_id == asset_id, asset_tasks.c.status == "pending")).first()
        if busy is not None:
            return []
        names = [r[0] for r in conn.execute(sa.select(asset_tasks.c.postprocess).where(
            asset_tasks.c.asset_id == asset_id, asset_tasks.c.status == "deferred")).all()]
        if names:
            conn.execute(sa.update(asset_tasks).where(
                asset_tasks.c.asset_id == asset_id, asset_tasks.c.postprocess.in_(names),
                asset_tasks.c.status == "deferred").values(status="pending", requested_at=ts))
        return names

    def _decided(self, conn: Connection, asset_id: str, changed: bool, names: Sequence[str]
                 ) -> tuple[Asset | None, list[dict[str, Any]]]:
        new = None
        if changed:
            conn.execute(sa.update(assets).where(assets.c.asset_id == asset_id)
                         .values(finalized_version=None))
            new = self._refresh(conn, asset_id)
        dispatch = [dict(r) for r in conn.execute(sa.select(asset_tasks).where(
            asset_tasks.c.asset_id == asset_id, asset_tasks.c.postprocess.in_(list(names)),
            asset_tasks.c.status == "pending", asset_tasks.c.started_at.is_(None),
        )).mappings().all()]
        return new, dispatch

    def _refresh(self, conn: Connection, asset_id: str) -> Asset | None:
        """Recompute status after a change, bump the version (once: one observable change),
        write the new version's update to the outbox, return the new state."""
        task_rows = st.rows(conn, asset_tasks, asset_id=asset_id)
        arow = st.first(conn, assets, asset_id=asset_id)
        assert arow is not None, asset_id
        return self._new_version(conn, arow, task_rows, {})

    def _new_version(self, conn: Connection, arow: Row, task_rows: Sequence[Row],
                     values: dict[str, Any]) -> Asset:
        """One statement: the asset's ``values``, its status recomputed from ``task_rows``, the
        version one more (``arow``: its state read in this transaction); then the outbox row."""
        status = derive_status(task_rows, _loads(arow["asset_refusals_json"] or "[]") != [])
        ts = now_ms()
        values = {**values, "status": status, "version": arow["version"] + 1, "updated_at": ts,
                  "moderation_status": _moderation_status({**arow, **values}, task_rows)}
        if status != "pending" and arow["completed_at"] is None:
            values["completed_at"] = ts
        st.update(conn, assets, {"asset_id": arow["asset_id"]}, values)
        asset = self._to_asset({**arow, **values}, task_rows)
        self._to_outbox(conn, [asset])
        return asset

    def _to_outbox(self, conn: Connection, changed: Sequence[Asset]) -> None:
        if self.encode_update is None or not changed:
            return
        ts = now_ms()
        rows = []
        for a in changed:
            a.encoded = self.encode_update(a)
            rows.append({"asset_id": a.asset_id, "version": a.version, "payload": a.encoded,
                         "reply_to": a.reply_to, "created_at": ts})
        st.insert_many(conn, update_outbox, rows)

    # ------------------------------------------------------------------ task usage
    def mark_tasks_used(self, tasks: Iterable[str]) -> None:
        """Record that requests of ``tasks`` are (about to be) sent; idempotent."""
        want = set(tasks) - self._marked_used
        if not want:
            return  # the router's hot path: known already, no statement
        try:
            with self._begin() as conn:
                have = {r[0] for r in conn.execute(sa.select(task_usage.c.task)
                                                   .where(task_usage.c.task.in_(want)))}
                if missing := sorted(want - have):
                    ts = now_ms()
                    conn.execute(sa.insert(task_usage),
                                 [{"task": t, "first_used_at": ts} for t in missing])
        except sa.exc.IntegrityError:
            return  # another router recorded some in between: the next call looks again
        self._marked_used |= want

    def used_tasks(self) -> set[str]:
        """Every task a request was ever sent for (:meth:`mark_tasks_used`)."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(task_usage.c.task))}

    # ------------------------------------------------------------------ update outbox
    def ack_updates(self, keys: Sequence[tuple[str, int]]) -> None:
        """The broker has these (asset, version) updates: drop them from the outbox."""
        if not keys:
            return
        with self._begin() as conn:  # one driver executemany, not a statement built per key
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(f"DELETE FROM {update_outbox.name} WHERE asset_id = {mark} "
                                 f"AND version = {mark}", list(keys))

    def stale_updates(self, older_than_ms: int, limit: int = 500) -> list[dict[str, Any]]:
        """Updates a writer committed but never saw acknowledged (it died): oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(update_outbox)
                                .where(update_outbox.c.created_at < older_than_ms)
                                .order_by(update_outbox.c.created_at, update_outbox.c.version)
                                .limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ cluster state
    def state(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cluster_state.c.value)
                               .where(cluster_state.c.name == name)).first()
        return None if row is None else str(row[0])

    def state_or_init(self, name: str, value: str) -> str:
        """The value of ``name``, set to ``value`` first when there is none (the first writer
        wins a race; everyone reads the winner's)."""
        found = self.state(name)
        if found is not None:
            return found
        with contextlib.suppress(sa.exc.IntegrityError), self._begin() as conn:
            conn.execute(sa.insert(cluster_state).values(name=name, value=value,
                                                         updated_at=now_ms()))
        found = self.state(name)
        if found is None:  # (cannot happen: the insert or a concurrent one committed)
            raise RuntimeError(f"cluster state {name!r} could not be set")
        return found

    def set_state(self, name: str, value: str) -> None:
        with self._begin() as conn:
            done = conn.execute(sa.update(cluster_state).where(cluster_state.c.name == name)
                                .values(value=value, updated_at=now_ms())).rowcount
            if not done:
                conn.execute(sa.insert(cluster_state).values(name=name, value=value,
                                                             updated_at=now_ms()))

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Hold (or renew) the cluster-wide lease ``name`` for ``ttl_ms``; False when another
        live holder has it. One statement decides, so two contenders never both win."""
        ts = now_ms()
        with self._begin() as conn:
            won = conn.execute(sa.update(leases).where(
                leases.c.name == name,
                sa.or_(leases.c.holder == holder, leases.c.expires_at < ts),
            ).values(holder=holder, expires_at=ts + ttl_ms)).rowcount
            if won:
                return True
            if conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first():
                return False
        try:
            with self._begin() as conn:
                conn.execute(sa.insert(leases).values(name=name, holder=holder,
                                                      expires_at=ts + ttl_ms))
            return True
        except sa.exc.IntegrityError:
            return False  # another holder inserted it first

    def add_asset_verdict(self, asset_id: str, action: str, message: str,
                          uri: str | None = None) -> Asset | None:
        """Record a notice or refusal that is not a task's (e.g. a sync wait that timed out, or
        the API's refusal); a refusal is final. ``uri`` records where the object now lies
        (set aside). Returns the new state, or None if the asset is unknown or unchanged."""
        col = "asset_refusals_json" if action == "refuse" else "asset_notices_json"
        with self._begin() as conn:
            arow = conn.execute(
                sa.select(assets).where(assets.c.asset_id == asset_id)
            ).mappings().first()
            if arow is None:
                return None
            current = _loads(arow[col] or "[]")
            if message in current and (uri is None or uri == arow["uri"]):
                return None
            values: dict[str, Any] = {col: _dumps([*current, message] if message not in current
                                                  else current)}
            if uri is not None:
                values["uri"] = uri
            conn.execute(sa.update(assets).where(assets.c.asset_id == asset_id).values(values))
            return self._refresh(conn, asset_id)

    # ------------------------------------------------------------------ moderation
    def hold_for_moderation(self, asset_id: str) -> Asset | None:
        """Put an asset that nobody moderates in the queue (as ``moderation=manual``). Returns
        the new state, or None when unknown or already moderated."""
        with self._begin() as conn:
            done = conn.execute(sa.update(assets).where(
                assets.c.asset_id == asset_id, assets.c.moderation_kind.is_(None),
                assets.c.moderation_json == "[]").values(moderation_kind=moderation.MANUAL))
            if done.rowcount == 0:
                return None
            return self._refresh(conn, asset_id)

    def decide_moderation(self, asset_id: str, decision: Mapping[str, Any], *,
                          uri: str | None = None, refinalize: bool = False,
                          plan_deliveries: Callable[[Asset], list[dict[str, Any]]] | None = None,
                          ) -> tuple[Asset, list[dict[str, Any]]] | None:
        """Append a reviewer's decision (:func:`sinks.store.moderation.entry`) once: None when
        the asset is unknown or this ``command_id`` was applied already. In the same
        transaction: ``uri`` (where a rejected asset's object lies now), ``refinalize`` (an
        approved asset runs its completion steps again: on_success was held back), and the
        webhook deliveries ``plan_deliveries(new_state)`` returns."""
        with self._begin() as conn:
            arow = conn.execute(
                sa.select(assets).where(assets.c.asset_id == asset_id).with_for_update()
            ).mappings().first()
            if arow is None:
                return None
            history = _loads(arow["moderation_json"] or "[]")
            if any(h.get("command_id") == decision["command_id"] for h in history):
                return None
            values: dict[str, Any] = {"moderation_json": _dumps([*history, dict(decision)])}
            if uri is not None and uri != arow["uri"]:
                values["uri"] = uri
            if refinalize and arow["on_success_json"] is None:
                values["finalized_version"] = None
            conn.execute(sa.update(assets).where(assets.c.asset_id == asset_id).values(values))
            asset = self._refresh(conn, asset_id)
            assert asset is not None
            fresh = (_insert_deliveries(conn, asset, plan_deliveries(asset))
                     if plan_deliveries is not None else [])
            return asset, fresh

    def moderation_queue(self, status: str = "pending", folder: str | None = None,
                         limit: int = 50, after: tuple[int, str] | None = None,
                         ) -> list[Asset]:
        """Assets with this moderation status, oldest first (``after``: the (created_at,
        asset_id) of the last one of the previous page); ``folder`` includes sub-folders."""
        q = sa.select(assets).where(assets.c.moderation_status == status)
        if folder is not None and folder != "/":
            base = folder.rstrip("/")
            q = q.where(sa.or_(assets.c.folder == base,
                               assets.c.folder.startswith(base + "/", autoescape=True)))
        if after is not None:
            q = q.where(sa.or_(assets.c.created_at > after[0], sa.and_(
                assets.c.created_at == after[0], assets.c.asset_id > after[1])))
        q = q.order_by(assets.c.created_at, assets.c.asset_id).limit(limit)
        with self.engine.connect() as conn:
            arows = conn.execute(q).mappings().all()
            trows = _fetch_tasks(conn, [a["asset_id"] for a in arows])
        return [self._to_asset(a, trows.get(a["asset_id"], [])) for a in arows]

    def set_uri(self, asset_id: str, uri: str) -> Asset | None:
        """Where the object lies now ('' once deleted). Returns the new state if it changed."""
        with self._begin() as conn:
            res = conn.execute(sa.update(assets).where(assets.c.asset_id == asset_id,
                                                       assets.c.uri != uri).values(uri=uri))
            if res.rowcount == 0:
                return None
            return self._refresh(conn, asset_id)

    # ------------------------------------------------------------------ queries
    def get_asset(self, asset_id: str) -> Asset | None:
        with self.engine.connect() as conn:
            arow = st.first(conn, assets, asset_id=asset_id)
            if arow is None:
                return None
            task_rows = st.rows(conn, asset_tasks, asset_id=asset_id)
        return self._to_asset(arow, task_rows)

    def get_assets(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        with self.engine.connect() as conn:
            arows = _fetch_assets(conn, list(asset_ids))
            trows = _fetch_tasks(conn, list(asset_ids))
        return {aid: self._to_asset(a, trows.get(aid, [])) for aid, a in arows.items()}

    def list_assets(
        self, folder: str | None = None, status: str | None = None, limit: int = 100,
        after: str | None = None,
    ) -> list[Asset]:
        q = sa.select(assets.c.asset_id).order_by(assets.c.asset_id).limit(limit)
        if folder:
            q = q.where(assets.c.folder.startswith(folder, autoescape=True))
        if status:
            q = q.where(assets.c.status == status)
        if after:
            q = q.where(assets.c.asset_id > after)
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(q)]
        found = self.get_assets(ids)
        return [found[i] for i in ids if i in found]

    def task_counts(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(asset_tasks.c.task, asset_tasks.c.status, sa.func.count())
                .group_by(asset_tasks.c.task, asset_tasks.c.status)
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}


@functools.cache
def _start_mark() -> sa.Update:
    """:meth:`MetadataStore.start_task`'s one statement, built once (see statements)."""
    asset_id = sa.bindparam("a", type_=asset_tasks.c.asset_id.type)
    return sa.update(asset_tasks).where(
        asset_tasks.c.asset_id == asset_id, asset_tasks.c.postprocess == sa.bindparam("p"),
        asset_tasks.c.request_id == sa.bindparam("r"), asset_tasks.c.status == "pending",
        ~sa.exists().where(assets.c.asset_id == asset_id, assets.c.status == "refused"),
    ).values(progress=0.0, started_at=sa.func.coalesce(
        asset_tasks.c.started_at, sa.bindparam("now", type_=asset_tasks.c.started_at.type)))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _seed_task_usage(engine: Engine) -> None:
    """A database from before ``task_usage``: every task its asset rows name was in use (its
    pending requests must still find a consumer)."""
    with engine.begin() as conn:
        tasks = [r[0] for r in conn.execute(sa.select(asset_tasks.c.task).distinct())]
        have = {r[0] for r in conn.execute(sa.select(task_usage.c.task))}
        ts = now_ms()
        if rows := [{"task": t, "first_used_at": ts} for t in tasks if t not in have]:
            conn.execute(sa.insert(task_usage), rows)


def _create_schema(engine: Engine, attempts: int = 10) -> None:
    """Create missing tables and columns. Several processes (workers, API replicas) may do this
    at the same moment on a fresh database: losing that race ("already exists") is fine."""
    for attempt in range(attempts):
        try:
            seed_usage = (not sa.inspect(engine).has_table(task_usage.name)
                          and sa.inspect(engine).has_table(asset_tasks.name))
            metadata.create_all(engine)
            _add_missing_columns(engine)
            if seed_usage:
                _seed_task_usage(engine)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError,
                sa.exc.IntegrityError) as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("already exists" in text or "duplicate" in text):
                raise
            time.sleep(0.05 * (attempt + 1))


def _add_missing_columns(engine: Engine) -> None:
    """Additive schema migration: columns added in later versions (all nullable or defaulted)
    are added to tables created by an earlier version."""
    insp = sa.inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            have = {c["name"] for c in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                ddl = col.type.compile(engine.dialect)
                default = ""
                if col.server_default is not None:
                    default = f" DEFAULT '{col.server_default.arg}'"  # type: ignore[attr-defined]
                conn.exec_driver_sql(
                    f"ALTER TABLE {table.name} ADD COLUMN {col.name} {ddl}{default}")


def _merged_task(task_rows: Sequence[Any], res: ResultRecord) -> dict[str, Any] | None:
    """The task row's new values for ``res``, or None when it changes nothing: a stale
    request, a duplicate (same content hash), or an error after the same request's ``ok``
    (a late retry, the sweeper's give-up never replaces a good result)."""
    row = next((r for r in task_rows if r["postprocess"] == res.postprocess), None)
    if row is None or row["request_id"] != res.request_id:
        return None
    digest = hashlib.sha256(
        _dumps([res.status, res.data, res.error, list(res.verdicts)]).encode()
    ).hexdigest()
    if row["result_hash"] == digest:
        return None
    if row["status"] == "ok" and res.status != "ok":
        return None
    return {
        "visible": True,
        "status": res.status,
        "data_json": _dumps(res.data) if res.data is not None else None,
        "error": res.error,
        "error_kind": res.error_kind,
        "verdicts_json": _dumps(list(res.verdicts)),
        "result_hash": digest,
        "processor_version": res.processor_version,
        "attempts": res.attempts,
        "duration_ms": res.duration_ms,
        "finished_at": res.finished_at,
    }


def _fetch_assets(conn: Connection, ids: list[str]) -> dict[str, Row]:
    out: dict[str, Row] = {}
    for chunk in _chunks(ids, 500):
        for r in st.rows_in(conn, assets, "asset_id", chunk):
            out[r["asset_id"]] = r
    return out


def _fetch_tasks(conn: Connection, ids: list[str]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for chunk in _chunks(ids, 500):
        for r in st.rows_in(conn, asset_tasks, "asset_id", chunk):
            out.setdefault(r["asset_id"], []).append(r)
    return out


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _asset_row(up: UploadRecord, status: str, ts: int, version: int) -> dict[str, Any]:
    return {
        "asset_id": up.asset_id,
        "upload_key": up.upload_key,
        "uri": up.uri,
        "filename": up.filename,
        "folder": up.folder,
        "content_type": up.content_type,
        "size_bytes": up.size_bytes,
        "mode": up.mode,
        "notification_url": up.notification_url,
        "eager_notification_url": up.eager_notification_url,
        "on_success": up.on_success,
        "reply_to": up.reply_to,
        "properties_json": _dumps(dict(up.properties)),
        "tags_json": _dumps(list(up.tags)),
        "context_json": _dumps(dict(up.context)),
        "metadata_json": "{}",
        "unknown_json": _dumps(list(up.unknown)),
        "asset_notices_json": _dumps(list(up.notices)),
        "asset_refusals_json": "[]",
        "finalized_version": None,
        "on_success_json": None,
        "requested_json": _dumps(list(up.requested)),
        "status": status,
        "version": version,
        "uploaded_at": up.uploaded_at,
        "created_at": ts,
        "updated_at": ts,
        "completed_at": ts if status != "pending" else None,
        "moderation_kind": up.moderation or None,
        "moderation_status": moderation.derive(up.moderation, [], []),
        "moderation_json": "[]",
    }


def _insert_deliveries(conn: Connection, asset: Asset, planned: Sequence[dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    """Record webhook deliveries (the outbox); returns those not recorded before (their ids
    are idempotency keys)."""
    ts = now_ms()
    fresh = []
    for d in planned:
        exists = conn.execute(sa.select(deliveries.c.delivery_id).where(
            deliveries.c.delivery_id == d["delivery_id"])).first()
        if exists:
            continue
        conn.execute(sa.insert(deliveries).values(
            delivery_id=d["delivery_id"], asset_id=asset.asset_id, version=asset.version,
            event=d["event"], url=d["url"], payload=d["payload"], state="queued", attempts=0,
            created_at=ts, updated_at=ts))
        fresh.append(d)
    return fresh


def _moderation_status(arow: Row, task_rows: Sequence[Row]) -> str | None:
    return moderation.derive(arow.get("moderation_kind"),
                             [r for r in task_rows if _visible(r)],
                             _loads(arow.get("moderation_json") or "[]"))


def _to_asset(arow: Row, task_rows: Sequence[Row],
              info_of: Mapping[str, InfoExtractor]) -> Asset:
    results: dict[str, dict[str, Any]] = {}
    notices: list[str] = list(_loads(arow["asset_notices_json"] or "[]"))
    refusals: list[str] = list(_loads(arow["asset_refusals_json"] or "[]"))
    props = _loads(arow["properties_json"])
    info = dict(props)
    for r in sorted((r for r in task_rows if _visible(r)), key=lambda r: r["postprocess"]):
        # (a row the router just built holds only what it set: read the rest as absent)
        data = _loads(r["data_json"]) if r.get("data_json") else None
        verdicts = _loads(r.get("verdicts_json") or "[]")
        results[r["postprocess"]] = {
            "task": r["task"],
            "status": r["status"],
            "mode": r["mode"],
            "data": data,
            "error": r.get("error"),
            "error_kind": r.get("error_kind"),
            "processor_version": r.get("processor_version"),
            "attempts": r.get("attempts") or 0,
            "duration_ms": r.get("duration_ms"),
            "progress": 100.0 if r["status"] in TERMINAL else r.get("progress"),
            "verdicts": verdicts,
        }
        for v in verdicts:
            if v.get("action") == "refuse":
                refusals.append(v.get("message", ""))
            elif v.get("action") != "moderate":  # those are the moderation's reasons
                notices.append(v.get("message", ""))
        extract = info_of.get(r["task"])
        if extract is not None and r["status"] == "ok" and isinstance(data, dict):
            try:
                info.update(extract(data))
            except Exception:  # a task's info that cannot be read is missing, never a failure
                log.warning("info of %s/%s unreadable", arow["asset_id"], r["postprocess"],
                            exc_info=True)
    return Asset(
        asset_id=arow["asset_id"],
        status=arow["status"],
        version=int(arow["version"]),
        uri=arow["uri"],
        filename=arow["filename"],
        folder=arow["folder"],
        content_type=arow["content_type"],
        size_bytes=int(arow["size_bytes"]),
        mode=arow["mode"],
        notification_url=arow["notification_url"],
        eager_notification_url=arow.get("eager_notification_url"),
        properties=props,
        tags=_loads(arow["tags_json"]),
        context=_loads(arow["context_json"]),
        metadata=_loads(arow["metadata_json"]),
        results=results,
        notices=notices,
        refusals=refusals,
        unknown_postprocesses=_loads(arow["unknown_json"]),
        reply_to=arow["reply_to"],
        finalized_version=arow["finalized_version"],
        requested=_loads(arow["requested_json"] or "[]"),
        on_success=arow["on_success"],
        on_success_result=_loads(arow["on_success_json"]) if arow["on_success_json"] else None,
        uploaded_at=int(arow["uploaded_at"]),
        created_at=int(arow["created_at"]),
        updated_at=int(arow["updated_at"]),
        completed_at=arow["completed_at"],
        info=info,
        moderation=moderation.view(arow.get("moderation_kind"), arow.get("moderation_status"),
                                   [r for r in task_rows if _visible(r)],
                                   _loads(arow.get("moderation_json") or "[]")),
    )
