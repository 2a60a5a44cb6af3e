"""The moderation routes: the review queue and a reviewer's decision.

The API never writes an asset: ``POST /v1/assets/{id}/moderation`` publishes an
:class:`~schemas.records.AssetCommand` (``moderation``) that the sink applies (see
:mod:`agents.streams.moderation`); the answer is 202 with the command's id, and the asset's
``moderation`` shows the decision once applied (milliseconds later). Who decided is the API key's
name (``DARKROOM_API_KEY_HASHES`` entries ``name:digest``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from agents.policy import limits
from schemas.records import AssetCommand, now_ms
from sinks.store import moderation
from sinks.store.metadata import Asset, MetadataStore

from .guards import hash_key
from .params import folder_query

AssetId = Annotated[str, PathParam(min_length=1, max_length=limits.MAX_ASSET_ID)]


class Decision(BaseModel):
    """A reviewer's decision."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["approved", "rejected"]
    note: str = Field(default="", max_length=2000, description="why (kept in the history)")


class DecisionAccepted(BaseModel):
    asset_id: str
    status: str = Field(description="the decision, applied by the sink in order")
    command_id: str
    decided_by: str
    location: str


class ModerationPage(BaseModel):
    items: list[Any] = Field(description="assets (as GET /v1/assets/{id}), oldest first")
    next_cursor: str | None


class _Problem(BaseModel):
    detail: str


def reviewer(request: Request, names: Mapping[str, str]) -> str:
    """The name of the key this request came with (the guard has checked it already)."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization") or ""
    if key is None and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return names.get(hash_key(key or ""), "unknown")


def _cursor(asset: Asset) -> str:
    return f"{asset.created_at}:{asset.asset_id}"


def _after(cursor: str | None) -> tuple[int, str] | None:
    if cursor is None:
        return None
    at, sep, aid = cursor.partition(":")
    if not sep or not at.isdigit() or not aid:
        raise HTTPException(400, "cursor must be a next_cursor of a previous page")
    return int(at), aid


def make_router(get_store: Callable[[], MetadataStore],
                send_command: Callable[[AssetCommand], None],
                to_out: Callable[[Asset], Any], key_names: Mapping[str, str],
                auth: Sequence[Any]) -> APIRouter:
    """``send_command`` publishes a command (blocking); ``to_out`` renders an asset as the
    asset routes do."""
    router = APIRouter(tags=["moderation"], dependencies=list(auth))

    @router.get("/v1/moderation", response_model=ModerationPage)
    async def queue(
        status: Annotated[Literal["pending", "approved", "rejected"],
                          Query(description="moderation status")] = "pending",
        folder: Annotated[str | None, Query(description="this folder and the ones below",
                                            max_length=limits.MAX_FOLDER_BYTES)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=limits.MAX_ASSET_ID + 24)] = None,
    ) -> ModerationPage:
        """Assets by moderation status, oldest first (the review queue: ``status=pending``)."""
        folder = folder_query(folder)
        items = await asyncio.to_thread(get_store().moderation_queue, status, folder,
                                        limit + 1, _after(cursor))
        more = len(items) > limit
        items = items[:limit]
        return ModerationPage(items=[to_out(a) for a in items],
                              next_cursor=_cursor(items[-1]) if more and items else None)

    @router.post("/v1/assets/{asset_id}/moderation", status_code=202,
                 response_model=DecisionAccepted,
                 responses={404: {"model": _Problem}, 409: {"model": _Problem}})
    async def decide(asset_id: AssetId, decision: Decision, request: Request
                     ) -> DecisionAccepted:
        """Approve or reject an asset. 409 when the decision cannot follow its current
        moderation status (decided already the same way, or rejected: final)."""
        try:
            note = limits.bounded_text(decision.note, "note", 2000, controls=True) or ""
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        asset = await asyncio.to_thread(get_store().get_asset, asset_id)
        if asset is None:
            raise HTTPException(404, f"no asset {asset_id}")
        problem = moderation.transition_problem(asset.moderation_status, decision.status)
        if problem is not None:
            raise HTTPException(409, problem)
        by = reviewer(request, key_names)
        cmd = AssetCommand(asset_id=asset_id, command="moderation",
                           message=f"{decision.status} by {by}", issued_by=by,
                           issued_at=now_ms(), command_id=uuid.uuid4().hex,
                           payload=json.dumps({"status": decision.status, "note": note}))
        await asyncio.to_thread(send_command, cmd)
        return DecisionAccepted(asset_id=asset_id, status=decision.status,
                                command_id=cmd.command_id, decided_by=by,
                                location=f"/v1/assets/{asset_id}")

    return router
