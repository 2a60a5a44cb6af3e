"""The store's side of an asset's lifecycle: delete, patch, and the commands already applied.

Called by the sink's command handlers (:mod:`agents.streams.lifecycle`), the single writer.

* :func:`delete_asset` removes every row of the asset (``assets``, ``asset_tasks``, the update
  outbox, webhook deliveries, applied commands) and leaves a tombstone in ``deleted_assets``
  (the id, the upload key, the last version, when): a late or replayed event of that upload
  never brings it back (:func:`is_deleted_upload`), and a replayed delete finds it done. In the
  same transaction the ``deleted`` AssetUpdate is written to the outbox and the
  ``asset.deleted`` deliveries are recorded (their rows are the only other trace: the delivery
  agent needs them to send, retry and report the notice).
* :func:`patch_asset` replaces tags, context and metadata (Cloudinary's replace semantics), one
  version for one observable change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sinks.store import statements as st
from sinks.store.metadata import (
    Asset,
    MetadataStore,
    _dumps,
    applied_commands,
    asset_tasks,
    assets,
    deleted_assets,
    deliveries,
    now_ms,
    update_outbox,
)

PATCHABLE = {"tags": "tags_json", "context": "context_json", "metadata": "metadata_json"}


def tombstone(store: MetadataStore, asset_id: str) -> dict[str, Any] | None:
    """The tombstone of a deleted asset id, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(deleted_assets).where(
            deleted_assets.c.asset_id == asset_id)).mappings().first()
    return dict(row) if row else None


@dataclasses.dataclass(frozen=True)
class Tombstone:
    upload_key: str
    deleted_at: int
    version: int

    def covers(self, upload_key: str, uploaded_at: int) -> bool:
        """Whether an upload event belongs to the deleted upload (the same upload key, or an
        upload made before the deletion): it must not bring the asset back."""
        return upload_key == self.upload_key or uploaded_at <= self.deleted_at


def deleted_uploads(conn: Connection, ids: Sequence[str]) -> dict[str, Tombstone]:
    """The tombstones of the deleted ones among ``ids`` (one query per 500 ids: the router
    asks once per batch of events)."""
    out: dict[str, Tombstone] = {}
    for i in range(0, len(ids), 500):
        # a statement built once (an expanding IN): building it per batch cost the router
        # more than the lookup itself
        for row in st.rows_in(conn, deleted_assets, "asset_id", ids[i:i + 500]):
            out[str(row["asset_id"])] = Tombstone(str(row["upload_key"]), int(row["deleted_at"]),
                                                  int(row["version"]))
    return out


def deleted_state(asset: Asset, ts: int) -> Asset:
    """What the ``deleted`` AssetUpdate and the ``asset.deleted`` webhook say: the asset's
    identity (id, filename, folder, type, size), status ``deleted``, the next version, and
    nothing of its content."""
    return dataclasses.replace(
        asset, status="deleted", version=asset.version + 1, uri="", info={}, properties={},
        tags=[], context={}, metadata={}, results={}, notices=[], refusals=[],
        unknown_postprocesses=[], on_success_result=None, updated_at=ts, encoded=None)


def delete_asset(store: MetadataStore, asset_id: str, command_id: str,
                 plan_deliveries: Callable[[Asset], list[dict[str, Any]]],
                 ) -> tuple[Asset, list[dict[str, Any]]] | None:
    """Remove the asset's rows and leave its tombstone; returns (the deleted state, the
    deliveries to enqueue), or None when there is no such asset (deleted already)."""
    ts = now_ms()
    with store._begin() as conn:
        arow = conn.execute(sa.select(assets).where(assets.c.asset_id == asset_id)
                            .with_for_update()).mappings().first()
        if arow is None:
            return None
        task_rows = conn.execute(sa.select(asset_tasks).where(
            asset_tasks.c.asset_id == asset_id)).mappings().all()
        gone = deleted_state(store._to_asset(arow, task_rows), ts)
        for table in (asset_tasks, update_outbox, deliveries, applied_commands):
            conn.execute(sa.delete(table).where(table.c.asset_id == asset_id))
        conn.execute(sa.delete(assets).where(assets.c.asset_id == asset_id))
        conn.execute(sa.delete(deleted_assets).where(deleted_assets.c.asset_id == asset_id))
        conn.execute(sa.insert(deleted_assets).values(
            asset_id=asset_id, upload_key=arow["upload_key"], version=gone.version,
            command_id=command_id[:200], deleted_at=ts))
        store._to_outbox(conn, [gone])
        fresh = plan_deliveries(gone)
        for d in fresh:
            conn.execute(sa.insert(deliveries).values(
                delivery_id=d["delivery_id"], asset_id=asset_id, version=gone.version,
                event=d["event"], url=d["url"], payload=d["payload"], state="queued",
                attempts=0, created_at=ts, updated_at=ts))
        return gone, fresh


def patch_asset(store: MetadataStore, asset_id: str, command_id: str,
                changes: Mapping[str, Any]) -> tuple[Asset | None, bool]:
    """Replace the given fields (``tags``, ``context``, ``metadata``) of an asset; returns
    (its new state when something changed, whether the asset exists). A replayed command
    (same ``command_id``) and a patch that changes nothing move nothing."""
    with store._begin() as conn:
        arow = conn.execute(sa.select(assets).where(assets.c.asset_id == asset_id)
                            .with_for_update()).mappings().first()
        if arow is None:
            return None, False
        if command_id and not _first_time(conn, command_id, asset_id, "patch"):
            return None, True
        values = {col: _dumps(changes[key]) for key, col in PATCHABLE.items()
                  if key in changes and _dumps(changes[key]) != _canon(arow[col])}
        if not values:
            return None, True
        conn.execute(sa.update(assets).where(assets.c.asset_id == asset_id).values(values))
        return store._refresh(conn, asset_id), True


def mark_applied(store: MetadataStore, command_id: str, asset_id: str, command: str) -> bool:
    """Record a command as applied; False when it was already (a replay)."""
    with store._begin() as conn:
        return _first_time(conn, command_id, asset_id, command)


def _first_time(conn: Connection, command_id: str, asset_id: str, command: str) -> bool:
    seen = conn.execute(sa.select(applied_commands.c.command_id).where(
        applied_commands.c.command_id == command_id)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(applied_commands).values(
        command_id=command_id, asset_id=asset_id, command=command, applied_at=now_ms()))
    return True


def _canon(text: str | None) -> str:
    return _dumps(json.loads(text or "null"))


def record_deliveries(store: MetadataStore, asset_id: str, version: int,
                      planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert webhook deliveries not recorded yet (their ids are idempotency keys); returns
    the new ones, to enqueue."""
    ts = now_ms()
    fresh = []
    with store._begin() as conn:
        for d in planned:
            if conn.execute(sa.select(deliveries.c.delivery_id).where(
                    deliveries.c.delivery_id == d["delivery_id"])).first():
                continue
            conn.execute(sa.insert(deliveries).values(
                delivery_id=d["delivery_id"], asset_id=asset_id, version=version,
                event=d["event"], url=d["url"], payload=d["payload"], state="queued",
                attempts=0, created_at=ts, updated_at=ts))
            fresh.append(d)
    return fresh


def current_request(store: MetadataStore, asset_id: str, postprocess: str) -> str | None:
    """The request id the asset's post-process row holds now (None: no row)."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(asset_tasks.c.request_id).where(
            asset_tasks.c.asset_id == asset_id,
            asset_tasks.c.postprocess == postprocess)).first()
    return None if row is None else str(row[0])
