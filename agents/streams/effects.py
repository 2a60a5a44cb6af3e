"""Declared storage effects of action tasks, executed by the sink (processors never touch
storage or the network): ``register(..., effect="quarantine-original" | "delete-original" |
"webhook")``.

Run after the task's ``ok`` result was merged, and again for a duplicate of it (a crash between
the merge and the move is made good by the redelivered result): each effect is idempotent — an
object already under ``quarantine/`` stays, a deleted original ("" uri) is not deleted twice.
The asset's ``uri`` is updated by the store (the single writer) with a notice saying what was
done, so ``GET``, the AssetUpdate and webhooks show it.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.composition import Runtime
from schemas.records import TaskResult
from sinks.store.metadata import Asset

log = logging.getLogger("darkroom.effects")


def apply_effect(rt: Runtime, res: TaskResult, data: dict[str, Any] | None) -> Asset | None:
    """Execute the effect ``res``'s task declares; returns the asset's new state if it
    changed."""
    from sinks.objects.base import QUARANTINE_PREFIX, StorageError

    proc = rt.processors.get(res.task)
    if proc is None or proc.effect is None or res.status != "ok" or data is None:
        return None
    asset = rt.store.get_asset(res.asset_id)
    if asset is None or (not asset.uri and proc.effect != "webhook"):
        return None  # gone already
    # only the current request's result acts (a stale result of an older upload does not)
    if asset.results.get(res.postprocess, {}).get("status") != "ok":
        return None
    if proc.effect == "webhook":
        webhook(rt, res, asset, data)
        return None
    reason = str(data.get("reason") or res.postprocess)
    try:
        if proc.effect == "quarantine-original":
            if rt.storage.key_of(asset.uri).startswith(QUARANTINE_PREFIX):
                return None
            new_uri = rt.storage.move(asset.uri, rt.storage.quarantine_key(asset.uri))
            message = f"{res.postprocess}: original moved to quarantine ({reason})"
        else:
            rt.storage.delete(asset.uri)
            new_uri, message = "", f"{res.postprocess}: original removed ({reason})"
    except StorageError as exc:
        if not exc.permanent:
            raise  # storage trouble: the result is merged again later
        log.warning("%s of %s: the object stays where it is (%s)", proc.effect,
                    res.asset_id, exc)
        return None
    log.info("%s: %s", res.asset_id, message)
    return rt.store.add_asset_verdict(res.asset_id, "notice", message, uri=new_uri)


def webhook(rt: Runtime, res: TaskResult, asset: Asset, data: dict[str, Any]) -> None:
    """Queue the task's webhook in the outbox (once per asset, post-process and URL) and
    send it to the webhook agents, which sign it and apply the SSRF guard; a send lost after
    the commit is re-sent by the sweeper, like every queued delivery."""
    from agents.streams.completion import delivery_id
    from agents.streams.outputs import payload_bytes
    from schemas.records import WebhookDelivery, now_ms

    url, event = str(data.get("url") or ""), str(data.get("event") or "asset.workflow")
    if not url:
        return
    did = delivery_id(asset.asset_id, 0, f"{event}\x1f{res.postprocess}", url)
    payload = payload_bytes(asset.to_json(), event, asset.version, rt.settings.update_budget)
    d = {"delivery_id": did, "event": event, "url": url, "payload": payload}
    if not rt.store.add_delivery(d, asset.asset_id, asset.version):
        return
    ts = now_ms()
    rt.producer.send(rt.settings.topic("webhooks"), asset.asset_id, WebhookDelivery(
        delivery_id=did, asset_id=asset.asset_id, version=asset.version, event=event, url=url,
        payload=payload, attempt=1, due_at=0, created_at=ts).to_bytes())
