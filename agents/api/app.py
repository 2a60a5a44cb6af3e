"""The HTTP upload API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

``POST /v1/assets`` stores the object, publishes its UploadEvent and answers at once (async, 202)
or after the sync post-processes ran (sync: 201 with results and notices, or 422 with the refusal
reasons). Replies of sync uploads come back over this replica's own Kafka reply topic
(:mod:`agents.api.replies`), so any number of replicas can run side by side.

Nothing is half-written: the body is spooled to a temporary file and handed to the one ingest
function (:func:`agents.ingest.ingest`: size, magic bytes, folder, pixel count checked before
anything is stored; a failure to publish deletes the stored object and the placeholder), whose
typed refusals are answered here (400, 413, 422, 503). The services come from the process's
composition root (:class:`agents.composition.Runtime`).

Hostile clients: :mod:`agents.api.guards` checks the key before a body byte is read, counts every
body byte and times out stalled bodies and headers; the form is parsed here with strict UTF-8 and
every field bounded by :mod:`agents.policy.limits` as it arrives (400 naming the limit).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from agents.api.console import mount_console
from agents.api.definitions import mount_definitions
from agents.api.guards import (
    MULTIPART_ALLOWANCE,
    SMALL_BODY,
    BodyLimit,
    FormError,
    FormSpec,
    GuardConfig,
    RequestGuard,
    StrictForm,
    key_problem,
    parse_strict_form,
)
from agents.api.guards import hash_key as hash_key
from agents.api.lifecycle import mount_lifecycle
from agents.api.media import DerivedOut, media_urls
from agents.api.media import make_router as media_router
from agents.api.moderation import make_router as moderation_router
from agents.api.params import folder_query
from agents.api.replies import ReplyListener
from agents.api.routes import mount_task_routes
from agents.composition import Runtime
from agents.ingest import (
    IngestError,
    IngestUnavailable,
    InvalidUpload,
    UnprocessableUpload,
    UploadFields,
    UploadTooLarge,
    ingest,
    new_asset_id,
)
from agents.ingest import notification_url as notification_url
from agents.ingest import parse_context as parse_context
from agents.ingest import placeholder as placeholder
from agents.ingest import split_list as split_list
from agents.kafka.headers import TRACE, child
from agents.kafka.producer import OutputProducer
from agents.metrics import SYNC_WAIT
from agents.policy import limits
from agents.settings import Settings
from schemas.records import AssetCommand, AssetUpdate
from sinks.objects.facade import Storage
from sinks.store.metadata import Asset, MetadataStore

log = logging.getLogger("darkroom.api")

FIELD_CAPS: Final[Mapping[str, int]] = {
    "folder": limits.MAX_FOLDER_BYTES,
    "mode": 16,
    "notification_url": 4 * limits.MAX_URL,  # limits.url counts characters: up to 4 bytes each
    "eager_notification_url": 4 * limits.MAX_URL,
    "on_success": limits.MAX_ON_SUCCESS_BYTES,
    "context": limits.MAX_CONTEXT_RAW_BYTES,
    "tags": limits.MAX_TAGS * (4 * limits.MAX_TAG + 2),  # all tags parts together
    "postprocess": limits.MAX_POSTPROCESS * (4 * limits.MAX_NAME + 2),
    "moderation": 4 * limits.MAX_NAME,
    "upload_preset": 4 * limits.MAX_NAME,
}
"""Raw bytes each upload form field may hold before it is decoded: the most its limit in
:mod:`agents.policy.limits` can accept, so only the exact check there decides about valid values."""
API_KEY: Final = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="an API key (`darkroom apikey`)")
"""The key header as an OpenAPI ``apiKey`` security scheme (the Authorize button of /docs)."""
OTHER_FIELD_CAP: Final = 4096  # fields the API does not know are ignored, but bounded
MAX_FORM_PARTS: Final = limits.MAX_TAGS + limits.MAX_POSTPROCESS + 16
MAX_FORM_TEXT_BYTES: Final = sum(FIELD_CAPS.values()) + 128 * 1024  # + part headers


class TaskResultOut(BaseModel):
    task: str
    status: str
    mode: str
    data: dict[str, Any] | None = None
    error: str | None = None
    verdicts: list[dict[str, Any]] = Field(default_factory=list)
    derived: DerivedOut | None = Field(
        default=None, description="the objects the result stored: storage URIs and HTTP URLs")


class AssetOut(BaseModel):
    asset_id: str
    status: str
    version: int
    filename: str
    folder: str
    content_type: str
    size_bytes: int
    uri: str
    original_url: str | None = Field(
        default=None, description="URL of this API serving the original (Range supported)")
    info: dict[str, Any]
    info_urls: dict[str, str] = Field(
        default_factory=dict, description="info keys that name a stored object -> its URL")
    tags: list[str]
    context: dict[str, str]
    metadata: dict[str, Any]
    results: dict[str, TaskResultOut]
    notices: list[str]
    refusals: list[str]
    unknown_postprocesses: list[str]
    on_success: dict[str, Any] | None = Field(
        default=None, description="outcome of the on_success script and Python handlers")
    moderation: dict[str, Any] | None = Field(
        default=None, description="status (pending | approved | rejected), kind, reasons, "
        "decided_by, decided_at, note, history; null when the asset is not moderated")
    webhooks: list[dict[str, Any]] = Field(
        default_factory=list, description="webhook deliveries: url, state, attempts, last error")
    created_at: int
    updated_at: int
    completed_at: int | None = None


class Accepted(BaseModel):
    asset_id: str
    status: Literal["pending"]
    location: str
    moderation: Literal["pending"] | None = None


class SyncAnswer(BaseModel):
    asset_id: str
    status: str
    location: str
    asset: AssetOut
    notices: list[str]
    refusals: list[str]
    moderation: str | None = Field(
        default=None, description="pending: a rule held the upload for review (answer 202)")


class PostProcessOut(BaseModel):
    name: str
    task: str
    enabled: bool = Field(description="automatic (true) or manual-only")
    mode: str
    source: Literal["yaml", "api", "registered"] = Field(
        default="yaml", description="the YAML bootstrap, /v1/postprocesses, or a registered "
        "task no entry names")


class PostProcessList(BaseModel):
    items: list[PostProcessOut]
    known: list[str] = Field(description="every name an upload's postprocess may use")
    definitions_version: int = Field(
        default=0, description="the counter of the definitions stored over the API")


class AssetPage(BaseModel):
    items: list[AssetOut]
    next_cursor: str | None


class Problem(BaseModel):
    detail: str


def asset_out(a: Asset) -> AssetOut:
    urls = media_urls(a)
    return AssetOut(
        asset_id=a.asset_id, status=a.status, version=a.version, filename=a.filename,
        folder=a.folder, content_type=a.content_type, size_bytes=a.size_bytes, uri=a.uri,
        original_url=urls.original, info=a.info, info_urls=urls.info,
        tags=a.tags, context=a.context, metadata=a.metadata,
        results={k: TaskResultOut.model_validate(
            {**{f: v[f] for f in TaskResultOut.model_fields if v.get(f) is not None},
             "derived": urls.derived.get(k)})
            for k, v in a.results.items()},
        notices=a.notices, refusals=a.refusals, unknown_postprocesses=a.unknown_postprocesses,
        on_success=a.on_success_result, moderation=a.moderation,
        created_at=a.created_at, updated_at=a.updated_at, completed_at=a.completed_at,
    )


def public_delivery(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("url", "event", "version", "state", "attempts", "http_status", "last_error",
            "delivered_at")
    return {k: row.get(k) for k in keys}


def _array(item_max: int, max_items: int, description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "maxLength": item_max},
            "maxItems": max_items, "description": description}


UPLOAD_FORM: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the asset"},
        "folder": {"type": "string", "default": "/", "maxLength": limits.MAX_FOLDER_BYTES,
                   "description": f"at most {limits.MAX_FOLDER_BYTES} bytes, "
                   f"{limits.MAX_FOLDER_DEPTH} levels, {limits.MAX_FOLDER_SEGMENT_BYTES} bytes "
                   "a level"},
        "postprocess": _array(limits.MAX_NAME, limits.MAX_POSTPROCESS,
                              "post-process or task names; repeatable or comma-separated"),
        "mode": {"type": "string", "enum": ["async", "sync"], "default": "async"},
        "notification_url": {"type": "string", "maxLength": limits.MAX_URL,
                             "description": "http(s) URL of a plain DNS name or IP address"},
        "eager_notification_url": {"type": "string", "maxLength": limits.MAX_URL,
                                   "description": "receives one signed webhook when the "
                                   "upload's renditions are ready"},
        "on_success": {"type": "string",
                       "description": f"script, at most {limits.MAX_ON_SUCCESS_BYTES} bytes"},
        "tags": _array(limits.MAX_TAG, limits.MAX_TAGS, "repeatable or comma-separated"),
        "context": {"type": "string", "description": "flat JSON object of strings or "
                    f"key=value|key2=value2; at most {limits.MAX_CONTEXT_ENTRIES} entries, "
                    f"{limits.MAX_CONTEXT_BYTES} bytes"},
        "moderation": {"type": "string", "maxLength": limits.MAX_NAME,
                       "description": "manual (a reviewer decides), or the name of a "
                       "post-process whose 'moderate' rules decide"},
        "upload_preset": {"type": "string", "maxLength": limits.MAX_NAME,
                          "description": "a preset of /v1/presets: its post-processes and "
                          "defaults apply"},
    },
}
UPLOAD_BODY: Final[dict[str, Any]] = {"requestBody": {
    "required": True, "content": {"multipart/form-data": {"schema": UPLOAD_FORM}}}}


def guard_config(settings: Settings,
                 task_limits: Mapping[tuple[str, str], BodyLimit] | None = None) -> GuardConfig:
    """The body limits per route: the upload's file limit plus multipart framing, those the
    tasks' routes declare (``task_limits``, see :mod:`agents.api.routes`), 64 KiB elsewhere."""
    upload = settings.max_upload_bytes
    return GuardConfig(
        key_hashes=frozenset(settings.api_keys()),
        body_limits={
            **(task_limits or {}),
            ("POST", "/v1/assets"): BodyLimit(upload + MULTIPART_ALLOWANCE,
                                              f"upload larger than {upload} bytes"),
        },
        default_limit=BodyLimit(SMALL_BODY, f"request body larger than {SMALL_BODY} bytes"),
        body_timeout_s=settings.api_body_timeout_s,
        body_deadline_s=settings.api_body_deadline_s,
        max_header_bytes=settings.api_max_header_bytes,
    )


