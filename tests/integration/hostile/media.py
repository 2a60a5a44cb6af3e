"""Byte-level builders for the hostile media corpus: valid images and videos made here, and the
broken, lying, bomb and polyglot variants made from them by editing bytes (no external files).

Everything is deterministic: the pictures come from a seeded generator, the videos from ffmpeg's
lavfi sources with bit-exact flags, and every "random" byte string from ``random.Random(seed)``.
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
import tempfile
import zipfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------ base pictures


def picture(width: int = 320, height: int = 240, seed: int = 1, mode: str = "RGB") -> Image.Image:
    """A gradient with shapes and a little noise: enough entropy that a cut lands in pixel data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(1, width - 1)).astype(np.int32)
    g = (y * 255 // max(1, height - 1)).astype(np.int32)
    b = ((x + y) * 127 // max(1, width + height - 2) + 64).astype(np.int32)
    arr = np.stack([r, g, b], -1)
    arr[height // 4: height // 2, width // 4: width // 2] = (220, 40, 40)
    arr += rng.integers(-24, 24, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def cut(data: bytes, fraction: float) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


# ------------------------------------------------------------------------------------- PNG

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", value & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        kind = data[pos + 4: pos + 8]
        out.append((kind, data[pos + 8: pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIG + b"".join(png_chunk(k, p) for k, p in chunks)


def ihdr(width: int, height: int, depth: int = 8, color: int = 2, interlace: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)


def png_header_only(width: int, height: int, depth: int = 8, color: int = 2,
                    idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` over a tiny (or given) IDAT."""
    body = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (PNG_SIG + png_chunk(b"IHDR", ihdr(width, height, depth, color))
            + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def png_lie(data: bytes, width: int, height: int) -> bytes:
    """The same pixel data under an IHDR that claims another size."""
    chunks = png_chunks(data)
    out = []
    for kind, payload in chunks:
        if kind == b"IHDR":
            payload = struct.pack(">II", width, height) + payload[8:]
        out.append((kind, payload))
    return png_from_chunks(out)


def png_random_idat(data: bytes, seed: int) -> bytes:
    out = []
    for kind, payload in png_chunks(data):
        if kind == b"IDAT":
            payload = rand_bytes(len(payload), seed)
        out.append((kind, payload))
    return png_from_chunks(out)


def png_bad_crc(data: bytes) -> bytes:
    pos = 8
    out = bytearray(data[:8])
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        chunk = bytearray(data[pos: pos + 12 + length])
        if chunk[4:8] == b"IDAT":
            chunk[-4:] = b"\xde\xad\xbe\xef"
        out += chunk
        pos += 12 + length
    return bytes(out)


def png_insert(data: bytes, kind: bytes, payload: bytes, before: bytes = b"IDAT") -> bytes:
    out: list[tuple[bytes, bytes]] = []
    done = False
    for k, p in png_chunks(data):
        if k == before and not done:
            out.append((kind, payload))
            done = True
        out.append((k, p))
    return png_from_chunks(out)


def png_without(data: bytes, kind: bytes) -> bytes:
    return png_from_chunks([(k, p) for k, p in png_chunks(data) if k != kind])


def png_huge_chunk_length(data: bytes) -> bytes:
    """A tEXt chunk that announces 0xFFFFFFF0 bytes after IHDR."""
    first = 8 + 12 + 13  # signature + IHDR chunk
    return data[:first] + struct.pack(">I", 0xFFFFFFF0) + b"tEXt" + b"a" * 64 + data[first:]


def png_1bit_bomb(width: int, height: int) -> bytes:
    """A *valid* 1-bit PNG of width x height: all-zero rows compress ~1000:1."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 256) for _ in range(height // 256)]
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    return (PNG_SIG + png_chunk(b"IHDR", ihdr(width, height, 1, 0))
            + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b""))


def ztxt_bomb(data: bytes, mib: int = 24) -> bytes:
    payload = b"Comment\x00\x00" + zlib.compress(b"a" * (mib << 20), 9)
    return png_insert(data, b"zTXt", payload)


# ------------------------------------------------------------------------------------ JPEG


def jpeg_segments_end(data: bytes) -> int:
    """Offset of the first byte after the SOS header (the start of the entropy-coded data)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("not at a marker")
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    raise ValueError("no SOS")


def jpeg_lie(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF dimensions (baseline or progressive) without touching the scan."""
    out = bytearray(data)
    pos = 2
    while pos + 9 <= len(out):
        marker = out[pos + 1]
        (length,) = struct.unpack(">H", out[pos + 2: pos + 4])
        if marker in (0xC0, 0xC1, 0xC2):
            out[pos + 5: pos + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        pos += 2 + length
    raise ValueError("no SOF")


def jpeg_random_scan(data: bytes, seed: int) -> bytes:
    """Valid tables and frame header, then entropy-coded data that is pure noise."""
    start = jpeg_segments_end(data)
    noise = bytes(b if b != 0xFF else 0xFE for b in rand_bytes(len(data) - start - 2, seed))
    return data[:start] + noise + b"\xff\xd9"


def jpeg_insert(data: bytes, marker: int, payload: bytes) -> bytes:
    """A segment right after SOI."""
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def jpeg_without(data: bytes, marker: int) -> bytes:
    out = bytearray(data[:2])
    pos = 2
    while pos + 4 <= len(data):
        m = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        if m == 0xDA:
            out += data[pos:]
            break
        if m != marker:
            out += data[pos: pos + 2 + length]
        pos += 2 + length
    return bytes(out)


def jpeg_sof_only(width: int, height: int) -> bytes:
    """SOI + a baseline SOF claiming width x height + EOI: a header and nothing else."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


# ------------------------------------------------------------------------------------ EXIF


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0,
             ifd_offset: int = 8) -> bytes:
    """A little-endian TIFF structure (EXIF payload) with one IFD of raw 4-byte values."""
    body = b"II*\x00" + struct.pack("<I", ifd_offset)
    body += b"\x00" * (ifd_offset - 8)
    body += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return body + struct.pack("<I", next_ifd)


def orientation_entry(value: int) -> tuple[int, int, int, bytes]:
    return (0x0112, 3, 1, struct.pack("<H", value & 0xFFFF))


def jpeg_with_exif(data: bytes, tiff: bytes) -> bytes:
    return jpeg_insert(data, 0xE1, b"Exif\x00\x00" + tiff)


# ------------------------------------------------------------------------------------- GIF


def gif_descriptor_offset(data: bytes) -> int:
    flags = data[10]
    pos = 13 + (3 * (2 ** ((flags & 7) + 1)) if flags & 0x80 else 0)
    while pos < len(data):
        if data[pos] == 0x2C:
            return pos
        if data[pos] == 0x21:  # extension: skip its sub-blocks
            pos += 2
            while data[pos] != 0:
                pos += data[pos] + 1
            pos += 1
            continue
        raise ValueError(f"unexpected GIF block {data[pos]:#x}")
    raise ValueError("no image descriptor")


def gif_lie(data: bytes, width: int, height: int, descriptor: bool = True) -> bytes:
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)
    if descriptor:
        d = gif_descriptor_offset(data)
        out[d + 5: d + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def gif_random_lzw(data: bytes, seed: int) -> bytes:
    d = gif_descriptor_offset(data)
    flags = data[d + 9]
    start = d + 10 + (3 * (2 ** ((flags & 7) + 1)) if flags & 0x80 else 0)
    noise = rand_bytes(255 * 40, seed)
    blocks = b"".join(bytes([255]) + noise[i: i + 255] for i in range(0, len(noise), 255))
    return data[: start + 1] + blocks + b"\x00\x3b"


def gif_header_only(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x2c" + struct.pack(
        "<HHHHB", 0, 0, width, height, 0) + b"\x08\x02\x4c\x01\x00\x3b"


# ------------------------------------------------------------------------------------ WebP


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos: pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4: pos + 8])
        out.append((kind, data[pos + 8: pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def webp_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"WEBP"
    for kind, payload in chunks:
        body += kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1
                                                                    else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_lie(data: bytes, width: int, height: int) -> bytes:
    out = []
    for kind, payload in webp_chunks(data):
        if kind == b"VP8 ":
            p = bytearray(payload)
            p[6:10] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
            payload = bytes(p)
        out.append((kind, payload))
    return webp_from_chunks(out)


def webp_random_vp8(data: bytes, seed: int) -> bytes:
    out = []
    for kind, payload in webp_chunks(data):
        if kind == b"VP8 ":
            payload = payload[:10] + rand_bytes(len(payload) - 10, seed)
        out.append((kind, payload))
    return webp_from_chunks(out)


def webp_canvas_bomb(data: bytes, width: int, height: int) -> bytes:
    """An extended (VP8X) file whose canvas claims width x height over a small frame."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(
        3, "little")
    return webp_from_chunks([(b"VP8X", vp8x), *webp_chunks(data)])


# ------------------------------------------------------------------------------ TIFF / BMP


def tiff_header_only(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, 1, struct.pack("<H", 8)),
        (259, 3, 1, struct.pack("<H", 1)),
        (262, 3, 1, struct.pack("<H", 1)),
        (273, 4, 1, struct.pack("<I", 8)),
        (278, 4, 1, struct.pack("<I", height)),
        (279, 4, 1, struct.pack("<I", 64)),
    ]
    return tiff_ifd(entries, ifd_offset=8 + 64)


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\x00" * 16


# -------------------------------------------------------------------------------- polyglots


def zip_bytes(name: str = "readme.txt", text: bytes = b"hello from inside a zip\n") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, text)
    return buf.getvalue()


def pdf_with(payload: bytes) -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /XObject /Subtype /Image /Length "
            + str(len(payload)).encode() + b" >>\nstream\n" + payload
            + b"\nendstream\nendobj\n%%EOF\n")


# ----------------------------------------------------------------------------------- videos

_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
             "-map_metadata", "-1", "-threads", "1"]


def _ffmpeg(args: list[str], out: Path) -> bytes:
    from processors.media.ffmpeg import ffmpeg_binary

    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args, *_BITEXACT,
           str(out)]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    return out.read_bytes()


@cache
def videos() -> dict[str, bytes]:
    """Small valid clips (1 s, 160x120) in the containers the suite cuts up."""
    src = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:duration=1",
           "-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "5", "-pix_fmt", "yuv420p"]
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="hostile-media-") as tmp:
        d = Path(tmp)
        out["mp4"] = _ffmpeg([*src, *x264, "-c:a", "aac", "-shortest"], d / "a.mp4")
        out["mp4_faststart"] = _ffmpeg([*src, *x264, "-c:a", "aac", "-shortest",
                                        "-movflags", "+faststart"], d / "b.mp4")
        out["avi"] = _ffmpeg([*src, "-c:v", "mjpeg", "-q:v", "5", "-c:a", "pcm_s16le",
                              "-shortest"], d / "c.avi")
        out["ts"] = _ffmpeg([*src, *x264, "-c:a", "aac", "-shortest", "-f", "mpegts"],
                            d / "d.ts")
        out["mkv"] = _ffmpeg([*src, "-c:v", "mjpeg", "-c:a", "pcm_s16le", "-shortest"],
                             d / "e.mkv")
        out["audio_only"] = _ffmpeg(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"],
                                    d / "f.mp4")
        out["zero_frames"] = _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120",
                                      "-frames:v", "0", *x264], d / "g.mp4")
    return out


def mp4_moov_size_lie(data: bytes) -> bytes:
    """The moov box announces 0xFFFFFFF0 bytes."""
    pos = data.find(b"moov")
    if pos < 4:
        return data
    return data[: pos - 4] + struct.pack(">I", 0xFFFFFFF0) + data[pos:]
