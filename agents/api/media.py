"""Media delivery: the bytes behind an asset's storage URIs, over HTTP.

* ``GET /v1/assets/{asset_id}/original``: the uploaded object;
* ``GET /v1/assets/{asset_id}/derived/{postprocess}/{name}``: an object a task stored for the
  asset (``derived/<asset>/<post-process>/<name>``, e.g. an HLS rendition's
  ``hls/360p/index.m3u8``).

Both sit under ``/v1``, so the API key guard checks them like every other route. Only what the
asset itself names is served: its ``uri`` (an object under ``originals/`` of the storage, in the
asset's own folder), or a URI that the post-process's result lists under ``derived`` *and* whose
object key is exactly ``derived/<asset_id>/<postprocess>/<name>`` (a result is data that came
over Kafka: a URI in it pointing anywhere else, another asset or an extra file root, is not
served). Anything else, ``..`` or NUL or an absolute path included, is 404 without touching the
storage: keys are checked by :func:`sinks.objects.base.validate_key` and local files must lie
inside the storage root (:meth:`sinks.objects.local.LocalStorage.key_of`).

Local storage is streamed by Starlette's ``FileResponse``: ``Range`` (one or several ranges,
206 with ``Content-Range``, 416 when unsatisfiable), ``If-Range``, ``HEAD``, ``ETag`` and
``Last-Modified``. S3 objects are answered with a 307 redirect to a presigned GET URL
(``DARKROOM_API_MEDIA_PRESIGN_S``; the S3 endpoint must be reachable by the client), with the
content type and disposition set in the signed response headers.

Hostile bytes: ``X-Content-Type-Options: nosniff`` and a sandboxing CSP on every answer, inline
display only for images (SVG excepted), audio, video and streaming playlists; everything else
is sent as an attachment, so an uploaded document can never run script on the console's origin.

:func:`media_urls` gives the HTTP URLs the API's asset JSON carries next to the storage URIs
(``original_url``, ``derived.urls`` per result, ``info_urls``).
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.responses import FileResponse, RedirectResponse, Response

from agents.policy import limits
from sinks.objects.base import StorageError, derived_key
from sinks.objects.facade import Storage
from sinks.store.metadata import Asset, MetadataStore

CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".ts": "video/mp2t",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
"""Content types by suffix of derived objects (the platform's mimetypes tables disagree on some,
e.g. ``.ts``)."""

INLINE_TYPES: Final = ("image/", "video/", "audio/", "application/vnd.apple.mpegurl",
                       "application/dash+xml", "application/json", "text/plain")
"""Content types shown inline; SVG (script inside an image) is never among them."""

MEDIA_CSP: Final = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"
ENCODED_SEPARATORS: Final = (b"%2f", b"%5c", b"%00")
"""Percent-encoded ``/``, ``\\`` and NUL in a derived object's path: refused outright (404),
whatever they would decode to."""


class DerivedOut(BaseModel):
    """The objects a result stored: their storage URIs and the HTTP URLs that serve them."""

    uris: dict[str, str] = Field(description="relative name -> storage URI (file:// or s3://)")
    urls: dict[str, str] = Field(description="relative name -> URL of this API serving it")


@dataclass
class MediaUrls:
    original: str | None = None
    derived: dict[str, DerivedOut] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


def original_url(asset_id: str) -> str:
    return f"/v1/assets/{quote(asset_id, safe='')}/original"


def derived_url(asset_id: str, postprocess: str, name: str) -> str:
    return (f"/v1/assets/{quote(asset_id, safe='')}/derived/{quote(postprocess, safe='')}/"
            f"{quote(name, safe='/')}")


def derived_of(result: Mapping[str, Any]) -> dict[str, str]:
    """``{relative name: URI}`` of the objects a result (as the store holds it) lists."""
    data = result.get("data")
    found = data.get("derived") if isinstance(data, Mapping) else None
    if not isinstance(found, Mapping):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str) and v}


def media_urls(asset: Asset) -> MediaUrls:
    """The HTTP URLs of an asset's original, of each result's derived objects, and of the info
    values that are one of those objects' URIs (a task's info pointing at what it stored)."""
    out = MediaUrls(original=original_url(asset.asset_id) if asset.uri else None)
    by_uri: dict[str, str] = {}
    for pp, result in asset.results.items():
        uris = derived_of(result)
        if not uris:
            continue
        urls = {name: derived_url(asset.asset_id, pp, name) for name in uris}
        out.derived[pp] = DerivedOut(uris=uris, urls=urls)
        for name, uri in uris.items():
            by_uri.setdefault(uri, urls[name])
    for key, value in asset.info.items():
        if isinstance(value, str) and value in by_uri:
            out.info[key] = by_uri[value]
    return out


def content_type_of(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    found = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0]
    return found or "application/octet-stream"


def inline(content_type: str) -> bool:
    ctype = content_type.split(";")[0].strip().lower()
    return ctype.startswith(INLINE_TYPES) and "svg" not in ctype


def _not_found(detail: str) -> HTTPException:
    return HTTPException(404, detail)


def _original_key(storage: Storage, asset: Asset) -> str:
    """The key of the asset's original, if it is an object of the storage under ``originals/``
    in the asset's own folder (``originals/<folder>/<asset_id>/<file>``); else 404."""
    if not asset.uri:
        raise _not_found(f"asset {asset.asset_id} has no stored original (refused or removed)")
    try:
        key = storage.key_of(asset.uri)
    except StorageError as exc:
        raise _not_found(f"the original of asset {asset.asset_id} is not in the storage") from exc
    parts = key.split("/")
    if parts[0] != "originals" or len(parts) < 3 or parts[-2] != asset.asset_id:
        raise _not_found(f"the original of asset {asset.asset_id} is not served")
    return key


