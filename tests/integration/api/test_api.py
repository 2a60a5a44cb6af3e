"""The upload API over real HTTP: a worker and two API replicas on the real broker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from agents.api.app import hash_key
from agents.kafka.broker import free_port
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker

pytestmark = pytest.mark.integration

KEY = "test-key-123"


def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Api:
    """``darkroom api`` in a child process on the worker's settings, answering ``key``; ready
    once ``ready`` answers 200."""

    def __init__(self, wenv: WorkerEnv, name: str, extra: dict[str, str] | None = None,
                 key: str = KEY, ready: str = "/healthz", start_s: float = 30) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**wenv.env, "DARKROOM_API_PORT": str(self.port), "DARKROOM_API_INSTANCE": name,
               "DARKROOM_API_KEY_HASHES": json.dumps([hash_key(key)]),
               "DARKROOM_SYNC_TIMEOUT_S": "30", **(extra or {})}
        self.log = wenv.data_dir.parent / f"api-{name}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "api"], env=env,
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=60)
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline:
            try:
                if self.client.get(ready).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("API did not start:\n" + self.log.read_text())

    def upload(self, data: bytes, name: str = "x.jpg", **form: Any) -> httpx.Response:
        return self.client.post("/v1/assets", files={"file": (name, data)}, data=form)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture(scope="module")
def api_worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[WorkerEnv]:
    base = tmp_path_factory.mktemp("api")
    # its own topic prefix keeps this module's traffic apart from the session worker's
    env = {"DARKROOM_TOPIC_PREFIX": "apitest", "DARKROOM_MAX_UPLOAD_BYTES": "300000",
           "DARKROOM_MAX_IMAGE_PIXELS": "4000000", "DARKROOM_WORKER_ID": "darkroom-apitest"}
    wenv = start_worker(kafka_bootstrap, base, config=ROOT / "tests/fixtures/pp_api.yaml",
                        extra_env=env)
    yield wenv
    stop_worker(wenv)


@pytest.fixture(scope="module")
def apis(api_worker: WorkerEnv) -> Iterator[tuple[Api, Api]]:
    a, b = Api(api_worker, "api-a"), Api(api_worker, "api-b")
    yield a, b
    a.stop()
    b.stop()


def stored_objects(wenv: WorkerEnv) -> list[Path]:
    root = wenv.data_dir / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_sync_notice_returns_201_with_the_notice(apis: tuple[Api, Api]) -> None:
    a, _ = apis
    r = a.upload(jpeg(320, 200), folder="/notice/users", mode="sync")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] in ("pending", "complete")  # the async blurhash may still run
    assert any("width is smaller than 500" in n for n in body["notices"])
    res = body["asset"]["results"]
    assert res["check-notice"]["status"] == "ok" and res["colors"]["status"] == "ok"
    assert res["check-notice"]["data"]["width"] == 320


def test_sync_refuse_returns_422_removes_object_and_records_refused(
        apis: tuple[Api, Api], api_worker: WorkerEnv) -> None:
    a, _ = apis
    r = a.upload(jpeg(300, 300), name="small.jpg", folder="/refuse", mode="sync")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["refusals"] == ["images must be at least 500 px wide"]
    asset_id = body["asset_id"]
    assert not [p for p in stored_objects(api_worker) if asset_id in str(p)]
    assert not list((api_worker.data_dir / "objects").rglob(f"*{asset_id}*"))  # folders too
    got = a.client.get(f"/v1/assets/{asset_id}").json()
    assert got["status"] == "refused" and got["uri"] == ""
    wide = a.upload(jpeg(640, 300), folder="/refuse", mode="sync")
    assert wide.status_code == 201 and wide.json()["refusals"] == []


def test_async_returns_202_and_completes_later(apis: tuple[Api, Api]) -> None:
    _, b = apis
    r = b.upload(jpeg(120, 80), folder="/plain", mode="async", tags="a,b",
                 context="source=test|owner=me")
    assert r.status_code == 202, r.text
    loc = r.json()["location"]
    assert r.headers["location"] == loc
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = b.client.get(loc).json()
        if got["status"] != "pending":
            break
        time.sleep(0.2)
    assert got["status"] == "complete" and got["results"]["hash"]["status"] == "ok"
    assert got["tags"] == ["a", "b"] and got["context"] == {"source": "test", "owner": "me"}
    assert got["info"]["format"] == "JPEG" and got["content_type"] == "image/jpeg"


def test_two_replicas_each_get_their_own_sync_replies(apis: tuple[Api, Api]) -> None:
    import concurrent.futures as cf

    a, b = apis
    jobs = [(api, w) for w in (200, 250, 300, 350) for api in (a, b)]
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda j: j[0].upload(jpeg(j[1], 100), folder="/notice",
                                                      mode="sync"), jobs))
    for (_api, w), r in zip(jobs, answers, strict=True):
        assert r.status_code == 201, r.text
        assert r.json()["asset"]["results"]["check-notice"]["data"]["width"] == w


def test_listing_is_paginated_and_filtered(apis: tuple[Api, Api]) -> None:
    a, _ = apis
    for _ in range(3):
        assert a.upload(jpeg(50, 50), folder="/listing/x").status_code == 202
    first = a.client.get("/v1/assets", params={"folder": "/listing", "limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = a.client.get("/v1/assets", params={"folder": "/listing", "limit": 2,
                                              "cursor": first["next_cursor"]}).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert all(i["folder"] == "/listing/x" for i in first["items"] + rest["items"])


@pytest.mark.parametrize(("case", "code"), [
    ("no-key", 401), ("bad-key", 401), ("oversize", 413), ("bomb", 422), ("dotdot", 400),
    ("control", 400), ("backslash", 400), ("not-an-image", 422), ("empty", 400),
])
def test_bad_requests_get_their_status_and_leave_nothing(
        apis: tuple[Api, Api], api_worker: WorkerEnv, case: str, code: int) -> None:
    a, _ = apis
    before = set(stored_objects(api_worker))
    files = {"file": ("x.jpg", jpeg(64, 64))}
    data: dict[str, str] = {"folder": "/ok"}
    headers = {"X-API-Key": KEY}
    if case == "no-key":
        headers = {}
    elif case == "bad-key":
        headers = {"X-API-Key": "nope"}
    elif case == "oversize":
        files = {"file": ("big.bin", os.urandom(400_000))}
    elif case == "bomb":
        files = {"file": ("bomb.png", bomb_png(3000, 3000))}
    elif case == "dotdot":
        data["folder"] = "/users/../../etc"
    elif case == "control":
        data["folder"] = "/users/\x07bell"
    elif case == "backslash":
        data["folder"] = "..\\windows"
    elif case == "not-an-image":
        files = {"file": ("x.jpg", b"\xff\xd8\xff" + b"garbage" * 10)}
    elif case == "empty":
        files = {"file": ("x.jpg", b"")}
    with httpx.Client(base_url=a.url, timeout=30) as c:
        r = c.post("/v1/assets", files=files, data=data, headers=headers)
    assert r.status_code == code, r.text
    assert "detail" in r.json()
    assert set(stored_objects(api_worker)) == before
    assert not list((api_worker.data_dir / "tmp").glob("upload-*"))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (all-zero rows compress to nothing)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_openapi_document_is_published(apis: tuple[Api, Api]) -> None:
    doc = apis[0].client.get("/openapi.json").json()
    assert {"/v1/assets", "/v1/assets/{asset_id}"} <= set(doc["paths"])


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(apis: tuple[Api, Api], tmp_path: Path) -> None:
    """Property-based requests generated from the published OpenAPI document: no 5xx."""
    a, _ = apis
    out = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{a.url}/openapi.json",
         "--checks", "not_a_server_error", "-H", f"X-API-Key: {KEY}", "--max-examples", "25",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "40", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    import re

    found = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert found and found.group(1) == found.group(2) and int(found.group(1)) >= 50, out.stdout


def test_upload_cli_against_the_api(apis: tuple[Api, Api], tmp_path: Path) -> None:
    a, _ = apis
    wide, narrow = tmp_path / "wide.jpg", tmp_path / "narrow.jpg"
    wide.write_bytes(jpeg(800, 200))
    narrow.write_bytes(jpeg(100, 200))
    out = subprocess.run(
        [sys.executable, "-m", "agents.cli", "upload", str(wide), str(narrow), "--api", a.url,
         "--key", KEY, "--folder", "/refuse/cli", "--sync", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = {Path(d["file"]).name: d for d in map(json.loads, out.stdout.splitlines())}
    assert out.returncode == 1, out.stderr  # one upload was refused
    assert lines["wide.jpg"]["http_status"] == 201
    assert lines["narrow.jpg"]["http_status"] == 422
    assert lines["narrow.jpg"]["refusals"] == ["images must be at least 500 px wide"]


def test_unknown_post_process_names_are_refused_with_the_known_ones(
        apis: tuple[Api, Api], api_worker: WorkerEnv, tmp_path: Path) -> None:
    a, _ = apis
    before = stored_objects(api_worker)
    r = a.upload(jpeg(300, 200), postprocess="tagg")
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("unknown post-process name: tagg; known: ")
    assert "blurhash" in detail and "validate-image" in detail
    assert stored_objects(api_worker) == before
    listed = a.client.get("/v1/postprocesses").json()
    assert "tag" in listed["known"] and "tagg" not in listed["known"]
    assert any(i["name"] == "check-refuse" for i in listed["items"])
    pic = tmp_path / "p.jpg"
    pic.write_bytes(jpeg(300, 200))
    out = subprocess.run(
        [sys.executable, "-m", "agents.cli", "upload", str(pic), "--api", a.url, "--key", KEY,
         "-p", "blurhash", "-p", "tagg"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "unknown post-process name: tagg; known: " in out.stderr
    assert stored_objects(api_worker) == before  # failed before uploading anything


def _skimage_jpeg(name: str, scale: float = 1.0, quality: int = 90) -> bytes:
    import numpy as np
    from skimage import data

    arr = getattr(data, name)()
    img = Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, -1))
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_sync_upload_refused_by_a_faces_rule(apis: tuple[Api, Api]) -> None:
    a, _ = apis
    cup = a.upload(_skimage_jpeg("coffee"), name="coffee.jpg", folder="/faces/u1", mode="sync")
    assert cup.status_code == 422, cup.text
    assert cup.json()["refusals"] == ["a profile photo must show a face"]
    person = a.upload(_skimage_jpeg("astronaut"), name="me.jpg", folder="/faces/u2",
                      mode="sync")
    assert person.status_code == 201, person.text
    assert person.json()["asset"]["results"]["faces-check"]["data"]["count"] == 1


def test_face_clusters_over_http(apis: tuple[Api, Api]) -> None:
    a, _ = apis
    ids = [a.upload(_skimage_jpeg(n, s, q), folder="/faces/cl", mode="async").json()["asset_id"]
           for n, s, q in (("astronaut", 1.0, 90), ("astronaut", 0.7, 40), ("camera", 1.0, 90))]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = [a.client.get(f"/v1/assets/{i}").json()["status"] for i in ids]
        if all(s != "pending" for s in done):
            break
        time.sleep(0.3)
    clusters = a.client.get("/v1/faces/clusters").json()["items"]
    members = {}
    for c in clusters:
        detail = a.client.get(f"/v1/faces/clusters/{c['cluster_id']}").json()
        for f in detail["faces"]:
            members[f["asset_id"]] = c["cluster_id"]
    assert members[ids[0]] == members[ids[1]], "the same person under resize + JPEG q40"
    assert members[ids[2]] != members[ids[0]], "a different person"
    assert a.client.get("/v1/faces/clusters/999999").status_code == 404


def test_manual_background_removal_stores_a_derived_png(apis: tuple[Api, Api],
                                                        api_worker: WorkerEnv) -> None:
    a, _ = apis
    r = a.upload(_skimage_jpeg("chelsea"), name="cat.jpg", folder="/plain", mode="async",
                 postprocess="cutout")
    loc = r.json()["location"]
    deadline = time.monotonic() + 90
    while (got := a.client.get(loc).json())["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    data = got["results"]["cutout"]["data"]
    uri = data["derived"]["background-removed.png"]
    from sinks.objects.local import LocalStorage

    png = Image.open(LocalStorage(api_worker.data_dir / "objects").local_path(uri))
    assert png.mode == "RGBA" and png.size == (451, 300)
    assert png.getpixel((2, 2))[3] < 10 and png.getpixel((200, 150))[3] > 200


def _wait_done(a: Api, asset_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (got := a.client.get(f"/v1/assets/{asset_id}").json())["status"] == "pending":
        assert time.monotonic() < deadline, got
        time.sleep(0.3)
    return got


def test_ai_tags_similarity_and_near_duplicates(apis: tuple[Api, Api]) -> None:
    a, _ = apis
    cat = a.upload(_skimage_jpeg("chelsea"), name="cat.jpg", folder="/ai", tags="mine")
    cat_id = cat.json()["asset_id"]
    got = _wait_done(a, cat_id)
    assert got["tags"][0] == "mine" and any("cat" in t for t in got["tags"][1:]), got["tags"]
    coffee_id = a.upload(_skimage_jpeg("coffee"), folder="/ai").json()["asset_id"]
    _wait_done(a, coffee_id)
    copy_id = a.upload(_skimage_jpeg("chelsea", 0.6, 30), name="copy.jpg",
                       folder="/ai").json()["asset_id"]
    copy = _wait_done(a, copy_id)
    assert any(cat_id in n for n in copy["notices"]), copy["notices"]  # flagged near-duplicate
    similar = a.client.get(f"/v1/assets/{copy_id}/similar", params={"k": 3}).json()
    items = similar if isinstance(similar, list) else similar.get("items", similar.get("matches"))
    assert items[0]["asset_id"] == cat_id, similar
    by_file = a.client.post("/v1/similar", params={"k": 1},
                            files={"file": ("q.jpg", _skimage_jpeg("chelsea", 0.8, 50))}).json()
    items = by_file if isinstance(by_file, list) else by_file.get("items", by_file.get("matches"))
    assert items[0]["asset_id"] in (cat_id, copy_id), by_file
