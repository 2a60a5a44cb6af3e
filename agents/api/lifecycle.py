"""Asset lifecycle over HTTP: ``DELETE``, ``PATCH`` and ``POST .../reprocess`` of one asset.

The API decides and never writes asset state: a delete or a patch is an
:class:`~schemas.records.AssetCommand` on darkroom.commands that the sink applies
(:mod:`agents.streams.lifecycle`); a reprocess is a replay of the asset's upload (the replay
engine's event, :func:`agents.replay.event_from_asset`) with a fresh ``reprocess_id``, which the
router plans as new requests. All three answer 202 with the id to follow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel

from agents.policy import limits


class CommandAccepted(BaseModel):
    asset_id: str
    command: str
    command_id: str
    status: str = "accepted"
    location: str


class ReprocessAccepted(CommandAccepted):
    postprocesses: list[str]


AssetIdPath = Annotated[str, PathParam(min_length=1, max_length=limits.MAX_ASSET_ID)]


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, "the body is not UTF-8") from exc
    if limits.json_depth(text) > 3:
        raise HTTPException(422, "the body nests too deeply")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def mount_lifecycle(app: FastAPI, get_state: Callable[[], Any], auth: Sequence[Any],
                    responses: dict[int | str, dict[str, Any]]) -> None:
    """Add the lifecycle routes (``get_state``: the API's state, with store, producer,
    settings, root and instance)."""

    async def known(asset_id: str) -> Any:
        from sinks.store.lifecycle import tombstone

        st = get_state()
        asset = await asyncio.to_thread(st.store.get_asset, asset_id)
        if asset is None:
            gone = await asyncio.to_thread(tombstone, st.store, asset_id)
            raise HTTPException(404, f"asset {asset_id} was deleted" if gone
                                else f"no asset {asset_id}")
        return asset

    def publish(asset_id: str, command: str, payload: dict[str, Any]) -> CommandAccepted:
        from agents.streams.lifecycle import publish_command

        st = get_state()
        cid = publish_command(st.root, asset_id, command, payload, f"api:{st.instance}")
        return CommandAccepted(asset_id=asset_id, command=command, command_id=cid,
                               location=f"/v1/assets/{asset_id}")

    @app.delete("/v1/assets/{asset_id}", dependencies=list(auth), status_code=202,
                response_model=CommandAccepted, responses=responses)
    async def delete_asset(asset_id: AssetIdPath) -> CommandAccepted:
        """Delete the asset: its original, derived objects, index entries and store rows
        (applied by the sink; ``GET`` answers 404 once it is done). One ``asset.deleted``
        webhook goes to its notification URLs."""
        await known(asset_id)
        return await asyncio.to_thread(publish, asset_id, "delete", {})

    @app.patch("/v1/assets/{asset_id}", dependencies=list(auth), status_code=202,
               response_model=CommandAccepted, responses=responses,
               openapi_extra={"requestBody": {"required": True, "content": {
                   "application/json": {"schema": {"type": "object", "properties": {
                       "tags": {"type": "array", "items": {"type": "string"}},
                       "context": {"type": "object",
                                   "additionalProperties": {"type": "string"}},
                       "metadata": {"type": "object"}},
                       "additionalProperties": False}}}}})
    async def patch_asset(asset_id: AssetIdPath, request: Request) -> CommandAccepted:
        """Replace the asset's ``tags``, ``context`` and/or ``metadata`` (each given field
        wholly; absent fields stay). The version moves once if anything changed."""
        from agents.streams.lifecycle import patch_changes

        body = _json_body(await request.body())
        try:
            changes = patch_changes(body)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        if not changes:
            raise HTTPException(422, "nothing to patch: give tags, context and/or metadata")
        await known(asset_id)
        return await asyncio.to_thread(publish, asset_id, "patch", changes)

    @app.post("/v1/assets/{asset_id}/reprocess", dependencies=list(auth), status_code=202,
              response_model=ReprocessAccepted, responses={**responses, 409: responses[422]},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": {"type": "object", "properties": {
                      "postprocesses": {"type": "array", "items": {"type": "string"}}},
                      "additionalProperties": False}}}}})
    async def reprocess(asset_id: AssetIdPath, request: Request) -> ReprocessAccepted:
        """Run post-processes of this asset again (``postprocesses``: names; default every one
        that applies), as new requests: each result lands as a new version."""
        from agents.streams.lifecycle import publish_reprocess, reprocess_problem

        st = get_state()
        body = _json_body(await request.body())
        unknown = sorted(set(body) - {"postprocesses"})
        if unknown:
            raise HTTPException(422, f"unknown fields: {', '.join(unknown)} (postprocesses)")
        names = body.get("postprocesses") or []
        if not isinstance(names, list):
            raise HTTPException(422, "postprocesses must be a list of names")
        try:
            names = list(dict.fromkeys(limits.names(names, "postprocesses")))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        asset = await known(asset_id)
        problem = reprocess_problem(st.root, asset, names)
        if problem is not None:
            raise HTTPException(*problem)
        rid = await asyncio.to_thread(publish_reprocess, st.root, asset, names)
        return ReprocessAccepted(asset_id=asset_id, command="reprocess",
                                 command_id=f"reprocess:{rid}",
                                 location=f"/v1/assets/{asset_id}", postprocesses=names)
