"""Decisions made outside the pipeline, applied by the sink (the single writer of asset state).

The API (and the CLI) never write an asset: they publish an :class:`AssetCommand` on
``darkroom.commands`` (key = asset id), and the sink applies it in order with the asset's
results. One handler per command kind lives in :data:`HANDLERS`; each is idempotent (a replayed
or duplicated command changes nothing and sends nothing) and returns 1 when the asset changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.composition import Runtime
from agents.streams import lifecycle
from agents.streams.completion import complete
from agents.streams.outputs import publish_update
from agents.streams.poison import Poison
from schemas.records import AssetCommand

Handler = Callable[[Runtime, AssetCommand, list[Any]], int]


def apply_command(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    handler = HANDLERS.get(cmd.command)
    if handler is None:  # validation admits only known kinds; a newer producer's is poison
        raise Poison(f"no handler for command {cmd.command!r}")
    return handler(rt, cmd, sent)


def known_asset(rt: Runtime, asset_id: str) -> Any:
    asset = rt.store.get_asset(asset_id)
    if asset is None:
        raise Poison(f"a command for {asset_id!r}, an asset the store does not know")
    return asset


def verdict(rt: Runtime, cmd: AssetCommand, sent: list[Any]) -> int:
    """The API's refusal (a sync wait that ran out) or notice: recorded once, published, and a
    refusal completed like any other."""
    asset = rt.store.add_asset_verdict(cmd.asset_id, cmd.command, cmd.message)
    if asset is None:
        asset = known_asset(rt, cmd.asset_id)
        changed = 0
    else:
        publish_update(rt, asset, sent, reply=asset.status == "refused")
        changed = 1
    if asset.final and asset.finalized_version is None:
        complete(rt, asset, sent)
    return changed


def _moderation_handlers() -> dict[str, Handler]:
    from agents.streams import moderation

    return {"moderation": moderation.decide, "moderate": moderation.hold}


HANDLERS: dict[str, Handler] = {
    "refuse": verdict,
    "notice": verdict,
    **_moderation_handlers(),
    "delete": lifecycle.delete,
    "patch": lifecycle.patch,
    "reprocess": lifecycle.reprocess,
}
