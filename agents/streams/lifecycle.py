"""An asset's lifecycle after upload, applied by the sink (the single writer): ``delete`` and
``patch`` commands (:data:`agents.streams.commands.HANDLERS`), late results of deleted assets,
and the ``eager.completed`` notification.

* **delete** — the original, every derived object (``derived/<asset>/``), the similarity and
  face index entries, then every store row (:func:`sinks.store.lifecycle.delete_asset`, which
  leaves a tombstone); an ``AssetUpdate`` with status ``deleted`` on darkroom.assets and one
  signed ``asset.deleted`` webhook per notification URL. Objects and indexes go first: a crash
  half-way leaves the asset in the store, and the replayed command finishes the job. A second
  delete (or a replay) finds the tombstone and does nothing.
* **patch** — ``{tags?, context?, metadata?}``: each given field replaces the asset's wholly
  (Cloudinary's replace semantics); one version for one observable change; a replayed command
  (same ``command_id``) changes nothing.
* A result arriving for a deleted asset is dropped with a log line, and what its task wrote
  under ``derived/<asset>/<post-process>/`` after the deletion is removed.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.composition import Runtime
from agents.policy import limits
from agents.streams.completion import delivery_id, notification_urls
from agents.streams.outputs import payload_bytes, publish_update
from agents.streams.poison import Poison
from agents.streams.validation import command_payload
from schemas.records import AssetCommand, WebhookDelivery, now_ms
from sinks.store.metadata import Asset

log = logging.getLogger("darkroom.lifecycle")

DELETED_EVENT = "asset.deleted"
EAGER_EVENT = "eager.completed"


def derived_prefix(asset_id: str, postprocess: str | None = None) -> str:
    return f"derived/{asset_id}/" + (f"{postprocess}/" if postprocess else "")


def _storage_step(what: str, fn: Any, *args: Any) -> Any:
    from sinks.objects.base import StorageError

    try:
        return fn(*args)
    except StorageError as exc:
        if not exc.permanent:
            raise  # storage trouble: the command is retried
        log.warning("%s: %s (left as it is)", what, exc)
        return None


def enqueue(rt: Runtime, fresh: list[dict[str, Any]], asset_id: str, version: int) -> None:
    ts = now_ms()
    for d in fresh:
        msg = WebhookDelivery(delivery_id=d["delivery_id"], asset_id=asset_id, version=version,
                              event=d["event"], url=d["url"], payload=d["payload"], attempt=1,
                              due_at=0, created_at=ts)
        rt.producer.send(rt.settings.topic("webhooks"), asset_id, msg.to_bytes())


def delete(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    from sinks.indexes import faces, similarity
    from sinks.store.lifecycle import delete_asset, tombstone

    asset = rt.store.get_asset(cmd.asset_id)
    if asset is None:
        if tombstone(rt.store, cmd.asset_id) is not None:
            log.info("delete of %s: already deleted", cmd.asset_id)
        else:
            log.warning("delete of %s: no such asset (dropped)", cmd.asset_id)
        return 0
    if asset.uri:
        _storage_step(f"original of deleted asset {asset.asset_id}", rt.storage.delete,
                      asset.uri)
    removed = _storage_step(f"derived objects of deleted asset {asset.asset_id}",
                            rt.storage.delete_prefix, derived_prefix(asset.asset_id))
    vectors = similarity.forget(rt.store.engine, asset.asset_id, rt.settings.data_dir)
    face_rows = faces.forget(rt.store.engine, asset.asset_id)
    urls = notification_urls(rt, asset)

    def plan(gone: Asset) -> list[dict[str, Any]]:
        doc = {"asset_id": gone.asset_id, "status": "deleted", "version": gone.version,
               "filename": gone.filename, "folder": gone.folder,
               "deleted_at": gone.updated_at, "command_id": cmd.command_id}
        payload = payload_bytes(doc, DELETED_EVENT, gone.version, rt.settings.update_budget)
        return [{"delivery_id": delivery_id(gone.asset_id, gone.version, DELETED_EVENT, url),
                 "event": DELETED_EVENT, "url": url, "payload": payload} for url in urls]

    done = delete_asset(rt.store, asset.asset_id, cmd.command_id or f"delete:{asset.asset_id}",
                        plan)
    if done is None:
        return 0
    gone, fresh = done
    # a result hook of another worker may have indexed the asset meanwhile (its merge came
    # before the rows went): once more, now that nothing can merge for it any more
    vectors += similarity.forget(rt.store.engine, asset.asset_id, rt.settings.data_dir)
    face_rows += faces.forget(rt.store.engine, asset.asset_id)
    log.info("asset %s deleted (%s derived objects, %d vectors, %d faces)", asset.asset_id,
             removed, vectors, face_rows)
    publish_update(rt, gone, sent)
    enqueue(rt, fresh, gone.asset_id, gone.version)
    return 1


def patch_changes(payload: dict[str, Any]) -> dict[str, Any]:
    """The validated fields of a patch (the HTTP API and the sink check the same way)."""
    unknown = sorted(set(payload) - {"tags", "context", "metadata"})
    if unknown:
        raise limits.LimitError(f"unknown patch fields: {', '.join(unknown)} (tags, context, "
                                "metadata)")
    out: dict[str, Any] = {}
    if payload.get("tags") is not None:
        if not isinstance(payload["tags"], list):
            raise limits.LimitError("tags must be a list of strings")
        out["tags"] = list(dict.fromkeys(limits.tags(payload["tags"])))
    if payload.get("context") is not None:
        if not isinstance(payload["context"], dict):
            raise limits.LimitError("context must be an object of strings")
        out["context"] = limits.context(payload["context"])
    if payload.get("metadata") is not None:
        if not isinstance(payload["metadata"], dict):
            raise limits.LimitError("metadata must be a JSON object")
        out["metadata"] = limits.metadata(payload["metadata"])
    return out


def patch(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    from sinks.store.lifecycle import patch_asset

    try:
        changes = patch_changes(command_payload(cmd))
    except ValueError as exc:
        raise Poison(f"invalid patch: {exc}") from exc
    new, exists = patch_asset(rt.store, cmd.asset_id, cmd.command_id, changes)
    if not exists:
        log.warning("patch of %s: no such asset (deleted?): dropped", cmd.asset_id)
        return 0
    if new is None:
        return 0
    publish_update(rt, new, sent)
    return 1


def late_result(rt: Runtime, asset_id: str, postprocess: str) -> bool:
    """True when a result for an unknown asset belongs to a deleted one: what its task wrote
    after the deletion is removed, and the result is dropped (logged)."""
    from sinks.store.lifecycle import tombstone

    if tombstone(rt.store, asset_id) is None:
        return False
    _storage_step(f"late derived objects of deleted asset {asset_id}",
                  rt.storage.delete_prefix, derived_prefix(asset_id, postprocess))
    log.info("result %s/%s for a deleted asset dropped", asset_id, postprocess)
    return True


def notifies_early(task: str) -> bool:
    """Whether a merged result of ``task`` may call for the upload's early notification
    (:func:`eager_notify`)."""
    return task == "eager"


def eager_notify(rt: Runtime, asset: Asset, postprocess: str, task: str,
                 request_id: str) -> None:
    """The upload's ``eager_notification_url`` gets one signed ``eager.completed`` webhook once
    an ``eager`` result is merged ``ok`` (Cloudinary's eager notification): one delivery per
    (asset, post-process, request) whatever replays the result; a reprocess is a new request
    and notifies again. Called after every merge of such a result, duplicates included, so a
    crash between the merge and the delivery's record is healed by the redelivered result."""
    from sinks.store.lifecycle import current_request, record_deliveries

    url = asset.eager_notification_url
    result = asset.results.get(postprocess) or {}
    if not notifies_early(task) or not url or result.get("status") != "ok":
        return
    if current_request(rt.store, asset.asset_id, postprocess) != request_id:
        return  # a stale result (an earlier request): its renditions are not the asset's
    data = result.get("data") or {}
    doc = {"asset_id": asset.asset_id, "notification_type": "eager", "postprocess": postprocess,
           "request_id": request_id, "status": "ok", "version": asset.version,
           "renditions": data.get("renditions", []) if isinstance(data, dict) else []}
    payload = payload_bytes(doc, EAGER_EVENT, asset.version, rt.settings.update_budget)
    ident = f"{EAGER_EVENT}:{postprocess}:{request_id}"
    planned = [{"delivery_id": delivery_id(asset.asset_id, 0, ident, url),
                "event": EAGER_EVENT, "url": url, "payload": payload}]
    fresh = record_deliveries(rt.store, asset.asset_id, asset.version, planned)
    enqueue(rt, fresh, asset.asset_id, asset.version)


# ------------------------------------------------------------------ the deciding side (API, CLI)
def publish_command(rt: Runtime, asset_id: str, command: str, payload: dict[str, Any],
                    issued_by: str) -> str:
    """Publish a lifecycle command for the sink (blocking); returns its command id."""
    import json
    import uuid

    cid = f"{command}:{uuid.uuid4().hex}"
    cmd = AssetCommand(asset_id=asset_id, command=command, issued_by=issued_by,
                       issued_at=now_ms(), command_id=cid,
                       payload=json.dumps(payload, sort_keys=True) if payload else "")
    rt.producer.send(rt.settings.topic("commands"), asset_id, cmd.to_bytes())
    rt.producer.flush_sync(timeout=10)
    return cid


def reprocess_problem(rt: Runtime, asset: Asset | None, names: list[str]) -> tuple[int, str] | None:
    """Why a reprocess of ``asset`` with ``names`` cannot be planned: (HTTP status, reason)."""
    known = {n.lower() for n in rt.config.known_names()}
    bad = [n for n in names if n.lower() not in known]
    if bad:
        return 422, f"unknown post-processes: {', '.join(bad)}"
    if asset is None:
        return 404, "no such asset"
    if not asset.uri:
        return 409, f"asset {asset.asset_id} has no object to process"
    if asset.status == "pending":
        return 409, f"asset {asset.asset_id} is still being processed"
    return None


def reprocess(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    """The ``reprocess`` command (``{"postprocesses": [names]}``) for producers that cannot
    reach the uploads topic: the sink publishes the replay. Its reprocess id comes from the
    command id, so a replayed command plans the same requests (and the router and the sink
    dedupe them); the applied-commands table keeps it from being sent twice."""
    import hashlib

    from sinks.store.lifecycle import mark_applied

    try:
        raw = command_payload(cmd).get("postprocesses") or []
        if not isinstance(raw, list):
            raise limits.LimitError("postprocesses must be a list of names")
        names = list(dict.fromkeys(limits.names(raw, "postprocesses")))
    except ValueError as exc:
        raise Poison(f"invalid reprocess: {exc}") from exc
    asset = rt.store.get_asset(cmd.asset_id)
    problem = reprocess_problem(rt, asset, names)
    if problem is not None or asset is None:
        log.warning("reprocess of %s dropped: %s", cmd.asset_id,
                    problem[1] if problem else "no such asset")
        return 0
    if cmd.command_id and not mark_applied(rt.store, cmd.command_id, asset.asset_id,
                                           "reprocess"):
        return 0
    rid = hashlib.sha256((cmd.command_id or str(cmd.issued_at)).encode()).hexdigest()[:32]
    publish_reprocess(rt, asset, names, rid=rid, flush=False)  # the sink flushes its batch
    return 0


def publish_reprocess(rt: Runtime, asset: Asset, names: list[str], *, rid: str | None = None,
                      flush: bool = True) -> str:
    """Replay the asset's upload (the replay engine's event) for ``names`` (empty: every
    post-process that applies) with a fresh ``reprocess_id``: the router plans new requests
    and the sink merges their results as new versions. Returns the reprocess id."""
    import uuid

    from agents.replay import event_from_asset

    rid = rid or uuid.uuid4().hex
    ev = event_from_asset(asset, names)
    ev.reprocess_id = rid
    rt.producer.send(rt.settings.topic("uploads"), asset.asset_id, ev.to_bytes())
    if flush:
        rt.producer.flush_sync(timeout=10)
    return rid
