"""The HTTP upload API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

``POST /v1/assets`` stores the object, publishes its UploadEvent and answers at once (async, 202)
or after the sync post-processes ran (sync: 201 with results and notices, or 422 with the refusal
reasons). Replies of sync uploads come back over this replica's own Kafka reply topic
(:mod:`agents.replies`), so any number of replicas can run side by side.

Nothing is half-written: the body is spooled to a temporary file and checked (size, magic bytes,
folder, pixel count) before anything is stored; a failure to publish deletes the stored object.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from agents.broker import OutputProducer
from agents.metrics import SYNC_WAIT
from agents.records import AssetUpdate, UploadEvent, now_ms
from agents.replies import ReplyListener
from agents.settings import Settings
from agents.sniff import OCTET, sniff
from agents.storage import normalize_folder, safe_filename
from sinks.store import Asset, MetadataStore, UploadRecord

log = logging.getLogger("darkroom.api")

CHUNK = 1024 * 1024


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TaskResultOut(BaseModel):
    task: str
    status: str
    mode: str
    data: dict[str, Any] | None = None
    error: str | None = None
    verdicts: list[dict[str, Any]] = Field(default_factory=list)


class AssetOut(BaseModel):
    asset_id: str
    status: str
    version: int
    filename: str
    folder: str
    content_type: str
    size_bytes: int
    uri: str
    info: dict[str, Any]
    tags: list[str]
    context: dict[str, str]
    metadata: dict[str, Any]
    results: dict[str, TaskResultOut]
    notices: list[str]
    refusals: list[str]
    unknown_postprocesses: list[str]
    on_success: dict[str, Any] | None = Field(
        default=None, description="outcome of the on_success script and Python handlers")
    webhooks: list[dict[str, Any]] = Field(
        default_factory=list, description="webhook deliveries: url, state, attempts, last error")
    created_at: int
    updated_at: int
    completed_at: int | None = None


class Accepted(BaseModel):
    asset_id: str
    status: Literal["pending"]
    location: str


class SyncAnswer(BaseModel):
    asset_id: str
    status: str
    location: str
    asset: AssetOut
    notices: list[str]
    refusals: list[str]


class AssetPage(BaseModel):
    items: list[AssetOut]
    next_cursor: str | None


class Problem(BaseModel):
    detail: str


def asset_out(a: Asset) -> AssetOut:
    return AssetOut(
        asset_id=a.asset_id, status=a.status, version=a.version, filename=a.filename,
        folder=a.folder, content_type=a.content_type, size_bytes=a.size_bytes, uri=a.uri,
        info=a.info, tags=a.tags, context=a.context, metadata=a.metadata,
        results={k: TaskResultOut.model_validate(
            {f: v[f] for f in TaskResultOut.model_fields if v.get(f) is not None})
            for k, v in a.results.items()},
        notices=a.notices, refusals=a.refusals, unknown_postprocesses=a.unknown_postprocesses,
        on_success=a.on_success_result,
        created_at=a.created_at, updated_at=a.updated_at, completed_at=a.completed_at,
    )


def public_delivery(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("url", "event", "version", "state", "attempts", "http_status", "last_error",
            "delivered_at")
    return {k: row.get(k) for k in keys}


def split_list(values: list[str] | None) -> list[str]:
    """Repeatable and/or comma-separated form values -> clean list."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def parse_context(raw: str | None) -> dict[str, str]:
    """A JSON object, or Cloudinary's ``key=value|key2=value2``."""
    if not raw:
        return {}
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"context is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise HTTPException(400, "context must be a JSON object")
        return {str(k): str(v) for k, v in value.items()}
    pairs = {}
    for part in raw.split("|"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise HTTPException(400, f"context entry {part!r} is not key=value")
        pairs[key.strip()] = value
    return pairs


class ApiState:
    """What one API process holds: settings, storage, store, producer, reply listener."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from agents.storage import build_storage

        self.settings = settings
        self.bootstrap = bootstrap
        self.instance = settings.api_instance or f"{socket.gethostname()}-{settings.api_port}"
        self.reply_topic = settings.topic("replies", _topic_safe(self.instance))
        self.storage = build_storage(settings)
        self.store = MetadataStore(settings.sqlalchemy_url)
        self.producer = OutputProducer(bootstrap, **{"linger.ms": 0})
        self.replies = ReplyListener(bootstrap, self.reply_topic)
        self.key_hashes = {h.lower() for h in settings.api_key_hashes}
        self.tmp_dir = Path(settings.data_dir) / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.replies.stop()
        self.store.close()


def _topic_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:100]


def create_api(settings: Settings, bootstrap: str) -> FastAPI:
    state: dict[str, ApiState] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        st = ApiState(settings, bootstrap)
        await asyncio.to_thread(st.replies.start)
        if not st.key_hashes:
            log.warning("no API keys configured (DARKROOM_API_KEY_HASHES): every request gets "
                        "401; create one with `darkroom apikey`")
        state["s"] = st
        yield
        st.close()

    app = FastAPI(
        title="Darkroom upload API",
        version="1.0",
        description="Upload assets for post-processing; read their merged results.",
        lifespan=lifespan,
    )

    def get_state() -> ApiState:
        return state["s"]

    async def require_key(
        x_api_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        st = get_state()
        key = x_api_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if not key:
            raise HTTPException(401, "missing API key (X-API-Key header)",
                                headers={"WWW-Authenticate": "Bearer"})
        digest = hash_key(key)
        if not any(hmac.compare_digest(digest, h) for h in st.key_hashes):
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def refuse_oversize(request: Request,
                              call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """413 before reading a body that announces itself as too large."""
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes + 64 * 1024  # multipart framing
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"upload larger than {settings.max_upload_bytes} "
                                           "bytes"}, status_code=413)
        return await call_next(request)

    auth = [Depends(require_key)]
    from agents.api_faces import make_router
    from agents.api_similarity import make_router as make_similarity_router

    app.include_router(make_router(lambda: get_state().store.engine, auth))
    app.include_router(make_similarity_router(lambda: get_state().store.engine,
                                              lambda: settings.data_dir, auth))
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem}, 401: {"model": Problem}, 413: {"model": Problem},
        422: {"model": Problem}, 503: {"model": Problem},
    }

    @app.post("/v1/assets", dependencies=auth, status_code=202,
              responses={201: {"model": SyncAnswer}, 202: {"model": Accepted}, **errors})
    async def upload(
        file: Annotated[UploadFile, File(description="the asset")],
        folder: Annotated[str, Form()] = "/",
        postprocess: Annotated[list[str] | None, Form(
            description="post-process or task names; repeatable or comma-separated")] = None,
        mode: Annotated[Literal["async", "sync"], Form()] = "async",
        notification_url: Annotated[str | None, Form()] = None,
        on_success: Annotated[str | None, Form()] = None,
        tags: Annotated[list[str] | None, Form(description="repeatable or comma-separated")]
        = None,
        context: Annotated[str | None, Form(
            description="JSON object or key=value|key2=value2")] = None,
    ) -> Response:
        st = get_state()
        try:
            norm_folder = normalize_folder(folder)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        ctx = parse_context(context)
        tag_list = split_list(tags)
        pp_list = split_list(postprocess)
        filename = safe_filename(file.filename or "upload")
        spooled = await _spool(st, file)
        try:
            return await _accept(st, spooled, filename, norm_folder, pp_list, mode,
                                 notification_url, on_success, tag_list, ctx)
        finally:
            spooled.unlink(missing_ok=True)

    @app.get("/v1/assets/{asset_id}", dependencies=auth, response_model=AssetOut,
             responses={404: {"model": Problem}})
    async def get_asset(asset_id: str) -> AssetOut:
        st = get_state()
        found = await asyncio.to_thread(st.store.get_asset, asset_id)
        if found is None:
            raise HTTPException(404, f"no asset {asset_id}")
        out = asset_out(found)
        out.webhooks = [public_delivery(d) for d in
                        await asyncio.to_thread(st.store.deliveries_of, asset_id)]
        return out

    @app.get("/v1/assets", dependencies=auth, response_model=AssetPage)
    async def list_assets(
        folder: Annotated[str | None, Query(description="folder prefix")] = None,
        status: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")]
        = None,
    ) -> AssetPage:
        if folder is not None:
            try:
                folder = normalize_folder(folder)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
        items = await asyncio.to_thread(get_state().store.list_assets, folder, status,
                                        limit + 1, cursor)
        more = len(items) > limit
        items = items[:limit]
        return AssetPage(items=[asset_out(a) for a in items],
                         next_cursor=items[-1].asset_id if more and items else None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = "s" in state and state["s"].replies._thread is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from agents.metrics import render

        body, ctype = render()
        return Response(body, media_type=ctype)

    return app


async def _spool(st: ApiState, file: UploadFile) -> Path:
    """Copy the upload to a private temp file, refusing it past the size limit (413)."""
    limit = st.settings.max_upload_bytes
    fd, name = tempfile.mkstemp(dir=st.tmp_dir, prefix="upload-")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload larger than {limit} bytes")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise HTTPException(400, "the uploaded file is empty")
    return path


def _inspect(st: ApiState, path: Path) -> tuple[str, dict[str, Any]]:
    """Content type by magic bytes; image header probe with the pixel limit (blocking)."""
    from processors.imaging import probe_header
    from processors.registry import ProcessorError

    with open(path, "rb") as f:
        head = f.read(512)
    ctype = sniff(head)
    props: dict[str, Any] = {}
    if ctype.startswith("image/"):
        try:
            props = probe_header(path)
        except ProcessorError as exc:
            raise HTTPException(422, f"not a readable image: {exc}") from exc
        pixels = int(props["width"]) * int(props["height"])
        if pixels > st.settings.max_image_pixels:
            raise HTTPException(
                422, f"image is {props['width']}x{props['height']} = {pixels} pixels, over the "
                f"limit of {st.settings.max_image_pixels} (decompression bomb guard)")
    return ctype, props


async def _accept(st: ApiState, spooled: Path, filename: str, folder: str, postprocess: list[str],
                  mode: str, notification_url: str | None, on_success: str | None,
                  tags: list[str], context: dict[str, str]) -> Response:
    s = st.settings
    ctype, props = await asyncio.to_thread(_inspect, st, spooled)
    asset_id = uuid.uuid4().hex[:20]
    key = st.storage.original_key(asset_id, folder, filename)
    uri = await asyncio.to_thread(st.storage.put_file, spooled, key, ctype or OCTET)
    ev = UploadEvent(
        asset_id=asset_id, uri=uri, filename=filename, folder=folder, content_type=ctype,
        size_bytes=spooled.stat().st_size, uploaded_at=now_ms(), postprocess=postprocess,
        mode=mode, notification_url=notification_url, on_success=on_success, tags=tags,
        context=context, width=props.get("width"), height=props.get("height"),
        format=props.get("format"), reply_to=st.reply_topic if mode == "sync" else None,
    )
    waiter = st.replies.expect(asset_id) if mode == "sync" else None
    try:
        await asyncio.to_thread(st.store.create_placeholder, placeholder(ev))
        await asyncio.to_thread(_publish, st, ev)
    except Exception as exc:
        st.replies.forget(asset_id)
        await asyncio.to_thread(st.storage.delete, uri)
        await asyncio.to_thread(st.store.delete_asset, asset_id)
        log.exception("publishing upload %s failed", asset_id)
        raise HTTPException(503, "the upload could not be queued; nothing was kept") from exc
    location = f"/v1/assets/{asset_id}"
    if waiter is None:
        return JSONResponse(Accepted(asset_id=asset_id, status="pending",
                                     location=location).model_dump(),
                            status_code=202, headers={"Location": location})
    waited = time.perf_counter()
    try:
        update: AssetUpdate | None = await asyncio.wait_for(waiter, timeout=s.sync_timeout_s)
    except TimeoutError:
        st.replies.forget(asset_id)
        update = None
    SYNC_WAIT.labels("timeout" if update is None else "answered").observe(
        time.perf_counter() - waited)
    return await _sync_answer(st, asset_id, uri, update, location)


def placeholder(ev: UploadEvent) -> UploadRecord:
    return UploadRecord(
        asset_id=ev.asset_id, upload_key="", uri=ev.uri, filename=ev.filename,
        folder=ev.folder, content_type=ev.content_type, size_bytes=ev.size_bytes, mode=ev.mode,
        notification_url=ev.notification_url, on_success=ev.on_success,
        properties=ev.properties(), tags=ev.tags, context=ev.context,
        uploaded_at=ev.uploaded_at, tasks=[], reply_to=ev.reply_to, requested=list(ev.postprocess),
    )


def _publish(st: ApiState, ev: UploadEvent) -> None:
    st.producer.send(st.settings.topic("uploads"), ev.asset_id, ev.to_bytes())
    st.producer.flush_sync(timeout=10)


async def _sync_answer(st: ApiState, asset_id: str, uri: str, update: AssetUpdate | None,
                       location: str) -> Response:
    s = st.settings
    if update is None:
        msg = f"sync post-processing did not finish within {s.sync_timeout_s:g}s"
        if s.sync_timeout_policy == "refuse":
            await _refuse(st, asset_id, uri, msg)
        else:
            changed = await asyncio.to_thread(st.store.add_asset_verdict, asset_id, "notice",
                                              msg + "; results follow asynchronously")
            if changed is not None:
                await asyncio.to_thread(_announce, st, changed)
    elif update.status == "refused":
        await _refuse(st, asset_id, uri, None)
    asset = await asyncio.to_thread(st.store.get_asset, asset_id)
    if asset is None:  # the router has not recorded it yet (timeout before routing)
        raise HTTPException(503, "the upload is queued but not yet recorded; poll " + location)
    body = SyncAnswer(asset_id=asset_id, status=asset.status, location=location,
                      asset=asset_out(asset), notices=asset.notices, refusals=asset.refusals)
    code = 422 if asset.status == "refused" else 201
    return JSONResponse(body.model_dump(), status_code=code, headers={"Location": location})


async def _refuse(st: ApiState, asset_id: str, uri: str, reason: str | None) -> None:
    """Delete or quarantine the object and record the refusal (and where the object went)."""
    if st.settings.refused_objects == "quarantine":
        new_uri = await asyncio.to_thread(st.storage.move, uri, st.storage.quarantine_key(uri))
    else:
        await asyncio.to_thread(st.storage.delete, uri)
        new_uri = ""
    if reason is None:  # refused by a validation rule: the reason is already on the asset
        changed = await asyncio.to_thread(st.store.set_uri, asset_id, new_uri)
    else:
        changed = await asyncio.to_thread(st.store.add_asset_verdict, asset_id, "refuse",
                                          reason, new_uri)
    if changed is not None:
        await asyncio.to_thread(_announce, st, changed)


def _announce(st: ApiState, asset: Asset) -> None:
    """Publish a change the API made (refusal, notice) like the sink publishes its own."""
    from agents.router import asset_update

    st.producer.send(st.settings.topic("assets"), asset.asset_id, asset_update(asset).to_bytes())
    st.producer.flush_sync(timeout=10)
