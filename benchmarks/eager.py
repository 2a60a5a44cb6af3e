"""eager: three renditions of a 12 MP JPEG from one decode, against the unavoidable work.

    uv run python benchmarks/eager.py [--runs 5]

The task (CPU time, ``time.process_time``: every thread of the process) is compared with the
sum of what it cannot avoid, each measured alone: one draft decode of the file at the scale the
renditions need (the same strict decoder) plus the three encodes of the finished renditions.
The rest is the task's own overhead: header probe, planning, the resamples, file writes.
Goal: task <= 1.3x that sum. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from processors.media import imaging  # noqa: E402
from processors.registry import TaskInput  # noqa: E402
from processors.tasks import eager  # noqa: E402

RENDITIONS = [
    {"name": "large", "width": 1600, "format": "webp", "quality": 80},
    {"name": "medium", "width": 800, "height": 800, "fit": "cover", "format": "jpeg"},
    {"name": "thumb", "width": 200, "height": 200, "fit": "cover", "format": "avif"},
]


def cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    out = fn()
    return (time.process_time() - t0) * 1000, out


def photo_12mp() -> bytes:
    from skimage import data

    img = Image.fromarray(data.chelsea()).resize((4000, 3000), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    src = tmp / "photo.jpg"
    src.write_bytes(photo_12mp())
    params = eager.EagerParams.model_validate({"renditions": RENDITIONS})
    full = (4000, 3000)
    side = eager.draft_side(max(full), eager.needed_scale(params.renditions, full))
    task_ms, decode_ms, encode_ms = [], [], []
    result: dict[str, Any] = {}
    for i in range(args.runs + 1):  # the first run warms up (imports, codec init)
        work = tmp / f"run{i}"
        work.mkdir()
        t, result = cpu(lambda work=work: eager.eager(
            TaskInput(properties={}, path=src, workdir=work), params))
        d, decoded = cpu(lambda: imaging.decode(src, side, mode="RGB",
                                                max_pixels=eager.MAX_PIXELS))
        enc = 0.0
        for spec in params.renditions:
            with Image.open(work / spec.file_name) as im:
                done = im.convert("RGB")
                done.load()
            e, _ = cpu(lambda done=done, spec=spec, i=i: eager._encode(
                done, spec, tmp / f"alone{i}-{spec.file_name}"))
            enc += e
        if i:
            task_ms.append(t)
            decode_ms.append(d)
            encode_ms.append(enc)
    t, d, e = (statistics.median(x) for x in (task_ms, decode_ms, encode_ms))
    print(f"12 MP JPEG, decoded at {decoded.size[0]}x{decoded.size[1]} (draft max_side={side})")
    for r in result["renditions"]:
        print(f"  {r['name']:7s} {r['width']}x{r['height']} {r['format']:5s} {r['bytes']} B")
    print(f"task {t:.1f} ms CPU; draft decode {d:.1f} + three encodes {e:.1f} = {d + e:.1f} ms")
    print(f"ratio {t / (d + e):.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
