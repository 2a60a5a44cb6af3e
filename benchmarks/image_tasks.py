"""CPU cost of the cheap image tasks of one upload, against a single JPEG draft decode.

    uv run python benchmarks/image_tasks.py [--runs N]

The claim being checked: with the shared decode cache, running validate-image + blurhash +
dominant-colors on a 12 MP JPEG costs at most 1.5x one Pillow draft decode at the preview size
(the decode dominates; the tasks themselves are cheap once they get a small image).

(a) baseline: ``Image.open; draft('RGB', (512, 512)); load()`` - the preview decode alone;
(b) pipeline: probe header + a fresh ``DecodeCache`` serving blurhash's and dominant-colors'
    ``max_side`` (one decode shared) + the three processors' ``run``.
For context it also times a full-size decode, and what three tasks each doing their own
full-size decode would cost.

CPU time (``time.process_time``), best and median of N runs; everything is single-threaded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from processors import registry
from processors.media import imaging
from processors.media.decode_cache import DecodeCache
from processors.registry import TaskInput

GOAL = 1.5
PREVIEW_SIDE = 512
MAX_PIXELS = 100_000_000


def make_photo(path: Path, width: int = 4000, height: int = 3000) -> None:
    """A photo-like 12 MP JPEG: gradients and shapes plus sensor-like noise, quality 90.

    Noise matters: flat synthetic images entropy-decode several times faster than photos.
    """
    rng = np.random.default_rng(42)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            40 + 170 * x / width,
            60 + 150 * y / height,
            128 + 90 * np.sin(x / 310.0) * np.cos(y / 230.0),
        ],
        axis=-1,
    )
    disc = (x - 0.7 * width) ** 2 + (y - 0.3 * height) ** 2 < (0.12 * height) ** 2
    base[disc] = (250, 225, 150)
    base += rng.normal(0.0, 10.0, base.shape).astype(np.float32)
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def cpu_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(best, median) CPU milliseconds of ``fn`` over ``runs`` runs, after one warm-up."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        samples.append((time.process_time() - start) * 1000.0)
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per measurement (>= 5)")
    args = parser.parse_args()
    runs = max(5, args.runs)

    procs = registry.load_all()
    validate, blurhash, colors = (
        procs[name] for name in ("validate-image", "blurhash", "dominant-colors")
    )
    no_params, bh_params, dc_params = (p.parse_params(None) for p in (validate, blurhash, colors))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo-12mp.jpg"
        make_photo(path)
        file_size = path.stat().st_size

        def baseline() -> None:
            with Image.open(path) as im:
                im.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))
                im.load()

        def pipeline() -> None:
            props: dict[str, object] = dict(imaging.probe_header(path))
            props["file_size"] = file_size
            cache = DecodeCache(preview_side=PREVIEW_SIDE, max_pixels=MAX_PIXELS)
            validate.run(TaskInput(properties=props), no_params)
            for proc, params in ((blurhash, bh_params), (colors, dc_params)):
                spec = proc.input
                img = cache.get(str(path), lambda: path, spec.max_side, spec.mode, spec.resample)
                proc.run(TaskInput(properties=props, image=img), params)
            assert cache.decodes == 1, cache.stats()

        def full_decode() -> None:
            with Image.open(path) as im:
                im.load()

        base_best, base_med = cpu_ms(baseline, runs)
        pipe_best, pipe_med = cpu_ms(pipeline, runs)
        full_best, full_med = cpu_ms(full_decode, runs)

    ratio = pipe_best / base_best
    verdict = "ok" if ratio <= GOAL else "OVER GOAL"
    print(f"input: 4000x3000 JPEG q90, {file_size / 1e6:.1f} MB; {runs} runs, best (median)")
    print(
        f"draft-decode-{PREVIEW_SIDE}: {base_best:.1f} ms CPU ({base_med:.1f}) "
        "- baseline: Image.open + draft + load"
    )
    print(
        f"cheap-image-tasks: {pipe_best:.1f} ms CPU ({pipe_med:.1f}) vs draft decode "
        f"{base_best:.1f} ms -> ratio {ratio:.2f}x (goal <= {GOAL}x) {verdict}"
    )
    print(
        f"full-decode: {full_best:.1f} ms CPU ({full_med:.1f}) "
        f"= {full_best / base_best:.2f}x the draft decode"
    )
    print(
        f"naive (3 tasks x full decode): {3 * full_best:.1f} ms CPU "
        f"-> ratio {3 * full_best / base_best:.2f}x, {3 * full_best / pipe_best:.1f}x the pipeline"
    )


if __name__ == "__main__":
    main()
