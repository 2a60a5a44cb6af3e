"""processors.media.imaging: header probing, bomb refusal, JPEG draft decoding, orientation,
modes."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from processors.media import imaging
from processors.registry import ProcessorError
from tests.conftest import ROOT

SAMPLES = ROOT / "samples"
MAX_PIXELS = 100_000_000


def encode(img: Image.Image, fmt: str, **opts: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def gradient(size: tuple[int, int], noise: bool = True) -> Image.Image:
    """Smooth gradient, plus mild noise unless asked not to (noise is slow at 12 MP)."""
    w, h = size
    red = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((w, h))
    green = Image.linear_gradient("L").resize((w, h))
    blue = Image.new("L", (w, h), 128)
    img = Image.merge("RGB", (red, green, blue))
    if noise:
        rng = np.random.default_rng(0)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width``x``height`` (CRC fixed): a cheap 'bomb'."""
    data = bytearray(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    # signature (8) + length (4) + b"IHDR" (4), then width, height; CRC covers type + 13 bytes
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def orientation_jpeg(orientation: int) -> bytes:
    """Stored 400x200 with the left quarter red, saved with the given EXIF orientation."""
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    ImageDraw.Draw(img).rectangle((0, 0, 99, 199), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    return encode(img, "JPEG", quality=90, exif=exif.tobytes())


def is_red(px: Any) -> bool:
    r, g, b = px[:3]
    return bool(r > 200 and g < 60 and b < 60)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 12 MP JPEG (4000x3000), as phone cameras produce."""
    return encode(gradient((4000, 3000), noise=False), "JPEG", quality=85)


@pytest.fixture
def loaded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the size of the image as decoded by libjpeg, before any resampling."""
    sizes: list[tuple[int, int]] = []
    real: Callable[[Image.Image], Image.Image] = imaging._to_resizable

    def spy(im: Image.Image) -> Image.Image:
        sizes.append(im.size)
        return real(im)

    monkeypatch.setattr(imaging, "_to_resizable", spy)
    return sizes


# --------------------------------------------------------------------------------- probe_header
@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP"), ("GIF", "GIF"), ("TIFF", "TIFF")],
)
def test_probe_header_formats(fmt: str, expected: str) -> None:
    data = encode(gradient((64, 48)), fmt)
    assert imaging.probe_header(data) == {"width": 64, "height": 48, "format": expected}


def test_probe_header_reads_no_pixels() -> None:
    # Half the file is gone, yet the header (which is all probing reads) is intact.
    data = encode(gradient((640, 480)), "JPEG")
    assert imaging.probe_header(data[: len(data) // 2])["width"] == 640


def test_probe_header_accepts_path_str_and_file(tmp_path: Path) -> None:
    data = encode(gradient((30, 20)), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    expected = {"width": 30, "height": 20, "format": "PNG"}
    assert imaging.probe_header(path) == expected
    assert imaging.probe_header(str(path)) == expected
    with path.open("rb") as fh:
        assert imaging.probe_header(fh) == expected
        assert not fh.closed  # a caller's file is the caller's to close


def test_probe_header_reports_upright_size() -> None:
    probed = imaging.probe_header(orientation_jpeg(6))
    assert (probed["width"], probed["height"]) == (200, 400)
    probed = imaging.probe_header(orientation_jpeg(3))
    assert (probed["width"], probed["height"]) == (400, 200)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0\x00\x10JFIF"])
def test_probe_header_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ProcessorError) as info:
        imaging.probe_header(data)
    assert info.value.permanent


def test_missing_file_is_not_permanent(tmp_path: Path) -> None:
    with pytest.raises(ProcessorError) as info:
        imaging.probe_header(tmp_path / "missing.jpg")
    assert not info.value.permanent


# ------------------------------------------------------------------------------ bomb refusal
def test_decode_refuses_over_max_pixels_before_decoding() -> None:
    # The pixel data is a single pixel: had we tried to decode it we would get a different error.
    data = png_with_claimed_size(5000, 5000)
    with pytest.raises(ProcessorError) as info:
        imaging.decode(data, 512, max_pixels=1_000_000)
    assert info.value.permanent
    expected = "image is 5000\u00d75000 = 25000000 pixels, over the limit of 1000000"
    assert str(info.value) == expected


def test_decode_refuses_real_image_over_limit() -> None:
    with pytest.raises(ProcessorError, match="over the limit of 100"):
        imaging.decode(encode(gradient((20, 10)), "PNG"), None, max_pixels=100)


def test_huge_claimed_header_is_refused_by_probe_and_decode() -> None:
    data = png_with_claimed_size(100_000, 100_000)
    with pytest.raises(ProcessorError, match="decompression bomb") as info:
        imaging.probe_header(data)
    assert info.value.permanent
    with pytest.raises(ProcessorError):
        imaging.decode(data, 64, max_pixels=MAX_PIXELS)


# ------------------------------------------------------------------------------- JPEG draft
def test_jpeg_draft_decodes_at_reduced_scale(
    big_jpeg: bytes, loaded_sizes: list[tuple[int, int]]
) -> None:
    img = imaging.decode(big_jpeg, 500, max_pixels=MAX_PIXELS)
    # 4000 / 8 = 500: libjpeg produced the final size directly, nothing was resampled.
    assert loaded_sizes == [(500, 375)]
    assert img.size == (500, 375)

    img = imaging.decode(big_jpeg, 600, max_pixels=MAX_PIXELS)
    # 1/8 would be too small (500 < 600): 1/4 scale, then a shrink to 600.
    assert loaded_sizes[-1] == (1000, 750)
    assert img.size == (600, 450)


def test_jpeg_draft_sizes_on_the_long_side(loaded_sizes: list[tuple[int, int]]) -> None:
    # A square draft box would force the short side to 512 too and decode 2048x512.
    panorama = encode(gradient((4096, 1024), noise=False), "JPEG", quality=80)
    img = imaging.decode(panorama, 512, max_pixels=MAX_PIXELS)
    assert loaded_sizes == [(512, 128)]
    assert img.size == (512, 128)


def test_full_size_decode(big_jpeg: bytes, loaded_sizes: list[tuple[int, int]]) -> None:
    decoded = imaging.decode_with_info(big_jpeg, None, max_pixels=MAX_PIXELS)
    assert loaded_sizes == [(4000, 3000)]
    assert decoded.image.size == (4000, 3000)
    assert decoded.full and decoded.original_size == (4000, 3000)
    assert decoded.format == "JPEG"
    assert decoded.image.getpixel((10, 10)) is not None  # pixels usable after the file is gone


def test_decode_never_upscales() -> None:
    img = imaging.decode(encode(gradient((100, 50)), "PNG"), 512, max_pixels=MAX_PIXELS)
    assert img.size == (100, 50)


# --------------------------------------------------------------------------- corrupt inputs
def test_truncated_jpeg_is_a_permanent_error() -> None:
    data = encode(gradient((640, 480)), "JPEG", quality=90)
    for max_side in (None, 128):
        with pytest.raises(ProcessorError, match="corrupt or truncated image") as info:
            imaging.decode(data[: len(data) // 2], max_side, max_pixels=MAX_PIXELS)
        assert info.value.permanent


def test_corrupt_sample_is_refused() -> None:
    with pytest.raises(ProcessorError, match="corrupt or truncated"):
        corrupt = SAMPLES.parent / "tests" / "data" / "corrupt.jpg"
        imaging.decode(corrupt, 512, max_pixels=MAX_PIXELS)


def test_garbage_is_refused() -> None:
    with pytest.raises(ProcessorError, match="not a recognised image format"):
        imaging.decode(b"GIF87a-but-not-really", 64, max_pixels=MAX_PIXELS)


# ------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("max_side", [None, 100])
def test_exif_orientation_6_is_applied(max_side: int | None) -> None:
    decoded = imaging.decode_with_info(orientation_jpeg(6), max_side, max_pixels=MAX_PIXELS)
    img = decoded.image
    scale = 1 if max_side is None else 4
    assert img.size == (200 // scale, 400 // scale)
    assert decoded.original_size == (200, 400)
    # Rotated 90° clockwise: the stored left quarter (red) is now the top quarter.
    assert is_red(img.getpixel((img.width // 2, img.height // 8)))
    assert not is_red(img.getpixel((img.width // 2, img.height * 7 // 8)))


def test_exif_orientation_8_and_3() -> None:
    img = imaging.decode(orientation_jpeg(8), None, max_pixels=MAX_PIXELS)
    assert img.size == (200, 400)
    assert is_red(img.getpixel((100, 380)))  # counter-clockwise: the left edge goes to the bottom
    img = imaging.decode(orientation_jpeg(3), None, max_pixels=MAX_PIXELS)
    assert img.size == (400, 200)
    assert is_red(img.getpixel((380, 100)))  # 180°: left goes right


# ------------------------------------------------------------------------------------ modes
def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((0, 0, 19, 19), fill=(255, 0, 0, 255))
    out = imaging.decode(encode(img, "PNG"), None, max_pixels=MAX_PIXELS)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 0, 0)
    assert out.getpixel((35, 5)) == (255, 255, 255)
    kept = imaging.decode(encode(img, "PNG"), None, mode="RGBA", max_pixels=MAX_PIXELS)
    assert kept.mode == "RGBA" and kept.getpixel((35, 5)) == (0, 0, 0, 0)


def test_palette_with_transparency_and_la() -> None:
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    ImageDraw.Draw(pal).rectangle((0, 0, 9, 19), fill=1)
    out = imaging.decode(encode(pal, "GIF", transparency=0), 10, max_pixels=MAX_PIXELS)
    assert out.mode == "RGB" and out.size == (10, 10)
    assert out.getpixel((1, 5)) == (0, 200, 0)
    assert out.getpixel((8, 5)) == (255, 255, 255)

    la = Image.new("LA", (10, 10), (0, 0))
    out = imaging.decode(encode(la, "PNG"), None, max_pixels=MAX_PIXELS)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    out = imaging.decode(data, None, max_pixels=MAX_PIXELS)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_and_cmyk_jpeg() -> None:
    gray = imaging.decode(
        encode(gradient((300, 200)), "JPEG"), 100, mode="L", max_pixels=MAX_PIXELS
    )
    assert gray.mode == "L" and gray.size == (100, 67)
    cmyk = encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG")
    out = imaging.decode(cmyk, None, max_pixels=MAX_PIXELS)
    assert out.mode == "RGB" and is_red(out.getpixel((25, 20)))


def test_sources_bytes_path_and_file(tmp_path: Path) -> None:
    data = encode(gradient((120, 80)), "WEBP")
    path = tmp_path / "x.webp"
    path.write_bytes(data)
    for src in (data, path, str(path), io.BytesIO(data)):
        assert imaging.decode(src, 60, max_pixels=MAX_PIXELS).size == (60, 40)


# ------------------------------------------------------------------------------------ shrink
def test_shrink_returns_new_image_and_keeps_aspect() -> None:
    src = gradient((300, 100))
    before = src.tobytes()
    small = imaging.shrink(src, 60)
    assert small.size == (60, 20) and small is not src
    assert src.size == (300, 100) and src.tobytes() == before
    tall = imaging.shrink(gradient((10, 1000)), 100)
    assert tall.size == (1, 100)


@pytest.mark.parametrize("max_side", [None, 300, 1000])
def test_shrink_copies_when_no_shrink_is_needed(max_side: int | None) -> None:
    src = gradient((300, 100))
    out = imaging.shrink(src, max_side)
    assert out is not src and out.size == src.size
    out.putpixel((0, 0), (1, 2, 3))
    assert src.getpixel((0, 0)) != (1, 2, 3)


def test_shrink_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        imaging.shrink(gradient((30, 30)), 0)
