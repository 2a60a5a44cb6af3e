"""Strict decoding of hostile inputs: broken files are refused, not grey-filled.

Every file is made here (Pillow, ffmpeg) and then damaged by editing bytes: truncated PNG/GIF/WebP,
JPEGs with garbage entropy data, a fake EOI or a header larger than its scan, a 16-bit PNG over the
decode memory bound, and AVI / MPEG-TS clips cut in half. Each case asserts the exact outcome,
through the decode path the pipeline uses (``DecodeCache.get`` -> ``decode_with_info``). Where it
matters, the test first shows that Pillow alone would have accepted the broken file.
"""

from __future__ import annotations

import importlib
import io
import re
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from processors import registry
from processors.media import ffmpeg as fu
from processors.media import imaging
from processors.media.decode_cache import DecodeCache
from processors.registry import ProcessorError, TaskInput

MAX_PIXELS = 100_000_000
PREVIEW = 640  # the pipeline's preview decode size (DARKROOM_PREVIEW_SIDE)
CUTS = (0.25, 0.5, 0.75, 0.95)
PREFIX = "corrupt or truncated image: "

importlib.import_module("processors.tasks.video_validate")  # registers validate-video


# ------------------------------------------------------------------------------------ helpers
def photo(size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """Gradients plus noise: enough entropy that every cut lands in pixel data."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([40 + 180 * x / w, 60 + 150 * y / h, 128 + 80 * np.sin(x / 23.0)], axis=-1)
    rgb += rng.normal(0.0, 12.0, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **opts: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def decode(data: bytes, max_side: int | None = PREVIEW, **kw: Any) -> Image.Image:
    """The pipeline's path: a fresh decode cache, as a task agent uses it."""
    cache = DecodeCache(preview_side=PREVIEW, **kw)
    return cache.get("asset", lambda: data, max_side)


def refusal(data: bytes, max_side: int | None = PREVIEW, **kw: Any) -> str:
    """The message of the permanent error decoding ``data`` must raise."""
    with pytest.raises(ProcessorError) as info:
        decode(data, max_side, **kw)
    assert info.value.permanent
    return str(info.value)


def pillow_accepts(data: bytes) -> bool:
    """Does plain Pillow decode ``data`` without complaint (the behaviour being fixed)?"""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def scan_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")


def garbage(n: int, seed: int) -> bytes:
    """Random bytes without 0xFF: no byte can pose as a marker, so only the entropy decoder
    can notice them."""
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(photo((640, 480)), "JPEG", quality=90)


# --------------------------------------------------------------------- good files: unchanged
@pytest.mark.parametrize(
    ("fmt", "opts"),
    [
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
        ("JPEG", {"quality": 90}),
        ("JPEG", {"quality": 85, "progressive": True}),
        ("JPEG", {"quality": 85, "subsampling": 0}),
    ],
)
def test_good_files_decode_exactly_as_pillow_does(fmt: str, opts: dict[str, Any]) -> None:
    data = encode(photo(), fmt, **opts)
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    got = decode(data, None)
    assert got.size == expected.size == (320, 240)
    assert got.mode == "RGB"
    assert got.tobytes() == expected.tobytes()


def test_good_jpeg_draft_decode_is_pixel_identical_to_pillow_draft() -> None:
    """The strict decoder (libjpeg-turbo via simplejpeg) at 1/8 DCT scale gives Pillow's pixels."""
    data = encode(photo((2000, 1600), seed=3), "JPEG", quality=88)
    ref = Image.open(io.BytesIO(data))
    ref.draft("RGB", (250, 1))
    ref.load()
    assert ref.size == (250, 200)
    got = imaging.decode_with_info(data, 250, max_pixels=MAX_PIXELS).image
    assert got.size == (250, 200)
    assert got.tobytes() == ref.tobytes()
    grey = DecodeCache(preview_side=250).get("g", lambda: data, 250, mode="L")
    ref_l = Image.open(io.BytesIO(data))
    ref_l.draft("L", (250, 1))
    ref_l.load()
    assert grey.mode == "L" and grey.tobytes() == ref_l.tobytes()


def test_good_animated_gif_and_cmyk_jpeg_decode() -> None:
    frames = [photo(seed=s) for s in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    assert decode(gif, None).tobytes() == Image.open(io.BytesIO(gif)).convert("RGB").tobytes()
    cmyk = encode(photo().convert("CMYK"), "JPEG", quality=90)
    expected = Image.open(io.BytesIO(cmyk)).convert("RGB")
    assert decode(cmyk, None).tobytes() == expected.tobytes()


def test_jpeg_header_quirk_libjpeg_only_warns_about_still_decodes(jpeg: bytes) -> None:
    """An unknown JFIF revision is a libjpeg *warning* too, but spoils no pixel: not refused."""
    quirky = bytearray(jpeg)
    jfif = quirky.index(b"JFIF\x00")
    quirky[jfif + 5] = 2  # version 2.01
    got = decode(bytes(quirky), None)
    assert got.tobytes() == Image.open(io.BytesIO(jpeg)).convert("RGB").tobytes()


# ------------------------------------------------------------------------- truncated PNG
@pytest.mark.parametrize("fraction", CUTS)
def test_truncated_png_is_refused(fraction: float) -> None:
    data = encode(photo(), "PNG")
    msg = refusal(cut(data, fraction))
    assert re.fullmatch(
        re.escape(PREFIX) + r"truncated PNG \(no IEND chunk: the IDAT chunk at byte \d+ is cut\)",
        msg,
    ), msg


def test_png_cut_before_or_inside_iend_is_refused() -> None:
    """Pillow has every pixel by then and decodes these two "fine"."""
    data = encode(photo(), "PNG")
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"
    no_iend = data[:-12]
    assert pillow_accepts(no_iend)
    assert refusal(no_iend) == PREFIX + "truncated PNG (no IEND chunk)"
    half_iend = data[:-2]
    assert pillow_accepts(half_iend)
    assert (
        refusal(half_iend)
        == PREFIX + f"truncated PNG (the IEND chunk at byte {len(data) - 12} is cut)"
    )


# ------------------------------------------------------------------------- truncated GIF
@pytest.fixture(scope="module")
def animated_gif() -> bytes:
    frames = [photo(seed=s) for s in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


@pytest.mark.parametrize("fraction", CUTS)
@pytest.mark.parametrize("kind", ["still", "animated"])
def test_truncated_gif_is_refused(kind: str, fraction: float, animated_gif: bytes) -> None:
    data = encode(photo(), "GIF") if kind == "still" else animated_gif
    assert refusal(cut(data, fraction)) == PREFIX + "truncated GIF (no trailer)"


def test_gif_cut_in_a_later_frame_or_before_the_trailer_is_refused(animated_gif: bytes) -> None:
    """Pillow decodes only the first frame: both cuts pass it."""
    assert animated_gif[-1:] == b";"
    for damaged in (cut(animated_gif, 0.75), animated_gif[:-1]):
        assert pillow_accepts(damaged)
        assert refusal(damaged) == PREFIX + "truncated GIF (no trailer)"


# ------------------------------------------------------------------------ truncated WebP
@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("fraction", [*CUTS, "last byte"])
def test_truncated_webp_is_refused(fraction: float | str, lossless: bool) -> None:
    data = encode(photo(), "WEBP", quality=80, lossless=lossless)
    damaged = data[:-1] if fraction == "last byte" else cut(data, float(fraction))
    assert refusal(damaged) == (
        PREFIX + f"truncated WebP (its RIFF header says {len(data)} bytes, "
        f"the file has {len(damaged)})"
    )


# --------------------------------------------------------------------------- broken JPEG
@pytest.mark.parametrize("max_side", [PREVIEW, 64, None])
def test_jpeg_with_garbage_entropy_data_is_refused(jpeg: bytes, max_side: int | None) -> None:
    start = scan_start(jpeg)
    middle = (start + len(jpeg)) // 2
    damaged = bytearray(jpeg)
    damaged[middle : middle + 2048] = garbage(2048, seed=7)
    assert pillow_accepts(bytes(damaged))  # libjpeg only warns; Pillow grey-fills
    msg = refusal(bytes(damaged), max_side)
    assert re.fullmatch(
        re.escape(PREFIX) + r"JPEG entropy data is corrupt \(Corrupt JPEG data: .+\)", msg
    ), msg


def test_jpeg_with_fake_eoi_is_refused(jpeg: bytes) -> None:
    """Half the scan, then an EOI marker: structurally a complete file."""
    start = scan_start(jpeg)
    damaged = jpeg[: (start + len(jpeg)) // 2] + b"\xff\xd9"
    assert pillow_accepts(damaged)
    expected = (
        PREFIX + "JPEG entropy data is corrupt (Corrupt JPEG data: premature end of data segment)"
    )
    assert refusal(damaged) == expected
    assert refusal(damaged, None) == expected


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_jpeg_header_larger_than_its_stream_is_refused() -> None:
    """SOF patched to 10000x10000 over a 320x240 scan: 10^8 pixels, within max_pixels."""
    data = bytearray(encode(photo(), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5 : sof + 9]) == (240, 320)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 10000, 10000)
    liar = bytes(data)
    assert imaging.probe_header(liar)["width"] == 10000
    expected = (
        PREFIX + "JPEG entropy data is corrupt (Corrupt JPEG data: premature end of data segment)"
    )
    assert refusal(liar) == expected  # the preview decode, at 1/8 scale
    assert refusal(liar, None) == expected


@pytest.mark.parametrize("fraction", CUTS)
def test_truncated_jpeg_is_refused(jpeg: bytes, fraction: float) -> None:
    expected = PREFIX + "truncated JPEG (the data ends before the EOI marker)"
    assert refusal(cut(jpeg, fraction)) == expected


def test_broken_cmyk_jpeg_is_refused() -> None:
    """CMYK is decoded by Pillow, but validated by the strict decoder first."""
    cmyk = encode(photo().convert("CMYK"), "JPEG", quality=90)
    damaged = cmyk[: (scan_start(cmyk) + len(cmyk)) // 2] + b"\xff\xd9"
    assert pillow_accepts(damaged)
    assert refusal(damaged) == (
        PREFIX + "JPEG entropy data is corrupt (Corrupt JPEG data: premature end of data segment)"
    )


# --------------------------------------------------------------------------- memory bound
def png16_rgb(width: int, height: int) -> bytes:
    arr = np.random.default_rng(1).integers(0, 65536, (height, width, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        imaging.PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_png_over_max_decode_bytes_is_refused() -> None:
    data = png16_rgb(64, 48)
    need = 64 * 48 * 6  # 16-bit RGB: 6 bytes per pixel
    with pytest.raises(ProcessorError) as info:
        imaging.decode_with_info(data, None, max_pixels=MAX_PIXELS, max_decode_bytes=need - 1)
    assert info.value.permanent
    assert str(info.value) == (
        f"decoding this image needs about {need} bytes (64\u00d748 px \u00d7 6 bytes, RGB), "
        f"over the limit max_decode_bytes={need - 1}"
    )
    assert "max_decode_bytes" in refusal(data, None, max_decode_bytes=need - 1)
    ok = imaging.decode_with_info(data, None, max_pixels=MAX_PIXELS, max_decode_bytes=need)
    assert ok.image.size == (64, 48)


def test_memory_bound_counts_the_jpeg_draft_size() -> None:
    """A 2000x1600 JPEG wanted at 250 px is decoded at 1/8 scale: 250x200x3 bytes."""
    data = encode(photo((2000, 1600)), "JPEG", quality=80)
    cache = DecodeCache(preview_side=250, max_decode_bytes=250 * 200 * 3)
    assert cache.get("a", lambda: data, 250).size == (250, 200)
    with pytest.raises(ProcessorError, match=r"2000\u00d71600 px \u00d7 3 bytes, RGB"):
        cache.get("a", lambda: data, None)


def test_wide_grey_conversion_in_bands_matches_the_whole_array_formula() -> None:
    """16-bit grey is converted in bands of rows (memory); the pixels are those of the formula
    applied to the whole array at once."""
    arr = np.random.default_rng(2).integers(0, 65536, (1500, 1100), dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    got = imaging.decode_with_info(data, None, mode="L", max_pixels=MAX_PIXELS).image
    want = np.clip(np.rint(arr.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    assert got.mode == "L" and np.array_equal(np.asarray(got), want)


# ---------------------------------------------------------------------------------- video
def ffmpeg(*args: str) -> None:
    cmd = [fu.ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args]
    subprocess.run(cmd, check=True, timeout=60, env=fu.child_env())


def make_clip(path: Path, *fmt: str) -> Path:
    """4 s of 320x240 H.264 at 25 fps (keyframe every second) + AAC."""
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4"),
        *("-f", "lavfi", "-i", "sine=frequency=440:duration=4"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-shortest", *fmt, str(path)),
    )
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("strict-video")
    return {"avi": make_clip(d / "clip.avi"), "ts": make_clip(d / "clip.ts", "-f", "mpegts")}


def validate(path: Path) -> dict[str, Any]:
    proc = registry.get("validate-video")
    return proc.run(TaskInput(properties={}, path=path), proc.parse_params(None))


def write_cut(path: Path, size: int) -> Path:
    out = path.with_name(f"cut-{size}-{path.name}")
    out.write_bytes(path.read_bytes()[:size])
    return out


@pytest.mark.parametrize("kind", ["avi", "ts"])
def test_intact_avi_and_ts_validate(clips: dict[str, Path], kind: str) -> None:
    result = validate(clips[kind])
    assert result["format"] == {"avi": "AVI", "ts": "MPEGTS"}[kind]
    assert result["duration"] == pytest.approx(4.0, abs=0.1)
    assert (result["width"], result["height"]) == (320, 240)


def test_avi_cut_in_half_is_refused(clips: dict[str, Path]) -> None:
    avi = clips["avi"]
    half = write_cut(avi, avi.stat().st_size // 2)
    # what ffprobe itself says: a valid AVI of half the length (its index was at the end)
    assert fu.probe(half).duration == pytest.approx(2.0, abs=0.2)
    with pytest.raises(ProcessorError) as info:
        validate(half)
    assert info.value.permanent
    assert re.fullmatch(
        r"the video file is truncated: its data ends near 2\.\d\ds, "
        r"its header declares 4\.04s \(101 frames\)",
        str(info.value),
    ), str(info.value)
    with pytest.raises(ProcessorError, match=r"header declares 4\.04s"):
        fu.inspect_video(half)  # every decoding video task checks this before it starts


def test_ts_cut_in_half_is_refused(clips: dict[str, Path]) -> None:
    ts = clips["ts"]
    size = ts.stat().st_size
    assert size % 188 == 0
    packet_cut = "the video file is truncated: it ends inside a 188-byte transport packet"
    frame_cut = re.escape("the video file is truncated or corrupt: its last frames do not decode (")
    cases = {
        size // 2: packet_cut if (size // 2) % 188 else frame_cut,
        size // 2 - (size // 2) % 188: frame_cut,  # on a packet boundary, inside a frame
        size // 2 - (size // 2) % 188 + 100: packet_cut,
    }
    for cut_size, expected in cases.items():
        half = write_cut(ts, cut_size)
        # MPEG-TS declares no duration: ffprobe reads it off the last timestamps
        assert fu.probe(half).duration == pytest.approx(2.0, abs=0.3)
        with pytest.raises(ProcessorError) as info:
            validate(half)
        assert info.value.permanent
        assert re.match(expected, str(info.value)), (cut_size, str(info.value))