def _derived(storage: Storage, asset: Asset, path: str) -> tuple[str, str, str]:
    """(URI, key, name) of the derived object ``<postprocess>/<name>`` the asset lists; else
    404."""
    postprocess, _, name = path.partition("/")
    missing = _not_found(f"asset {asset.asset_id} has no derived object {path[:200]!r}")
    result = asset.results.get(postprocess) if postprocess and name else None
    uri = derived_of(result).get(name) if result is not None else None
    if uri is None:
        raise missing
    try:
        expected = derived_key(asset.asset_id, postprocess, name)
        key = storage.key_of(uri)
    except StorageError as exc:
        raise missing from exc
    if key != expected:
        raise missing
    return uri, key, name


async def deliver(storage: Storage, uri: str, key: str, content_type: str, filename: str,
                  presign_s: float) -> Response:
    """The object's bytes (local: streamed with Range support) or a redirect to a presigned
    URL (S3)."""
    disposition = "inline" if inline(content_type) else "attachment"
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": MEDIA_CSP,
               "Cache-Control": "private, max-age=60"}
    try:
        backend = storage.backend_for(uri)
    except StorageError as exc:
        raise _not_found(str(exc)) from exc
    if backend is not storage.local:
        from sinks.objects.s3 import S3Storage

        if not isinstance(backend, S3Storage):
            raise _not_found(f"no HTTP delivery for {uri[:200]!r}")
        s3 = backend
        cd = f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}"

        def presign() -> str:
            url: str = s3.client.presigned_get_object(
                s3.bucket, key, expires=timedelta(seconds=presign_s),
                response_headers={"response-content-type": content_type,
                                  "response-content-disposition": cd})
            return url

        url = await asyncio.to_thread(presign)
        return RedirectResponse(url, status_code=307, headers={
            "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})

    def locate() -> tuple[Path, os.stat_result]:
        path = storage.local_path(uri)  # inside the roots, a regular file
        return path, path.stat()

    try:
        path, st = await asyncio.to_thread(locate)
    except (StorageError, OSError) as exc:
        raise _not_found(f"object not found: {key[:200]}") from exc
    return FileResponse(path, media_type=content_type, headers=headers, filename=filename,
                        stat_result=st, content_disposition_type=disposition)


class _Problem(BaseModel):
    detail: str


AssetId = Annotated[str, PathParam(min_length=1, max_length=limits.MAX_ASSET_ID)]


def make_router(get_store: Callable[[], MetadataStore], get_storage: Callable[[], Storage],
                auth: Sequence[Any], *, presign_s: float = 300.0) -> APIRouter:
    """The media routes; ``auth`` are the dependencies every route runs (the API key)."""
    router = APIRouter(prefix="/v1/assets", tags=["media"], dependencies=list(auth))
    responses: dict[int | str, dict[str, Any]] = {
        206: {"description": "the requested range (Range: bytes=...)"},
        307: {"description": "S3 storage: a presigned URL of the object"},
        404: {"model": _Problem}, 416: {"description": "range not satisfiable"}}

    async def asset_of(asset_id: str) -> Asset:
        found = await asyncio.to_thread(get_store().get_asset, asset_id)
        if found is None:
            raise _not_found(f"no asset {asset_id}")
        return found

    @router.head("/{asset_id}/original", include_in_schema=False)
    @router.get("/{asset_id}/original", responses=responses, response_class=Response)
    async def get_original(asset_id: AssetId) -> Response:
        """The uploaded object (its sniffed content type; HTTP Range supported)."""
        asset = await asset_of(asset_id)
        storage = get_storage()
        key = _original_key(storage, asset)
        return await deliver(storage, asset.uri, key, asset.content_type or
                             "application/octet-stream", asset.filename, presign_s)

    @router.head("/{asset_id}/derived/{path:path}", include_in_schema=False)
    @router.get("/{asset_id}/derived/{path:path}", responses=responses, response_class=Response)
    async def get_derived(asset_id: AssetId, path: str, request: Request) -> Response:
        """An object a post-process stored for the asset: ``<postprocess>/<name>`` as listed
        in the result's ``derived`` (HTTP Range supported)."""
        raw = bytes(request.scope.get("raw_path") or b"").lower()
        if any(enc in raw for enc in ENCODED_SEPARATORS):
            raise _not_found("an encoded '/', '\\' or NUL in the path names no object")
        asset = await asset_of(asset_id)
        storage = get_storage()
        uri, key, name = _derived(storage, asset, path)
        return await deliver(storage, uri, key, content_type_of(name),
                             PurePosixPath(name).name, presign_s)

    return router