class ApiState:
    """What one API process holds beyond its composition root (:class:`agents.composition.
    Runtime`, which owns settings, store, storage and producer): the reply listener of its sync
    uploads and the spool folder of request bodies."""

    def __init__(self, root: Runtime) -> None:
        settings = root.settings
        self.root = root
        self.settings = settings
        self.instance = settings.api_instance or f"{socket.gethostname()}-{settings.api_port}"
        self.reply_topic = settings.topic("replies", _topic_safe(self.instance))
        self.replies = ReplyListener(root.bootstrap, self.reply_topic)
        self.key_hashes = set(settings.api_keys())
        self.tmp_dir = Path(settings.data_dir) / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def store(self) -> MetadataStore:
        return self.root.store

    @property
    def storage(self) -> Storage:
        return self.root.storage

    @property
    def producer(self) -> OutputProducer:
        return self.root.producer

    def close(self) -> None:
        self.replies.stop()
        self.root.close()


def _topic_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:100]


def api_runtime(settings: Settings, bootstrap: str) -> Runtime:
    """The API process's composition root: its producer sends at once (``linger.ms=0``: an
    upload's event is what the client waits for)."""
    return Runtime(settings, bootstrap, producer_options={"linger.ms": 0})


def create_api(settings: Settings, bootstrap: str, *, root: Runtime | None = None) -> FastAPI:
    """The API app; its services come from ``root`` (default: :func:`api_runtime`), built when
    the app starts and closed when it stops."""
    state: dict[str, ApiState] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        st = ApiState(root if root is not None else api_runtime(settings, bootstrap))
        await asyncio.to_thread(st.root.warm, "store", "storage", "producer")  # fail at start
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
        docs_url=None,  # served by the console with local files (agents.api.console)
        redoc_url=None,
    )

    def get_state() -> ApiState:
        return state["s"]

    key_hashes = frozenset(settings.api_keys())

    async def require_key(
        x_api_key: Annotated[str | None, Security(API_KEY)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        """Documents the key headers in OpenAPI and checks again (defence in depth):
        :class:`RequestGuard` has already refused a missing or wrong key before the body."""
        problem = key_problem(x_api_key, authorization, key_hashes)
        if problem is not None:
            raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_key)]
    task_limits = mount_task_routes(app, settings, lambda: get_state().store.engine, auth)
    app.add_middleware(RequestGuard, config=guard_config(settings, task_limits))
    app.include_router(media_router(lambda: get_state().store, lambda: get_state().storage,
                                    auth, presign_s=settings.api_media_presign_s))
    app.include_router(moderation_router(lambda: get_state().store,
                                         lambda cmd: _send_command(get_state(), cmd),
                                         asset_out, settings.api_keys(), auth))
    mount_console(app, settings, get_state, auth)  # its cookie middleware runs before the guard
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem}, 401: {"model": Problem}, 408: {"model": Problem},
        413: {"model": Problem}, 415: {"model": Problem}, 422: {"model": Problem},
        431: {"model": Problem}, 503: {"model": Problem},
    }

    @app.post("/v1/assets", dependencies=auth, status_code=202, openapi_extra=UPLOAD_BODY,
              responses={201: {"model": SyncAnswer}, 202: {"model": Accepted}, **errors})
    async def upload(request: Request) -> Response:
        st = get_state()
        # the upload's trace starts here: the client's W3C traceparent, or a new one; it follows
        # the event through every topic to the webhook request (agents.kafka.headers)
        TRACE.set(child(request.headers.get("traceparent")))
        fields = UploadFields(webhook_allow=tuple(settings.webhook_allow))
        try:
            form = await parse_strict_form(request.headers, request.stream(), _form_spec(st),
                                           fields.add)
        except FormError as exc:
            raise HTTPException(exc.status, exc.detail) from exc
        except ClientDisconnect:  # gone, or answered by the guard (413, 408): nobody listens
            return Response(status_code=400)
        try:
            spooled, filename = _uploaded_file(form)
            return await _accept(st, spooled, filename, fields)
        finally:
            if form.file is not None:
                form.file.path.unlink(missing_ok=True)

    @app.get("/v1/postprocesses", dependencies=auth, response_model=PostProcessList)
    async def list_postprocesses() -> PostProcessList:
        """The post-processes this deployment runs, and every name an upload may ask for."""
        live = get_state().root.definitions
        await asyncio.to_thread(live.accepting_version)
        cfg = live.config
        items = [PostProcessOut(name=pp.name, task=pp.task, enabled=pp.enabled, mode=pp.mode,
                                source="api" if pp.name.casefold() in live.stored else "yaml")
                 for pp in cfg.postprocesses]
        items += [PostProcessOut(name=pp.name, task=pp.task, enabled=pp.enabled, mode=pp.mode,
                                 source="registered") for pp in cfg.implicit]
        return PostProcessList(items=items, known=cfg.known_names(),
                               definitions_version=max(live.version, 0))

    mount_definitions(app, lambda: get_state().root, settings, auth, errors)

    @app.get("/v1/assets/{asset_id}", dependencies=auth, response_model=AssetOut,
             responses={404: {"model": Problem}})
    async def get_asset(
        asset_id: Annotated[str, PathParam(min_length=1, max_length=limits.MAX_ASSET_ID)],
    ) -> AssetOut:
        st = get_state()
        found = await asyncio.to_thread(st.store.get_asset, asset_id)
        if found is None:
            from sinks.store.lifecycle import tombstone

            gone = await asyncio.to_thread(tombstone, st.store, asset_id)
            raise HTTPException(404, f"asset {asset_id} was deleted" if gone
                                else f"no asset {asset_id}")
        out = asset_out(found)
        out.webhooks = [public_delivery(d) for d in
                        await asyncio.to_thread(st.store.deliveries_of, asset_id)]
        return out

    @app.get("/v1/assets", dependencies=auth, response_model=AssetPage)
    async def list_assets(
        folder: Annotated[str | None, Query(description="folder prefix",
                                            max_length=limits.MAX_FOLDER_BYTES)] = None,
        status: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page",
                                            max_length=limits.MAX_ASSET_ID)] = None,
    ) -> AssetPage:
        folder = folder_query(folder)
        items = await asyncio.to_thread(get_state().store.list_assets, folder, status,
                                        limit + 1, cursor)
        more = len(items) > limit
        items = items[:limit]
        return AssetPage(items=[asset_out(a) for a in items],
                         next_cursor=items[-1].asset_id if more and items else None)

    mount_lifecycle(app, get_state, auth, {404: {"model": Problem}, **errors})

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


