"""remove-artifacts: PSNR against the clean original before/after, and time per picture.

    uv run python benchmarks/artifacts.py [--qualities 10,20,40] [--passes 16] [--big]

For each scikit-image photo and JPEG quality: the photo is saved by Pillow at that quality, the
task runs on the decoded pixels (quality estimated, as in production), and PSNR against the clean
photo is printed before and after, with the gain and the task's wall time. ``--big`` adds one
12 MP picture (a photo upscaled to 4000x3000 and saved at quality 10) for the cost at full size.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processors.registry import TaskInput  # noqa: E402
from processors.tasks import remove_artifacts  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def run(img: Image.Image, passes: int) -> tuple[np.ndarray, dict[str, object], float]:
    params = remove_artifacts.RemoveArtifactsParams(passes=passes)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        inp = TaskInput(properties={"width": img.width, "height": img.height, "format": "JPEG"},
                        image=img, workdir=Path(tmp))
        t0 = time.perf_counter()
        result = remove_artifacts.remove_artifacts(inp, params)
        ms = (time.perf_counter() - t0) * 1000
        with Image.open(Path(tmp) / str(result["output"])) as im:
            out = np.asarray(im.convert("RGB"))
    return out, result, ms


def main() -> None:
    from skimage import data

    ap = argparse.ArgumentParser()
    ap.add_argument("--qualities", default="10")
    ap.add_argument("--passes", type=int, default=16, choices=(4, 16, 64))
    ap.add_argument("--big", action="store_true")
    args = ap.parse_args()
    print(f"{'photo':<22} {'q':>3} {'est':>4} {'before dB':>10} {'after dB':>9} {'gain':>6}"
          f" {'ms':>7}")
    for q in (int(v) for v in args.qualities.split(",")):
        gains = []
        for name in PHOTOS:
            clean = Image.fromarray(getattr(data, name)()).convert("RGB")
            compressed = jpeg(clean, q)
            out, result, ms = run(compressed, args.passes)
            ref = np.asarray(clean)
            before, after = psnr(ref, np.asarray(compressed)), psnr(ref, out)
            gains.append(after - before)
            est = result["params"]["estimated_quality"]  # type: ignore[index]
            print(f"{name:<22} {q:>3} {est!s:>4} {before:>10.2f} {after:>9.2f}"
                  f" {after - before:>+6.2f} {ms:>7.0f}")
        print(f"{'mean':<22} {q:>3} {'':>4} {'':>10} {'':>9} {np.mean(gains):>+6.2f}")
    if args.big:
        base = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
        compressed = jpeg(base, 10)
        _, result, ms = run(compressed, args.passes)
        print(f"12 MP (4000x3000, q10): {ms:.0f} ms, method {result['method']}")


if __name__ == "__main__":
    main()
