"""Similarity index and MobileNetV2 task costs.

    uv run python benchmarks/similarity.py [--n 10000] [--queries 500] [--reps 3]

Part 1, the index (:class:`sinks.indexes.similarity.SimilarityIndex` on a temporary SQLite file):
``--n`` random unit 1280-d vectors plus planted near-duplicates (a stored vector + noise, cosine
~0.95 to it). Reports: insert cost per vector (one transaction each, as the sink does), full
build from the database, cache-file load, query latency p50/p99 through ``query`` (freshness
check included) for the flat index and for HNSW, recall@10 of each against numpy brute force,
and how often a planted duplicate's source comes back first.

Part 2, the tasks: ms per image for ``tag``, ``classify-scene`` and ``index-similarity`` on a
1 MP and a 12 MP JPEG, decoded the way the agent does (DecodeCache: JPEG draft + shrink to the
task's max_side), models warm, medians of ``--reps``. Plain lines.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sinks.indexes.similarity import DIM, SimilarityIndex  # noqa: E402
from sinks.store.metadata import MetadataStore  # noqa: E402


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_index(n: int, queries: int, planted: int) -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(n, DIM)))
    src = rng.choice(n, size=planted, replace=False)
    noise = _unit(rng.normal(size=(planted, DIM)))
    dups = _unit(base[src] + 0.33 * noise)  # cosine ~0.95 to its source
    vecs = np.concatenate([base, dups])
    names = [f"v{i}" for i in range(n)] + [f"d{i}" for i in range(planted)]
    cos = float(np.mean(np.sum(dups * base[src], axis=1)))
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-sim-"))
    store = MetadataStore(f"sqlite:///{tmp / 'db.sqlite'}")  # the service's SQLite settings
    engine = store.engine
    print(f"index: {len(vecs)} vectors ({n} random + {planted} planted duplicates, "
          f"mean cosine to source {cos:.3f}), dim {DIM}")

    writer = SimilarityIndex(engine, tmp, save_every=10**9)
    writer.refresh()
    t0 = time.perf_counter()
    for name, v in zip(names, vecs, strict=True):
        writer.add(name, "sim", v)
    dt = time.perf_counter() - t0
    print(f"insert: {dt * 1000 / len(vecs):.2f} ms per vector (one transaction each, SQLite)")
    t0 = time.perf_counter()
    writer.save()
    print(f"cache save: {(time.perf_counter() - t0) * 1000:.0f} ms "
          f"({(tmp / 'index' / 'similarity.cache.npz').stat().st_size / 1e6:.0f} MB)")

    t0 = time.perf_counter()
    fresh = SimilarityIndex(engine, None)
    fresh.refresh()
    print(f"full build from the database: {(time.perf_counter() - t0) * 1000:.0f} ms")
    t0 = time.perf_counter()
    cached = SimilarityIndex(engine, tmp)
    cached.refresh()
    print(f"start from the cache file: {(time.perf_counter() - t0) * 1000:.0f} ms")

    # queries: half near a stored vector (noisy copies), half random
    qs = np.concatenate([_unit(vecs[rng.choice(len(vecs), queries // 2)]
                               + 0.5 * _unit(rng.normal(size=(queries // 2, DIM)))),
                         _unit(rng.normal(size=(queries - queries // 2, DIM)))])
    truth = np.argsort(-(qs @ vecs.T), axis=1)[:, :10]
    truth_names = [{names[j] for j in row} for row in truth]

    for label, hnsw_above in (("flat", 10**9), ("hnsw", 0)):
        idx = SimilarityIndex(engine, None, hnsw_above=hnsw_above)
        t0 = time.perf_counter()
        idx.refresh()
        build = (time.perf_counter() - t0) * 1000
        times: list[float] = []
        recall: list[float] = []
        for q, want in zip(qs, truth_names, strict=True):
            t1 = time.perf_counter()
            got = idx.query(q, k=10)
            times.append((time.perf_counter() - t1) * 1000)
            recall.append(len({g["asset_id"] for g in got} & want) / 10)
        found = 0
        for i in range(planted):
            hit = idx.query(dups[i], k=1, exclude=f"d{i}")
            found += bool(hit) and hit[0]["asset_id"] == f"v{src[i]}"
        print(f"{label}: build {build:.0f} ms; query p50 {_pct(times, 50):.2f} ms, "
              f"p99 {_pct(times, 99):.2f} ms; recall@10 {np.mean(recall):.3f}; "
              f"planted duplicate's source first {found}/{planted}")
    store.close()


def photo(width: int, height: int) -> bytes:
    """A photo-like JPEG: skimage's chelsea scaled into a noisy canvas."""
    from skimage import data

    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(60, 200, (height // 8, width // 8, 3), dtype=np.uint8))
    canvas = canvas.resize((width, height))
    cat = Image.fromarray(data.chelsea())
    scale = height / cat.height
    cat = cat.resize((int(cat.width * scale), height))
    canvas.paste(cat, ((width - cat.width) // 2, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench_tasks(reps: int) -> None:
    import processors.tasks.classify_scene
    import processors.tasks.index_similarity
    import processors.tasks.tag  # noqa: F401
    from processors.media.decode_cache import DecodeCache
    from processors.registry import TaskInput, get

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-sim-img-"))
    images = {"1MP": (1155, 866), "12MP": (4000, 3000)}
    print(f"{'task':<18} {'image':<5} {'task ms':>9} {'decode ms':>10}")
    for task in ("tag", "classify-scene", "index-similarity"):
        proc = get(task)
        params = proc.parse_params({})
        for label, (w, h) in images.items():
            path = tmp / f"{label}.jpg"
            if not path.exists():
                path.write_bytes(photo(w, h))
            totals, decodes = [], []
            for rep in range(reps + 1):  # the first run loads the model: not counted
                t0 = time.perf_counter()
                image = DecodeCache(preview_side=512).get(
                    str(path), lambda p=path: p, proc.input.max_side, mode=proc.input.mode)
                t1 = time.perf_counter()
                proc.run(TaskInput(properties={}, image=image, path=path), params)
                t2 = time.perf_counter()
                if rep:
                    decodes.append((t1 - t0) * 1000)
                    totals.append((t2 - t0) * 1000)
            print(f"{task:<18} {label:<5} {statistics.median(totals):>9.1f} "
                  f"{statistics.median(decodes):>10.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--planted", type=int, default=200)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-tasks", action="store_true")
    args = ap.parse_args()
    bench_index(args.n, args.queries, args.planted)
    if not args.skip_tasks:
        bench_tasks(args.reps)


if __name__ == "__main__":
    main()
