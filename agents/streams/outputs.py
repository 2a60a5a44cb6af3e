"""Messages Darkroom publishes about an asset, bounded by construction.

An asset's merged state grows with its results (faces with embeddings, OCR text, video
segments); a message over the broker's limit would be refused. So every AssetUpdate and webhook
payload is built to fit ``budget`` bytes: when the whole state does not fit, the ``data`` of the
largest results is replaced by a reference (``{"_omitted": true, "_size": n, "_see": ...}``) —
the database keeps everything and ``GET /v1/assets/{id}`` returns it in full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from schemas.records import AssetUpdate


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def omitted(asset_id: str, size: int) -> dict[str, Any]:
    return {"_omitted": True, "_size": size, "_see": f"/v1/assets/{asset_id}"}


def fit_results(asset_id: str, results: Mapping[str, Mapping[str, Any]], excess: int
                ) -> dict[str, dict[str, Any]]:
    """``results`` with the data of the largest ones omitted until ``excess`` bytes are saved."""
    out = {k: dict(v) for k, v in results.items()}
    sizes = sorted(((len(_json(v.get("data"))), k) for k, v in out.items()), reverse=True)
    for size, name in sizes:
        if excess <= 0:
            break
        stub = omitted(asset_id, size)
        out[name]["data"] = stub
        excess -= size - len(_json(stub))
    return out


def _fit(build: Callable[[dict[str, dict[str, Any]], bool], bytes], asset_id: str,
         results: Mapping[str, Mapping[str, Any]], budget: int) -> bytes:
    data = build(dict(results), False)  # type: ignore[arg-type]
    if len(data) <= budget:
        return data
    data = build(fit_results(asset_id, results, len(data) - budget), False)
    if len(data) <= budget:
        return data
    return build(fit_results(asset_id, results, 1 << 62), True)  # last resort: no metadata


def update_bytes(asset: Any, budget: int) -> bytes:
    """The encoded AssetUpdate of a store :class:`~sinks.store.metadata.Asset`, at most
    ``budget``."""

    def build(results: dict[str, dict[str, Any]], drop_metadata: bool) -> bytes:
        return asset_update(asset, results, drop_metadata).to_bytes()

    return _fit(build, asset.asset_id, asset.results, budget)


def asset_update(asset: Any, results: Mapping[str, Any] | None = None,
                 drop_metadata: bool = False) -> AssetUpdate:
    return AssetUpdate(
        asset_id=asset.asset_id,
        version=asset.version,
        status=asset.status,
        uri=asset.uri,
        filename=asset.filename,
        folder=asset.folder,
        content_type=asset.content_type,
        size_bytes=asset.size_bytes,
        info_json=_json(asset.info),
        tags=list(asset.tags),
        context=dict(asset.context),
        metadata_json=_json({"_omitted": True} if drop_metadata else asset.metadata),
        results_json=_json(asset.results if results is None else results),
        notices=list(asset.notices),
        refusals=list(asset.refusals),
        updated_at=asset.updated_at,
    )


def payload_bytes(asset_json: Mapping[str, Any], event: str, version: int, budget: int) -> bytes:
    """The webhook payload (:func:`sinks.webhooks.build_payload`), at most ``budget`` bytes."""
    from sinks.webhooks import build_payload

    def build(results: dict[str, dict[str, Any]], drop_metadata: bool) -> bytes:
        doc = {**asset_json, "results": results}
        if drop_metadata:
            doc["metadata"] = {"_omitted": True}
        return build_payload(doc, event, version)

    return _fit(build, str(asset_json.get("asset_id")), asset_json.get("results") or {}, budget)


def publish_update(rt: Any, asset: Any, sent: list[Any], reply: bool = False) -> None:
    """Send one new version (as the outbox holds it) to the assets topic, and to the waiting
    API instance when ``reply``; ``sent`` collects it for the acknowledgement after flush."""
    s = rt.settings
    update = asset.encoded or update_bytes(asset, s.update_budget)
    rt.producer.send(s.topic("assets"), asset.asset_id, update)
    # a refusal is answered once its object is set aside (completion.complete sends it), so
    # a 422 never reaches the uploader while the refused original is still readable
    held = asset.status == "refused" and asset.finalized_version is None
    if reply and asset.reply_to and not held:
        rt.producer.send(asset.reply_to, asset.asset_id, update)
    sent.append(asset)
