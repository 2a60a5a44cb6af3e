"""Per-task cost on a 1 MP and a 12 MP JPEG, and the share of preprocessing in it.

    uv run python benchmarks/image_models.py [--reps 3] [--tasks nsfw,ocr,...]

Preprocessing = what the agent does before the processor runs: one decode at the size the task
declares (JPEG draft mode + shrink, through a fresh DecodeCache, as for the first task of an
asset). Task time = preprocessing + the processor's run (models warm, loaded once). Goal:
preprocessing <= 20% of task time. Medians of --reps runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.composition import Runtime  # noqa: E402
from agents.settings import Settings  # noqa: E402
from processors.media.decode_cache import DecodeCache  # noqa: E402
from processors.registry import TaskInput, load_all  # noqa: E402

DEFAULT_TASKS = ["validate-image", "blurhash", "dominant-colors", "count-faces", "index-faces",
                 "nsfw", "ocr", "remove-background", "tag", "classify-scene", "index-similarity",
                 "recognize-plate", "blur-plates", "extract-logo", "remove-artifacts"]


def photo(width: int, height: int) -> bytes:
    """A photo-like JPEG with a real face in it (skimage's astronaut, tiled over noise)."""
    from skimage import data

    base = Image.fromarray(data.astronaut()).resize((height, height))
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(60, 200, (height, width, 3), dtype=np.uint8))
    canvas = canvas.resize((width // 8, height // 8)).resize((width, height))
    canvas.paste(base, ((width - height) // 2, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    args = ap.parse_args()
    procs = load_all()
    given = Runtime(Settings()).processor_settings  # DARKROOM_MODEL_THREADS, _LOGO_LIBRARY, ...
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-models-"))
    images = {"1MP": (1155, 866), "12MP": (4000, 3000)}
    print(f"{'task':<18} {'image':<5} {'task ms':>9} {'preproc ms':>11} {'share':>7}")
    for task in args.tasks.split(","):
        if task not in procs:
            print(f"{task:<18} (not registered)")
            continue
        proc = procs[task]
        params = proc.parse_params({})
        for label, (w, h) in images.items():
            path = tmp / f"{label}.jpg"
            if not path.exists():
                path.write_bytes(photo(w, h))
            props = {"width": w, "height": h, "format": "JPEG", "file_size": path.stat().st_size,
                     "folder": "/bench", "filename": path.name, "content_type": "image/jpeg"}
            totals, pres = [], []
            if task == "extract-logo" and not given.logo_library:
                print(f"{task:<18} (skipped: set DARKROOM_LOGO_LIBRARY to a folder of logos)")
                break
            for rep in range(args.reps + 1):  # the first run loads the model: not counted
                work = Path(tempfile.mkdtemp(dir=tmp))
                t0 = time.perf_counter()
                image = None
                if proc.input.kind == "image":
                    image = DecodeCache(preview_side=640).get(
                        str(path), lambda p=path: p, proc.input.max_side, mode=proc.input.mode)
                t1 = time.perf_counter()
                proc.run(TaskInput(properties=props, image=image, path=path, workdir=work,
                                   settings=given), params)
                t2 = time.perf_counter()
                if rep:
                    pres.append((t1 - t0) * 1000)
                    totals.append((t2 - t0) * 1000)
            total, pre = statistics.median(totals), statistics.median(pres)
            print(f"{task:<18} {label:<5} {total:>9.1f} {pre:>11.1f} {pre / total:>7.0%}",
                  flush=True)
    shared_decode(procs, tmp, args.reps)


def shared_decode(procs: dict[str, Any], tmp: Path, reps: int) -> None:
    """The pipeline's case: every image task of one 12 MP asset, one DecodeCache between them
    (tasks asking for <= the preview size reuse one decode)."""
    names = [n for n in ("blurhash", "dominant-colors", "count-faces", "nsfw", "tag",
                         "classify-scene", "index-similarity") if n in procs]
    path = tmp / "12MP.jpg"
    props = {"width": 4000, "height": 3000, "format": "JPEG", "folder": "/bench"}
    rows = []
    for rep in range(reps + 1):
        cache = DecodeCache(preview_side=640)  # the DARKROOM_PREVIEW_SIDE default
        pre = run = 0.0
        for n in names:
            proc = procs[n]
            t0 = time.perf_counter()
            img = cache.get(str(path), lambda: path, proc.input.max_side, mode=proc.input.mode)
            t1 = time.perf_counter()
            proc.run(TaskInput(properties=props, image=img, path=path), proc.parse_params({}))
            pre, run = pre + t1 - t0, run + time.perf_counter() - t1
        if rep:
            rows.append((pre * 1000, (pre + run) * 1000, cache.decodes))
    pre_ms = statistics.median(r[0] for r in rows)
    tot_ms = statistics.median(r[1] for r in rows)
    print(f"shared decode, {len(names)} tasks on one 12MP asset: {tot_ms:.1f} ms, preprocessing "
          f"{pre_ms:.1f} ms ({pre_ms / tot_ms:.0%}), decodes per asset: {rows[-1][2]}")


if __name__ == "__main__":
    main()