def _form_spec(st: ApiState) -> FormSpec:
    """The upload form's limits: one ``file`` part of at most DARKROOM_MAX_UPLOAD_BYTES,
    spooled to the data dir's tmp folder, and the text fields of :data:`FIELD_CAPS`."""
    return FormSpec(file_field="file", max_file_bytes=st.settings.max_upload_bytes,
                    field_caps=FIELD_CAPS, other_cap=OTHER_FIELD_CAP,
                    max_text_bytes=MAX_FORM_TEXT_BYTES, max_parts=MAX_FORM_PARTS,
                    spool_dir=st.tmp_dir)


def _uploaded_file(form: StrictForm) -> tuple[Path, str | None]:
    """The spooled file and the client's name for it; 422 without a file part."""
    if form.file is None:
        raise HTTPException(422, "the form has no 'file' part")
    return form.file.path, form.file.filename


INGEST_STATUS: Final[Mapping[type[IngestError], int]] = {
    InvalidUpload: 400, UploadTooLarge: 413, UnprocessableUpload: 422, IngestUnavailable: 503,
}
"""The answer to each refusal of :func:`agents.ingest.ingest`."""


async def _accept(st: ApiState, spooled: Path, filename: str | None,
                  f: UploadFields) -> Response:
    s = st.settings
    if f.upload_preset:  # before the mode is read: a preset may make the upload sync
        from agents.presets import apply_preset

        try:
            f = await asyncio.to_thread(apply_preset, st.root, f)
        except IngestError as exc:
            raise HTTPException(INGEST_STATUS.get(type(exc), 503), exc.detail) from exc
    mode = f.mode
    asset_id = new_asset_id()
    waiter = st.replies.expect(asset_id) if mode == "sync" else None
    try:
        done = await asyncio.to_thread(ingest, st.root, spooled, filename, f, asset_id=asset_id,
                                       reply_to=st.reply_topic if mode == "sync" else None)
    except IngestError as exc:
        st.replies.forget(asset_id)
        raise HTTPException(INGEST_STATUS.get(type(exc), 503), exc.detail) from exc
    except BaseException:
        st.replies.forget(asset_id)
        raise
    uri = done.uri
    location = f"/v1/assets/{asset_id}"
    if waiter is None:
        return JSONResponse(Accepted(asset_id=asset_id, status="pending", location=location,
                                     moderation="pending" if f.moderation == "manual"
                                     else None).model_dump(),
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


async def _sync_answer(st: ApiState, asset_id: str, uri: str, update: AssetUpdate | None,
                       location: str) -> Response:
    """The sync answer. The API decides but never writes asset state: a sync timeout becomes
    an :class:`~schemas.records.AssetCommand` the sink applies (the single writer), which also
    sets a refused object aside and sends the ``asset.refused`` webhook, whatever refused it."""
    s = st.settings
    extra_notice: str | None = None
    if update is None:
        msg = f"sync post-processing did not finish within {s.sync_timeout_s:g}s"
        if s.sync_timeout_policy == "refuse":
            waiter = st.replies.expect(asset_id)
            await asyncio.to_thread(_command, st, asset_id, "refuse", msg)
            try:  # the sink's answer: the asset refused, its object set aside
                await asyncio.wait_for(waiter, timeout=10.0)
            except TimeoutError:
                st.replies.forget(asset_id)
        else:
            extra_notice = msg + "; results follow asynchronously"
            await asyncio.to_thread(_command, st, asset_id, "notice", extra_notice)
    asset = await asyncio.to_thread(st.store.get_asset, asset_id)
    if asset is None:  # the router has not recorded it yet (timeout before routing)
        raise HTTPException(503, "the upload is queued but not yet recorded; poll " + location)
    notices = list(asset.notices)
    if extra_notice and extra_notice not in notices:
        notices.append(extra_notice)  # applied by the sink right after this answer
    body = SyncAnswer(asset_id=asset_id, status=asset.status, location=location,
                      asset=asset_out(asset), notices=notices, refusals=asset.refusals,
                      moderation=asset.moderation_status)
    # held for review: accepted, not yet published (the reviewer decides)
    code = (422 if asset.status == "refused"
            else 202 if asset.moderation_status == "pending" else 201)
    return JSONResponse(body.model_dump(), status_code=code, headers={"Location": location})


def _send_command(st: ApiState, cmd: AssetCommand) -> None:
    """Publish a decision for the sink to apply (blocking)."""
    st.producer.send(st.settings.topic("commands"), cmd.asset_id, cmd.to_bytes())
    st.producer.flush_sync(timeout=10)


def _command(st: ApiState, asset_id: str, command: str, message: str) -> None:
    """Publish a decision for the sink to apply (blocking)."""
    from schemas.records import now_ms

    cmd = AssetCommand(asset_id=asset_id, command=command, message=message,
                       issued_by=f"api:{st.instance}", issued_at=now_ms(),
                       command_id=f"{asset_id}:{command}:sync-timeout")
    _send_command(st, cmd)
