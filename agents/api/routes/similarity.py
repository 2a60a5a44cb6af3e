"""Similarity search API over the image-similarity index (:mod:`sinks.indexes.similarity`).

* ``GET /v1/assets/{asset_id}/similar?k=10``: the assets most similar to an indexed asset
  (cosine of MobileNetV2 embeddings), itself excluded. 404 when the asset is unknown, 409 when it
  exists but has no ``index-similarity`` result (yet).
* ``POST /v1/similar?k=10`` (multipart ``file``): the indexed assets most similar to an uploaded
  picture. The embedding is computed in this process with the same model, decode (JPEG draft,
  longest side 512, EXIF orientation) and preprocessing as the ``index-similarity`` task, so
  an indexed copy of the same picture scores ~1.0. Uploads over :data:`MAX_QUERY_BYTES` get
  413, non-images 422, and so do pictures whose header claims more than ``max_pixels`` pixels
  (DARKROOM_MAX_IMAGE_PIXELS): the header is probed before any decode, since a 100 MP 16-bit
  PNG would cost this process 1.5 GB. Nothing is stored.

The routes ``index-similarity`` declares (``routes="agents.api.routes.similarity:task_routes"``):
the upload API mounts them with its key check and the query's body limit
(:func:`agents.api.routes.mount_task_routes`); directly::

    app.include_router(make_router(lambda: st.store.engine, lambda: settings.data_dir, auth))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path as FsPath
from typing import Annotated, Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, File, HTTPException, Path, Query, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from processors.registry import BodyCap, RouteContext, TaskRoutes
from sinks.indexes.similarity import index_for
from sinks.store.metadata import assets

MAX_QUERY_BYTES: Final = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 100_000_000
_CHUNK: Final = 1 << 20


class Match(BaseModel):
    asset_id: str
    score: float = Field(description="cosine similarity of the embeddings, -1..1 (1 = same)")


class SimilarAnswer(BaseModel):
    asset_id: str | None = Field(default=None, description="the asset asked about (GET only)")
    k: int
    items: list[Match]
    model: str = Field(description="the embedding model (model:version)")


class _Problem(BaseModel):
    detail: str


def _asset_exists(engine: Engine, asset_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(assets.c.asset_id)
                            .where(assets.c.asset_id == asset_id)).first() is not None


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await file.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"query image larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_pixels(data: bytes, max_pixels: int) -> None:
    """422 unless the header parses and claims at most ``max_pixels`` (reads no pixel)."""
    from processors.media.imaging import probe_header
    from processors.registry import ProcessorError

    try:
        props = probe_header(data)
    except ProcessorError as exc:
        raise HTTPException(422, f"not a readable image: {exc}") from exc
    width, height = int(props["width"]), int(props["height"])
    if width * height > max_pixels:
        raise HTTPException(
            422, f"query image is {width}x{height} = {width * height} pixels, over the limit "
            f"of {max_pixels} (decompression bomb guard)")


def embed_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None,
                data_dir: FsPath | str | None = None) -> Any:
    """The normalised embedding of an image file's bytes (ValueError when not an image);
    ``threads`` / ``data_dir``: the model's (DARKROOM_MODEL_THREADS, DARKROOM_DATA_DIR)."""
    from processors.models.mobilenet import image_from_bytes
    from processors.tasks.index_similarity import embed_images

    img = image_from_bytes(data, max_pixels=max_pixels)
    emb, _, _ = embed_images([img], threads, FsPath(data_dir) if data_dir is not None else None)
    return emb[0]


def make_router(get_engine: Callable[[], Engine],
                get_data_dir: Callable[[], FsPath | str | None],
                auth: Sequence[Any], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                model_threads: int | None = None) -> APIRouter:
    """The similarity routes; ``auth`` are the dependencies every route runs (the API key),
    ``max_pixels`` the most pixels a query picture's header may claim, ``model_threads`` the
    embedding model's threads (its ONNX graph is cached in ``get_data_dir()``)."""
    from sinks.indexes.similarity import MODEL_KEY

    router = APIRouter(tags=["similarity"], dependencies=list(auth))

    def index() -> Any:
        return index_for(get_engine(), get_data_dir())

    @router.get("/v1/assets/{asset_id}/similar", response_model=SimilarAnswer,
                responses={404: {"model": _Problem}, 409: {"model": _Problem}})
    async def similar_to_asset(
        asset_id: Annotated[str, Path(min_length=1, max_length=200)],
        k: Annotated[int, Query(ge=1, le=100, description="matches returned at most")] = 10,
    ) -> SimilarAnswer:
        def read() -> list[dict[str, Any]] | bool | None:
            found: list[dict[str, Any]] | None = index().similar(asset_id, k)
            if found is None:
                return _asset_exists(get_engine(), asset_id)
            return found

        found = await asyncio.to_thread(read)
        if found is False:
            raise HTTPException(404, f"no asset {asset_id!r}")
        if found is True or found is None:  # known asset, no vector
            raise HTTPException(409, f"asset {asset_id!r} is not in the similarity index (yet): "
                                "it needs an index-similarity result")
        return SimilarAnswer(asset_id=asset_id, k=k, model=MODEL_KEY,
                             items=[Match.model_validate(m) for m in found])

    @router.post("/v1/similar", response_model=SimilarAnswer,
                 responses={413: {"model": _Problem}, 422: {"model": _Problem}})
    async def similar_to_upload(
        file: Annotated[UploadFile, File(description="a picture (JPEG, PNG, WebP, ...)")],
        k: Annotated[int, Query(ge=1, le=100, description="matches returned at most")] = 10,
    ) -> SimilarAnswer:
        data = await _read_limited(file, MAX_QUERY_BYTES)
        if not data:
            raise HTTPException(422, "empty upload")
        await asyncio.to_thread(check_pixels, data, max_pixels)

        def work() -> list[dict[str, Any]]:
            vec = embed_bytes(data, max_pixels, model_threads, get_data_dir())
            result: list[dict[str, Any]] = index().query(vec, k)
            return result

        try:
            found = await asyncio.to_thread(work)
        except ValueError as exc:
            raise HTTPException(422, f"not a readable image: {exc}") from exc
        return SimilarAnswer(k=k, model=MODEL_KEY, items=[Match.model_validate(m) for m in found])

    return router


def task_routes(ctx: RouteContext) -> TaskRoutes:
    """The route factory ``index-similarity`` declares: the routes, and the query picture's
    body limit (never more than an upload's) for the API's guard."""
    from agents.api.guards import SMALL_BODY

    s = ctx.settings
    query = min(s.max_upload_bytes, MAX_QUERY_BYTES)
    router = make_router(lambda: ctx.services().engine, lambda: ctx.services().data_dir,
                         ctx.auth, max_pixels=s.max_image_pixels, model_threads=s.model_threads)
    return TaskRoutes(router=router, body_limits={
        ("POST", "/v1/similar"): BodyCap(query + SMALL_BODY,
                                         f"query image larger than {query} bytes")})
