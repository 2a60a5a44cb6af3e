"""What happens once when an asset has finished: on-success steps, then webhooks.

Order (documented for users): a ``complete`` asset first runs its upload's ``on_success`` script
(sandboxed JavaScript) and the deployment's Python handlers; their tag/context/metadata updates are
applied; *then* the webhook payload is built, so receivers see the state after the script. Partial,
failed and refused assets skip on-success and only notify.

The store makes this exactly-once per upload (``finalized_version``), and the deliveries it records
are an outbox: the Kafka message of each is sent after the commit, and the sweeper re-sends any
whose message was lost.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from agents.composition import Runtime
from agents.streams.outputs import payload_bytes, publish_update, update_bytes
from schemas.records import WebhookDelivery, now_ms
from sinks.store.metadata import Asset

log = logging.getLogger("darkroom.completion")


def delivery_id(asset_id: str, version: int, event: str, url: str) -> str:
    raw = "\x1f".join((asset_id, str(version), event, url))
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def notification_urls(rt: Runtime, asset: Asset) -> list[str]:
    urls = [asset.notification_url] if asset.notification_url else []
    return list(dict.fromkeys([*urls, *rt.settings.webhook_urls]))


def run_on_success(rt: Runtime, asset: Asset) -> tuple[dict[str, Any] | None,
                                                       dict[str, Any] | None]:
    """(updates, record) of the on-success steps; every failure is recorded, none raised."""
    from sinks.on_success import apply_updates, run_handlers, run_script

    s = rt.settings
    if not asset.on_success and not rt.handlers:
        return None, None  # nothing to run: no JSON of the asset built for it
    info = asset.to_json()
    record: dict[str, Any] = {}
    updates: list[dict[str, Any]] = []
    if asset.on_success:
        out = run_script(asset.on_success, info, "success",
                         time_limit_ms=s.on_success_time_limit_ms,
                         memory_limit_bytes=s.on_success_memory_limit_bytes)
        record["script"] = {"status": out.status, "error": out.error,
                            "error_kind": out.error_kind, "duration_ms": out.duration_ms}
        if out.status == "ok" and out.updates:
            updates.append(dict(out.updates))
    if rt.handlers:
        record["handlers"] = []
        # handlers see the script's updates already applied, so their changes compose
        seen = {**info, **apply_updates(info, updates)} if updates else info
        for h in run_handlers(rt.handlers, seen):
            record["handlers"].append({"name": h.name, "status": h.status, "error": h.error,
                                       "duration_ms": h.duration_ms})
            if h.status == "ok" and h.updates:
                updates.append(dict(h.updates))
    if not record:
        return None, None
    return (apply_updates(info, updates) if updates else None), record


def set_aside(rt: Runtime, asset: Asset) -> str | None:
    """Delete or quarantine a refused asset's object (``DARKROOM_REFUSED_OBJECTS``), whichever
    path refused it (a rule in any mode, the API's timeout policy, a reviewer). Returns where the
    object lies now ("" once deleted), or None when there is nothing to do. Idempotent: a
    quarantined or deleted object is left as it is; an object in a read-only root stays."""
    from sinks.objects.base import QUARANTINE_PREFIX, StorageError

    uri = asset.uri
    if not uri:
        return None
    try:
        if rt.settings.refused_objects == "quarantine":
            key = rt.storage.key_of(uri)
            if key.startswith(QUARANTINE_PREFIX):
                return None
            return rt.storage.move(uri, rt.storage.quarantine_key(uri))
        rt.storage.delete(uri)
        return ""
    except StorageError as exc:
        if not exc.permanent:
            raise  # storage trouble: the whole completion is retried
        log.warning("refused asset %s: its object stays where it is (%s)", asset.asset_id, exc)
        return None


def finalize(rt: Runtime, asset: Asset) -> tuple[Asset, list[WebhookDelivery]] | None:
    """Blocking. Run the completion steps of a final, not yet finalized asset."""
    if not asset.final or asset.finalized_version is not None:
        return None
    # on_success runs once per upload; a later change (a replay that found something new)
    # only notifies: re-running a script that appends tags would double them
    first = asset.on_success_result is None
    # an asset held for review runs on_success once a reviewer approves it (see
    # agents.streams.moderation), a rejected one never
    held = asset.moderation_status in ("pending", "rejected")
    updates, record = (run_on_success(rt, asset) if asset.status == "complete" and first
                       and not held else (None, None))
    refused = asset.status == "refused"
    new_uri = set_aside(rt, asset) if refused else None
    done = rt.store.finalize(asset.asset_id, asset.version, updates, record,
                             lambda new: planned_deliveries(rt, new),
                             uri=new_uri, skip_pending=refused)
    if done is None:
        return None
    new, fresh = done
    return new, webhook_deliveries(new, fresh)


def planned_deliveries(rt: Runtime, new: Asset) -> list[dict[str, Any]]:
    """The webhook deliveries a finished state calls for (one per subscribed URL), with
    their idempotency keys: a refusal is notified once, whatever changes after it; a
    completion once per version."""
    urls = notification_urls(rt, new)
    if not urls:
        return []  # no one subscribed: no payload built
    refused = new.status == "refused"
    event = "asset.refused" if refused else "asset.completed"
    payload = payload_bytes(new.to_json(), event, new.version, rt.settings.update_budget)
    version = 0 if refused else new.version
    return [{"delivery_id": delivery_id(new.asset_id, version, event, url),
             "event": event, "url": url, "payload": payload}
            for url in urls]


def webhook_deliveries(new: Asset, fresh: list[dict[str, Any]]) -> list[WebhookDelivery]:
    """The messages of the deliveries the store recorded just now (their first attempt)."""
    ts = now_ms()
    return [WebhookDelivery(delivery_id=d["delivery_id"], asset_id=new.asset_id,
                            version=new.version, event=d["event"], url=d["url"],
                            payload=d["payload"], attempt=1, due_at=0, created_at=ts)
            for d in fresh]


def inline_plan(rt: Runtime, asset: Asset) -> list[dict[str, Any]] | None:
    """For the merge that finishes ``asset`` (its new state, not committed yet): the
    deliveries of its completion when that completion is only the mark and the webhooks
    (:meth:`~sinks.store.metadata.MetadataStore.merge_and_complete` then commits them with
    the merge), or None when :func:`finalize` must run (a refusal sets the object aside; a
    first completion with an on-success script or handlers runs them)."""
    if asset.status == "refused":
        return None
    first = asset.on_success_result is None
    held = asset.moderation_status in ("pending", "rejected")
    if asset.status == "complete" and first and not held and (asset.on_success
                                                              or rt.handlers):
        return None
    return planned_deliveries(rt, asset)


def send_deliveries(rt: Runtime, deliveries: list[WebhookDelivery]) -> None:
    """Queue them on the webhooks topic (the caller flushes; the sweeper re-sends lost ones)."""
    for d in deliveries:
        rt.producer.send(rt.settings.topic("webhooks"), d.asset_id, d.to_bytes())


def complete(rt: Runtime, asset: Any, sent: list[Any]) -> None:
    """Blocking: on-success steps and webhooks of a finished asset (once; see completion)."""
    done = finalize(rt, asset)
    if done is None:
        reply_refusal(rt, asset)
        return
    new, fresh = done
    if new.version != asset.version:  # on_success changed it: that version goes out too
        publish_update(rt, new, sent)
    reply_refusal(rt, new)
    send_deliveries(rt, fresh)


def reply_refusal(rt: Runtime, asset: Any) -> None:
    """The waiting API instance's answer to a refused sync upload, which
    :func:`~agents.streams.outputs.publish_update` holds back until the object is set aside."""
    if asset.status == "refused" and asset.reply_to:
        rt.producer.send(asset.reply_to, asset.asset_id,
                         asset.encoded or update_bytes(asset, rt.settings.update_budget))
