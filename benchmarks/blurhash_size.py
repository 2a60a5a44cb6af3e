"""BlurHash input size: how far the hash of a shrunk input lands from the full-size hash.

    uv run python benchmarks/blurhash_size.py [--sizes 32,64,96,128,160,192,256]

For every picture — the BlurHash reference vectors (``tests/data/vectors/blurhash``: the hash
woltapp's C encoder makes of the full-size pixels), the repository's ``samples/`` photos and
held-out photos from scikit-image (astronaut, coffee, chelsea, rocket, immunohistochemistry, as
1200 px JPEGs) — the full-size hash is compared with the hash of the input the pipeline would
hand the task: the shared decode at ``preview_side`` (640, JPEG draft mode) shrunk to
``max_side`` with each resampling filter. The difference is the mean absolute difference of the
two hashes' 32x32 decodes (0-255; distinct pictures differ by 55-120), at 4x3 and 5x4
components. Prints, per size and filter, the worst and the mean difference and the CPU ms of the
shrink + encode; the smallest size whose worst case stays within ``--goal`` (3/255) is the
answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import blurhash_py
import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processors.media.decode_cache import DecodeCache  # noqa: E402
from processors.media.imaging import REDUCING_GAP  # noqa: E402

VECTORS = ROOT / "tests/data/vectors/blurhash"
COMPONENTS = ((4, 3), (5, 4))
FILTERS = {
    "bilinear": (Image.Resampling.BILINEAR, REDUCING_GAP),
    "box": (Image.Resampling.BOX, None),
    "lanczos": (Image.Resampling.LANCZOS, REDUCING_GAP),
}


def held_out(folder: Path) -> list[Path]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = 1200 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.LANCZOS)
        path = folder / f"{name}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def decoded32(hash_: str) -> np.ndarray:
    return np.asarray(blurhash_py.decode(hash_, 32, 32), dtype=np.float32)


def shrink(img: Image.Image, side: int, filt: str) -> Image.Image:
    w, h = img.size
    if max(w, h) <= side:
        return img.copy()
    scale = side / max(w, h)
    size = (side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), side)
    resample, gap = FILTERS[filt]
    return img.resize(size, resample, reducing_gap=gap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="32,48,64,96,128,160,192,256")
    ap.add_argument("--goal", type=float, default=3.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pictures = sorted(VECTORS.glob("*.png")) + sorted((ROOT / "samples").glob("*.jpg"))
        pictures += held_out(Path(tmp))
        refs: dict[tuple[str, int, int], str] = {}
        if (VECTORS / "expected.json").exists():
            for v in json.loads((VECTORS / "expected.json").read_text()):
                refs[(v["file"], v["x_components"], v["y_components"])] = v["blurhash"]
        previews = {}
        for path in pictures:
            with Image.open(path) as im:
                full = ImageOps.exif_transpose(im).convert("RGB")  # upright, as the decode
            for xc, yc in COMPONENTS:
                key = (path.name, xc, yc)
                ours = blurhash_py.encode(full, xc, yc)
                if key in refs and refs[key] != ours:
                    raise SystemExit(f"{path.name}: the encoder differs from the reference")
                refs[key] = ours
            cache = DecodeCache(preview_side=640)
            previews[path.name] = cache.get(str(path), lambda p=path: p, 640, "RGB")  # type: ignore[misc]
        print(f"{len(pictures)} pictures ({len(list(VECTORS.glob('*.png')))} reference vectors,"
              f" samples, held-out photos) x {len(COMPONENTS)} component counts; difference ="
              f" mean |decode32(ours) - decode32(full size)| in 0-255")
        best: tuple[int, str] | None = None
        rows = []
        for side in sizes:
            for filt in FILTERS:
                diffs, worst_on = [], ""
                start = time.process_time()
                for name, preview in previews.items():
                    small = shrink(preview, side, filt)
                    for xc, yc in COMPONENTS:
                        d = float(np.abs(decoded32(blurhash_py.encode(small, xc, yc))
                                         - decoded32(refs[(name, xc, yc)])).mean())
                        if not diffs or d > max(diffs):
                            worst_on = f"{name} {xc}x{yc}"
                        diffs.append(d)
                ms = (time.process_time() - start) * 1000 / (len(previews) * len(COMPONENTS))
                ok = max(diffs) <= args.goal
                rows.append({"side": side, "filter": filt, "worst": max(diffs),
                             "mean": float(np.mean(diffs)), "ms": ms})
                print(f"  {side:4d} px {filt:8s}: worst {max(diffs):5.2f} ({worst_on}), mean "
                      f"{np.mean(diffs):5.2f}; shrink + encode {ms:.2f} ms CPU"
                      f"{'  <= goal' if ok else ''}")
                if ok and best is None:
                    best = (side, filt)
        print(f"smallest within {args.goal}/255 everywhere: "
              f"{f'{best[0]} px, {best[1]}' if best else 'none of these sizes'}")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
