"""Declared storage effects of action tasks, executed by the sink (processors never touch
storage): ``register(..., effect="quarantine" | "remove-original")``.

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
    if asset is None or not asset.uri:
        return None  # gone already
    # only the current request's result acts (a stale result of an older upload does not)
    if asset.results.get(res.postprocess, {}).get("status") != "ok":
        return None
    reason = str(data.get("reason") or res.postprocess)
    try:
        if proc.effect == "quarantine":
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
