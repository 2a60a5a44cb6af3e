"""The sink's side of moderation: a reviewer's decision (command ``moderation``) and a request
to hold an asset for review (command ``moderate``), applied by the single writer.

A decision is appended to the asset's history once (its command id), in the transaction that
also records the ``asset.moderated`` webhooks; a rejection sets the original aside first
(``DARKROOM_REFUSED_OBJECTS``: deleted or moved under ``quarantine/``) and deletes the derived
objects (a replay of the quarantined original makes them again); an approval of a finished asset
whose on_success steps were held back makes the asset run its completion steps now (on_success,
then the ``asset.completed`` webhook of the new version).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from agents.composition import Runtime
from agents.policy import limits
from agents.streams import validation
from agents.streams.commands import known_asset
from agents.streams.completion import complete, notification_urls, set_aside
from agents.streams.outputs import payload_bytes, publish_update
from agents.streams.poison import Poison
from schemas.records import AssetCommand, WebhookDelivery, now_ms
from sinks.store import moderation
from sinks.store.metadata import Asset

log = logging.getLogger("darkroom.moderation")

EVENT = "asset.moderated"
MAX_NOTE = 2000


def decision_of(cmd: AssetCommand) -> dict[str, Any]:
    """The history entry a ``moderation`` command carries (raises Poison when malformed)."""
    try:
        payload = validation.command_payload(cmd)
        status = payload.get("status")
        note = payload.get("note") or ""
        if not isinstance(status, str) or not isinstance(note, str):
            raise limits.LimitError("payload needs a string status and an optional note")
        limits.one_of(status, "status", moderation.DECISIONS)
        limits.bounded_text(note, "note", MAX_NOTE, controls=True)
    except limits.LimitError as exc:
        raise Poison(f"moderation command: {exc}") from exc
    if not cmd.command_id:
        raise Poison("moderation command: command_id must not be empty")
    return moderation.entry(status, cmd.issued_by or "unknown", cmd.issued_at or now_ms(), note,
                            cmd.command_id)


def _delivery_id(asset_id: str, command_id: str, url: str) -> str:
    raw = "\x1f".join((asset_id, command_id, EVENT, url))
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def _drop_derived(rt: Runtime, asset: Asset) -> None:
    """Delete the derived objects the asset's results list (a rejected asset keeps none)."""
    from sinks.objects.base import StorageError

    for result in asset.results.values():
        data = result.get("data")
        found = data.get("derived") if isinstance(data, Mapping) else None
        for uri in (found.values() if isinstance(found, Mapping) else ()):
            if not isinstance(uri, str) or not uri:
                continue
            try:
                rt.storage.delete(uri)
            except StorageError as exc:
                if not exc.permanent:
                    raise
                log.warning("rejected asset %s: %s stays (%s)", asset.asset_id, uri, exc)


def decide(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    entry = decision_of(cmd)
    asset = known_asset(rt, cmd.asset_id)
    if any(h.get("command_id") == cmd.command_id
           for h in (asset.moderation or {}).get("history", [])):
        return _finish(rt, asset, sent, 0)  # applied before (a duplicate or a replay)
    problem = moderation.transition_problem(asset.moderation_status, entry["status"])
    if problem is not None:  # two reviewers raced; the API checked before publishing
        log.info("moderation of %s by %s ignored: %s", cmd.asset_id, entry["by"], problem)
        return 0
    rejected = entry["status"] == "rejected"
    uri = set_aside(rt, asset) if rejected else None
    if rejected:
        _drop_derived(rt, asset)
    refinalize = (not rejected and asset.status == "complete"
                  and asset.on_success_result is None
                  and bool(asset.on_success or rt.handlers))

    def plan(new: Asset) -> list[dict[str, Any]]:
        payload = payload_bytes(new.to_json(), EVENT, new.version, rt.settings.update_budget)
        return [{"delivery_id": _delivery_id(new.asset_id, cmd.command_id, url), "event": EVENT,
                 "url": url, "payload": payload} for url in notification_urls(rt, new)]

    done = rt.store.decide_moderation(cmd.asset_id, entry, uri=uri, refinalize=refinalize,
                                      plan_deliveries=plan)
    if done is None:
        return _finish(rt, known_asset(rt, cmd.asset_id), sent, 0)
    new, fresh = done
    publish_update(rt, new, sent)
    ts = now_ms()
    for d in fresh:
        delivery = WebhookDelivery(delivery_id=d["delivery_id"], asset_id=new.asset_id,
                                   version=new.version, event=d["event"], url=d["url"],
                                   payload=d["payload"], attempt=1, due_at=0, created_at=ts)
        rt.producer.send(rt.settings.topic("webhooks"), new.asset_id, delivery.to_bytes())
    return _finish(rt, new, sent, 1)


def hold(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    """Put an asset nobody moderates in the review queue (as an upload with
    ``moderation=manual``)."""
    new = rt.store.hold_for_moderation(cmd.asset_id)
    if new is None:
        return _finish(rt, known_asset(rt, cmd.asset_id), sent, 0)
    publish_update(rt, new, sent)
    return _finish(rt, new, sent, 1)


def _finish(rt: Runtime, asset: Asset, sent: list[Any], changed: int) -> int:
    """A finished asset whose completion steps are due (an approval, or a crash between the
    decision and them) runs them now."""
    if asset.final and asset.finalized_version is None:
        complete(rt, asset, sent)
    return changed
