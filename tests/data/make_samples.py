"""Generate the small sample images in ``samples/`` (deterministic; run from anywhere).

    uv run python tests/data/make_samples.py

* ``photo.jpg``   - 800x600 photo-like JPEG (sky gradient, hills, sun, sensor noise);
* ``rotated.jpg`` - 480x320 stored landscape with EXIF orientation 6: displays as 320x480 portrait,
                    red band on top once oriented (a test of EXIF handling);
* ``logo.png``    - 256x256 RGBA with a transparent background (alpha compositing);
* ``tests/data/corrupt.jpg`` - ``photo.jpg`` truncated to half, then garbage: must be refused,
  not grey-filled (kept out of samples/ so `darkroom process samples/` succeeds).

No external data: everything is drawn with Pillow + numpy, so the files can be re-created exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "samples"
EXIF_ORIENTATION = 0x0112


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A landscape-ish picture: smooth gradients and shapes plus noise, so JPEG behaves as on
    photos (flat colours compress unrealistically well and decode unrealistically fast)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 80 * y / height, 140 + 60 * y / height, 235 - 40 * y / height], axis=-1)
    horizon = height * (0.6 + 0.08 * np.sin(x / width * 7.0) + 0.04 * np.sin(x / width * 23.0))
    ground = np.stack(
        [60 + 40 * np.sin(x / 37.0), 120 + 30 * np.cos(y / 29.0), 50 + 0 * x], axis=-1
    )
    img = np.where((y > horizon)[..., None], ground, sky)
    sun = (x - width * 0.75) ** 2 + (y - height * 0.2) ** 2 < (min(width, height) * 0.08) ** 2
    img[sun] = (255, 230, 140)
    img += rng.normal(0.0, 6.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def rotated_jpeg() -> bytes:
    """Stored 480x320 with the left third red; orientation 6 (rotate 90° clockwise to view)."""
    img = Image.new("RGB", (480, 320), (40, 90, 200))
    ImageDraw.Draw(img).rectangle((0, 0, 159, 319), fill=(220, 20, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, exif=exif.tobytes())
    return buf.getvalue()


def logo_png() -> bytes:
    img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((28, 28, 228, 228), fill=(240, 120, 20, 255))
    draw.rectangle((98, 70, 158, 186), fill=(255, 255, 255, 255))
    draw.ellipse((8, 8, 60, 60), fill=(20, 160, 90, 128))  # half-transparent
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def corrupt_jpeg(valid: bytes) -> bytes:
    """Half a valid JPEG (header intact, scan cut) followed by bytes that are not JPEG data."""
    return valid[: len(valid) // 2] + b"\x00garbage-not-jpeg-data\x00" * 8


def main() -> None:
    buf = io.BytesIO()
    photo_like(800, 600).save(buf, "JPEG", quality=85, optimize=True)
    photo = buf.getvalue()
    outputs = {
        "photo.jpg": photo,
        "rotated.jpg": rotated_jpeg(),
        "logo.png": logo_png(),
        "corrupt.jpg": corrupt_jpeg(photo),
    }
    for name, data in outputs.items():
        assert len(data) < 200_000, f"{name} is {len(data)} bytes, keep samples small"
        (HERE if name == "corrupt.jpg" else SAMPLES).joinpath(name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
