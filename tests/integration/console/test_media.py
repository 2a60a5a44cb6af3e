"""Media delivery: ``/v1/assets/{id}/original`` and ``/v1/assets/{id}/derived/{path}`` over real
HTTP (worker + API process), the thumbnail task end to end, and the S3 redirect (moto)."""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from agents.api.media import content_type_of, inline, make_router, media_urls
from tests.conftest import WorkerEnv
from tests.integration.console.conftest import Api, jpeg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two finished uploads (default configuration: the thumbnail task runs)."""
    ids = [api.upload(jpeg(640, 400, (30, 90, 200)), name="a.jpg", folder="/media/a"),
           api.upload(jpeg(300, 500, (200, 160, 20)), name="b.jpg", folder="/media/b")]
    return api.wait(ids[0]), api.wait(ids[1])


def raw_get(api: Api, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
    """A GET whose path is sent byte for byte (httpx would normalise dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {"X-API-Key": api.client.headers["X-API-Key"]}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_asset_json_carries_http_urls_next_to_the_uris(
        pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, _ = pair
    assert a["status"] == "complete", a
    aid = a["asset_id"]
    assert a["original_url"] == f"/v1/assets/{aid}/original"
    thumb = a["results"]["thumbnail"]
    assert thumb["status"] == "ok" and thumb["data"]["width"] == 256
    assert thumb["derived"]["uris"]["thumbnail.webp"] == thumb["data"]["derived"]["thumbnail.webp"]
    url = f"/v1/assets/{aid}/derived/thumbnail/thumbnail.webp"
    assert thumb["derived"]["urls"] == {"thumbnail.webp": url}
    assert a["info"]["thumbnail"] == thumb["derived"]["uris"]["thumbnail.webp"]
    assert a["info_urls"] == {"thumbnail": url}
    assert a["results"]["blurhash"]["derived"] is None  # stored nothing


def test_original_is_streamed_with_range_support(
        api: Api, pair: tuple[dict[str, Any], dict[str, Any]], console_worker: WorkerEnv
        ) -> None:
    a, _ = pair
    url = a["original_url"]
    full = api.client.get(url)
    assert full.status_code == 200
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in full.headers["content-security-policy"]
    assert full.headers["content-disposition"].startswith("inline")
    size = len(full.content)
    assert size == a["size_bytes"] and full.content[:3] == b"\xff\xd8\xff"
    part = api.client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-19/{size}"
    assert part.content == full.content[10:20]
    tail = api.client.get(url, headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == full.content[-7:]
    beyond = api.client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    head = api.client.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == size
    assert head.content == b""


def test_thumbnail_is_a_small_webp(api: Api, pair: tuple[dict[str, Any], dict[str, Any]]
                                   ) -> None:
    for asset, size in zip(pair, [(256, 160), (154, 256)], strict=True):
        r = api.client.get(asset["info_urls"]["thumbnail"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(r.content)) as img:
            assert img.format == "WEBP" and img.size == size


def test_no_key_is_401(api: Api, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, _ = pair
    with httpx.Client(base_url=api.url, timeout=30) as anonymous:
        for url in (a["original_url"], a["info_urls"]["thumbnail"]):
            r = anonymous.get(url)
            assert r.status_code == 401 and r.json()["detail"].startswith("missing API key")
            assert anonymous.get(url, headers={"X-API-Key": "wrong"}).status_code == 401


@pytest.mark.parametrize("tail", [
    "thumbnail/../../{other}/thumbnail/thumbnail.webp",      # another asset's object
    "thumbnail/%2e%2e/%2e%2e/{other}/thumbnail/thumbnail.webp",
    "..%2F..%2F{other}%2Fthumbnail%2Fthumbnail.webp",
    "thumbnail%2Fthumbnail.webp",                            # encoded slashes, refused outright
    "thumbnail/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "../../../../../../etc/passwd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",                                           # absolute
    "//etc/passwd",
    "thumbnail//etc/passwd",
    "thumbnail/thumbnail.webp%00.png",                       # NUL
    "thumbnail/%00",
    "thumbnail/_result.json",                                # stored, but not listed
    "nope/thumbnail.webp",
    "thumbnail/",
    "thumbnail",
])
def test_paths_that_name_no_object_of_this_asset_are_404(
        api: Api, pair: tuple[dict[str, Any], dict[str, Any]], tail: str) -> None:
    a, b = pair
    status, body = raw_get(api, f"/v1/assets/{a['asset_id']}/derived/"
                           + tail.format(other=b["asset_id"]))
    assert status == 404, body[:300]
    assert b"RIFF" not in body and b"root:" not in body


def test_the_other_assets_path_works_under_its_own_id(
        api: Api, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, b = pair
    status, body = raw_get(api, f"/v1/assets/{b['asset_id']}/derived/thumbnail/thumbnail.webp")
    assert status == 200 and body[:4] == b"RIFF"


def test_unknown_assets_and_traversal_in_the_id_are_404(api: Api) -> None:
    for path in ("/v1/assets/nope/original", "/v1/assets/nope/derived/thumbnail/t.webp",
                 "/v1/assets/..%2F..%2Fetc/original", "/v1/assets/%00/original"):
        status, _ = raw_get(api, path)
        assert status == 404, path


def test_hostile_derived_uris_in_a_result_are_never_served(
        api: Api, pair: tuple[dict[str, Any], dict[str, Any]], console_worker: WorkerEnv
        ) -> None:
    """A result is data from Kafka: a 'derived' URI naming another asset's object, a file
    outside the storage root or in an extra (read-only) file root is not served."""
    a, b = pair
    other = b["results"]["thumbnail"]["derived"]["uris"]["thumbnail.webp"]
    secret = console_worker.inbox / "secret.txt"
    secret.write_text("not for you")
    data = dict(a["results"]["thumbnail"]["data"])
    data["derived"] = {**data["derived"], "other.webp": other, "passwd": "file:///etc/passwd",
                       "secret.txt": f"file://{secret}", "up/../../x": other}
    db = console_worker.data_dir / "darkroom.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE asset_tasks SET data_json = ? WHERE asset_id = ? AND "
                     "postprocess = 'thumbnail'", (json.dumps(data), a["asset_id"]))
    try:
        for name in ("other.webp", "passwd", "secret.txt", "up/../../x"):
            status, body = raw_get(api, f"/v1/assets/{a['asset_id']}/derived/thumbnail/{name}")
            assert status == 404, (name, body[:200])
        ok, _ = raw_get(api, f"/v1/assets/{a['asset_id']}/derived/thumbnail/thumbnail.webp")
        assert ok == 200
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE asset_tasks SET data_json = ? WHERE asset_id = ? AND "
                         "postprocess = 'thumbnail'",
                         (json.dumps(a["results"]["thumbnail"]["data"]), a["asset_id"]))


def test_originals_outside_the_storage_root_are_not_served(
        api: Api, console_worker: WorkerEnv) -> None:
    """An upload event may name a file in an extra file root (DARKROOM_FILE_ROOTS): workers
    read it, the API never serves it."""
    from agents.kafka.producer import OutputProducer
    from schemas.records import UploadEvent, now_ms
    from sinks.objects.local import LocalStorage

    pic = console_worker.inbox / "inbox.jpg"
    pic.write_bytes(jpeg(120, 90))
    ev = UploadEvent(asset_id="inbox-original-1", uri=LocalStorage.uri_for(pic),
                     filename="inbox.jpg", content_type="image/jpeg", size_bytes=pic.stat().st_size,
                     uploaded_at=now_ms())
    producer = OutputProducer(console_worker.bootstrap)
    producer.send(f"{console_worker.env['DARKROOM_TOPIC_PREFIX']}.uploads", ev.asset_id,
                  ev.to_bytes())
    producer.flush_sync()
    got = api.wait(ev.asset_id)
    assert got["original_url"] == f"/v1/assets/{ev.asset_id}/original"
    r = api.client.get(got["original_url"])
    assert r.status_code == 404 and "not in the storage" in r.json()["detail"]
    thumb = api.client.get(got["info_urls"]["thumbnail"])  # its derived objects are ours
    assert thumb.status_code == 200


# ------------------------------------------------------------------ in process: S3, types
@dataclass
class StubAsset:
    asset_id: str
    uri: str
    filename: str = "a.jpg"
    content_type: str = "image/jpeg"
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class StubStore:
    def __init__(self, *found: StubAsset) -> None:
        self.found = {a.asset_id: a for a in found}

    def get_asset(self, asset_id: str) -> StubAsset | None:
        return self.found.get(asset_id)


def test_s3_objects_are_a_presigned_redirect(moto_endpoint: str, tmp_path: Path) -> None:
    from sinks.objects.facade import Storage
    from sinks.objects.local import LocalStorage
    from sinks.objects.s3 import S3Storage

    s3 = S3Storage(moto_endpoint, bucket="media-test", access_key="test",
                   secret_key="test-secret", cache_dir=tmp_path / "cache")
    s3.ensure_bucket()
    storage = Storage(LocalStorage(tmp_path / "objects"), s3, default="s3")
    body = jpeg(64, 48)
    uri = storage.put_bytes(body, "originals/x/s3a/a b.jpg", "image/jpeg")
    thumb = storage.put_bytes(b"RIFF....WEBP", "derived/s3a/thumbnail/thumbnail.webp",
                              "image/webp")
    asset = StubAsset("s3a", uri, filename="a b.jpg", results={
        "thumbnail": {"status": "ok", "data": {"derived": {"thumbnail.webp": thumb}}}})
    app = FastAPI()
    app.include_router(make_router(lambda: StubStore(asset), lambda: storage, [],  # type: ignore[arg-type,return-value]
                                   presign_s=120))
    with TestClient(app, follow_redirects=False) as client:
        r = client.get("/v1/assets/s3a/original")
        assert r.status_code == 307
        location = r.headers["location"]
        assert location.startswith(f"{moto_endpoint}/media-test/originals/x/s3a/a%20b.jpg?")
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=120" in location
        fetched = httpx.get(location)
        assert fetched.status_code == 200 and fetched.content == body
        assert fetched.headers["content-type"] == "image/jpeg"
        assert fetched.headers["content-disposition"].startswith("inline")
        d = client.get("/v1/assets/s3a/derived/thumbnail/thumbnail.webp")
        assert d.status_code == 307 and "/derived/s3a/thumbnail/thumbnail.webp?" in \
            d.headers["location"]
        # a URI of another bucket or key is never signed
        asset.results["thumbnail"]["data"]["derived"]["x.webp"] = "s3://other-bucket/k.webp"
        assert client.get("/v1/assets/s3a/derived/thumbnail/x.webp").status_code == 404


def test_content_types_and_inline_display() -> None:
    assert content_type_of("hls/master.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type_of("hls/360p/seg_001.ts") == "video/mp2t"
    assert content_type_of("dash/manifest.mpd") == "application/dash+xml"
    assert content_type_of("thumbnail.webp") == "image/webp"
    assert content_type_of("x.unknownext") == "application/octet-stream"
    assert inline("image/png") and inline("video/mp4") and inline("application/json")
    assert not inline("image/svg+xml") and not inline("text/html")
    assert not inline("application/octet-stream")


def test_media_urls_point_info_at_stored_objects() -> None:
    asset: Any = StubAsset("a1", "file:///o/originals/a1/x.jpg", results={
        "pp": {"status": "ok", "data": {"derived": {"hls/master.m3u8": "file:///o/m", "n": 3}}},
        "bad": {"status": "ok", "data": {"derived": "not a map"}}},
        info={"thumbnail": "file:///o/m", "other": "file:///elsewhere", "width": 3})
    urls = media_urls(asset)
    assert urls.original == "/v1/assets/a1/original"
    hls = "/v1/assets/a1/derived/pp/hls/master.m3u8"
    assert urls.derived["pp"].urls == {"hls/master.m3u8": hls}
    assert set(urls.derived) == {"pp"}
    assert urls.info == {"thumbnail": "/v1/assets/a1/derived/pp/hls/master.m3u8"}
