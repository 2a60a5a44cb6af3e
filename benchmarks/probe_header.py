"""probe_header: Pillow's ``Image.open`` path against the pure-Python header reader.

    /work/main/.venv/bin/python benchmarks/probe_header.py [--calls 2000] [--rounds 7]

Writes four files to a temporary folder (a 640x480 JPEG, a 4000x3000 "camera" JPEG with EXIF
orientation 6 and ~20 kB of maker data, a 640x480 PNG, a 640x480 lossy WebP), checks that both
paths give the same answer, then times each path on each file (path source, as the router probes
the uploaded file, and bytes source) in interleaved rounds and prints the best round's
microseconds per call and the ratio. Timings are wall clock on one core: run it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processors.media import imaging  # noqa: E402


def _picture(size: tuple[int, int]) -> Image.Image:
    w, h = size
    red = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((w, h))
    green = Image.linear_gradient("L").resize((w, h))
    return Image.merge("RGB", (red, green, Image.new("L", (w, h), 128)))


def _camera_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model X"
    exif[0x0112] = 6
    exif[0x011A] = 72.0
    exif[0x011B] = 72.0
    exif[0x0128] = 2
    exif[0x0131] = "firmware 1.0"
    exif[0x0132] = "2026:01:01 12:00:00"
    exif[0x927C] = b"\x00" * 20000  # maker note (out of line, as cameras write it)
    return exif.tobytes()


def make_files(folder: Path) -> dict[str, Path]:
    small = _picture((640, 480))
    files = {
        "JPEG 640x480": ("small.jpg", small, "JPEG", {"quality": 85}),
        "JPEG 12 MP + EXIF": (
            "camera.jpg",
            _picture((4000, 3000)),
            "JPEG",
            {"quality": 90, "exif": _camera_exif()},
        ),
        "PNG 640x480": ("small.png", small, "PNG", {}),
        "WebP 640x480": ("small.webp", small, "WEBP", {"quality": 80}),
    }
    out = {}
    for label, (name, img, fmt, opts) in files.items():
        buf = io.BytesIO()
        img.save(buf, fmt, **opts)
        path = folder / name
        path.write_bytes(buf.getvalue())
        out[label] = path
    return out


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp))
        print(f"{'file':20s} {'source':6s} {'size':>9s} {'Pillow us':>10s} {'fast us':>8s} ratio")
        for label, path in files.items():
            data = path.read_bytes()
            for source_name, src in (("path", path), ("bytes", data)):
                pillow = imaging._probe_with_pillow(src)
                fast = imaging._probe_fast(src)
                if fast is None or fast != pillow:
                    raise SystemExit(f"{label}: fast path {fast} != Pillow path {pillow}")
                best_pillow = best_fast = float("inf")
                for _ in range(args.rounds):  # interleaved, so drift hits both alike
                    best_pillow = min(
                        best_pillow,
                        per_call_us(lambda s=src: imaging._probe_with_pillow(s), args.calls),
                    )
                    best_fast = min(
                        best_fast, per_call_us(lambda s=src: imaging.probe_header(s), args.calls)
                    )
                print(
                    f"{label:20s} {source_name:6s} {len(data):9d} {best_pillow:10.1f} "
                    f"{best_fast:8.1f} {best_pillow / best_fast:5.1f}x"
                )


if __name__ == "__main__":
    main()
