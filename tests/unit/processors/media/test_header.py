"""processors.media.header: the fast header reader must give Pillow's answer or None.

Every case compares :func:`imaging._probe_fast` (bytes and path sources) with
:func:`imaging._probe_with_pillow` on real files: the samples, the shared reference vectors,
files Pillow writes in many variants, hand-edited structures, truncations and mutations.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from processors.media import header, imaging
from processors.registry import ProcessorError
from tests.conftest import ROOT

VECTORS = ROOT.parent / "shared" / "reference" / "vectors"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".mpo", ".bmp", ".tif", ".tiff"}
MAGICS = (b"\xff\xd8\xff", header.PNG_SIGNATURE, b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def encode(img: Image.Image, fmt: str, **opts: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def picture(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, (200, 120, 40))
    draw = ImageDraw.Draw(img)
    draw.rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(10, 90, 250))
    draw.line((0, 0, *size), fill=(255, 255, 255), width=3)
    return img.convert(mode)


def exif_bytes(orientation: int | None = None, **tags: int) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x010F] = "Camera maker"
    for tag, value in tags.items():
        exif[int(tag[1:])] = value
    return exif.tobytes()


def tiff(endian: str, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A hand-made TIFF (EXIF) block: ``entries`` are (tag, type, count, 4-byte value)."""
    mark = b"II*\x00" if endian == "<" else b"MM\x00*"
    out = mark + struct.pack(endian + "L", 8) + struct.pack(endian + "H", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack(endian + "HHL", tag, typ, count) + value
    return out + b"\x00\x00\x00\x00"


def jpeg_with_app1(payload: bytes, base: bytes | None = None) -> bytes:
    """Insert an APP1 segment right after SOI."""
    data = base if base is not None else encode(picture(), "JPEG")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def png_chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + cid + data + struct.pack(">L", zlib.crc32(cid + data))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">L", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return header.PNG_SIGNATURE + b"".join(png_chunk(c, d) for c, d in chunks)


def png_move_exif_after_idat(data: bytes) -> bytes:
    chunks = png_chunks(data)
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] != b"eXIf"]
    return png_build(rest[:-1] + exif + rest[-1:])


def png_insert(data: bytes, cid: bytes, body: bytes) -> bytes:
    """A chunk right after IHDR."""
    chunks = png_chunks(data)
    return png_build([chunks[0], (cid, body), *chunks[1:]])


def webp_set_flags(data: bytes, clear: int) -> bytes:
    assert data[12:16] == b"VP8X"
    return data[:20] + bytes([data[20] & ~clear]) + data[21:]


def generated() -> Iterator[tuple[str, bytes]]:
    """(name, file bytes) for the Pillow-written variants."""
    img = picture()
    big = picture((640, 480))
    yield "jpeg-baseline", encode(big, "JPEG", quality=85)
    yield "jpeg-progressive", encode(big, "JPEG", progressive=True)
    yield "jpeg-optimized", encode(img, "JPEG", optimize=True)
    yield "jpeg-grey", encode(picture(mode="L"), "JPEG")
    yield "jpeg-cmyk", encode(picture(mode="CMYK"), "JPEG")
    yield "jpeg-444", encode(img, "JPEG", subsampling=0)
    yield "jpeg-dpi", encode(img, "JPEG", dpi=(300, 300))
    yield "jpeg-comment", encode(img, "JPEG", comment=b"hello")
    yield "jpeg-icc", encode(img, "JPEG", icc_profile=b"\x00" * 300)
    yield "jpeg-icc-large", encode(img, "JPEG", icc_profile=bytes(range(256)) * 400)
    yield "jpeg-restart", encode(img, "JPEG", restart_marker_blocks=1)
    for orientation in range(0, 10):
        yield f"jpeg-exif-{orientation}", encode(img, "JPEG", exif=exif_bytes(orientation))
    yield (
        "jpeg-exif-dpi",
        encode(
            img,
            "JPEG",
            exif=exif_bytes(6, t282=72, t283=72, t296=2),  # type: ignore[arg-type]
        ),
    )
    yield "jpeg-exif-no-orientation", encode(img, "JPEG", exif=exif_bytes())
    yield "jpeg-exif-big", encode(img, "JPEG", exif=exif_bytes(8) + b"\x00" * 60000)
    yield "jpeg-exif-progressive", encode(big, "JPEG", exif=exif_bytes(5), progressive=True)
    # Hand-made EXIF blocks: both byte orders, LONG, odd types and counts, bad offsets.
    short6_le = struct.pack("<HH", 6, 0)
    short6_be = struct.pack(">HH", 6, 0)
    for name, block in {
        "le": tiff("<", [(0x0112, 3, 1, short6_le)]),
        "be": tiff(">", [(0x0112, 3, 1, short6_be)]),
        "long": tiff("<", [(0x0112, 4, 1, struct.pack("<L", 7))]),
        "ascii": tiff("<", [(0x0112, 2, 2, b"6\x00\x00\x00")]),
        "count0": tiff("<", [(0x0112, 3, 0, short6_le)]),
        "count2": tiff("<", [(0x0112, 3, 2, short6_le)]),
        "dup": tiff("<", [(0x0112, 3, 1, short6_le), (0x0112, 3, 1, struct.pack("<HH", 3, 0))]),
        "badtype": tiff("<", [(0x0112, 99, 1, short6_le)]),
        "xres-short": tiff("<", [(0x0112, 3, 1, short6_le), (0x011A, 3, 1, short6_le)]),
        "xres-empty": tiff("<", [(0x011A, 7, 0, b"\x00" * 4), (0x0128, 3, 1, short6_le)]),
        "unit-count0": tiff("<", [(0x0128, 3, 0, short6_le), (0x011A, 5, 1, b"\x08\x00\x00\x00")]),
        "offset-out": tiff("<", [(0x0112, 3, 1, short6_le), (0x010F, 2, 50, b"\xff\x00\x00\x00")]),
        "cut": tiff("<", [(0x0112, 3, 1, short6_le)])[:-6],
        "bad-head": b"XX*\x00" + tiff("<", [(0x0112, 3, 1, short6_le)])[4:],
        "bigtiff": b"II+\x00" + tiff("<", [(0x0112, 3, 1, short6_le)])[4:],
        "empty": b"",
        "ifd-out": b"II*\x00\xff\x00\x00\x00",
    }.items():
        yield f"jpeg-exif-hand-{name}", jpeg_with_app1(b"Exif\x00\x00" + block)
        yield f"png-exif-hand-{name}", png_insert(encode(img, "PNG"), b"eXIf", block)
    two = b"Exif\x00\x00" + tiff("<", [(0x0112, 3, 1, short6_le)])
    yield "jpeg-two-exif", jpeg_with_app1(two, jpeg_with_app1(two))
    yield "jpeg-double-prefix", jpeg_with_app1(b"Exif\x00\x00" + two)
    yield "jpeg-xmp", jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00<x tiff:Orientation='6'/>")
    yield (
        "jpeg-photoshop",
        _with_segment(0xED, b"Photoshop 3.0\x008BIM\x03\xed\x00\x00" + b"\x00" * 20),
    )
    yield "jpeg-photoshop-cut", _with_segment(0xED, b"Photoshop 3.0\x008BIM\x03\xed")
    yield "jpeg-adobe-short", _with_segment(0xEE, b"Adobe")
    yield "jpeg-jfif-short", _with_segment(0xE0, b"JFIF\x00")
    yield "jpeg-icc-short", _with_segment(0xE2, b"ICC_PROFILE\x00")
    yield "jpeg-mpf-junk", _with_segment(0xE2, b"MPF\x00garbage")
    yield "jpeg-fill", _insert_after_soi(b"\xff\xff\xff")
    yield "jpeg-junk", _insert_after_soi(b"\x00\x00")
    yield "jpeg-dnl", _insert_after_soi(b"\xff\xdc\x00\x04\x00\x10")
    yield "jpeg-jpg0", _insert_after_soi(b"\xff\xf0\x00\x04\x00\x10")
    yield "jpeg-rst", _insert_after_soi(b"\xff\xd0")
    yield "jpeg-tem", _insert_after_soi(b"\xff\x01")
    yield "jpeg-soi-again", _insert_after_soi(b"\xff\xd8")
    mpo = io.BytesIO()
    img.save(mpo, "MPO", save_all=True, append_images=[picture((32, 32))], exif=exif_bytes(6))
    yield "mpo", mpo.getvalue()

    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        yield f"png-{mode}", encode(picture(mode=mode), "PNG")
    yield "png-transparent-p", encode(picture(mode="P"), "PNG", transparency=3)
    yield "png-transparent-rgb", encode(img, "PNG", transparency=(200, 120, 40))
    yield "png-dpi", encode(img, "PNG", dpi=(96, 96))
    yield "png-icc", encode(img, "PNG", icc_profile=b"\x01" * 500)
    yield "png-optimized", encode(img, "PNG", optimize=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "hello")
    info.add_text("Comment", "long " * 500, zip=True)
    info.add_itxt("Description", "ünïcödé", lang="fr", tkey="x")
    info.add_itxt("XML:com.adobe.xmp", "<x/>" * 100, zip=True)
    yield "png-text", encode(img, "PNG", pnginfo=info)
    exif_key = PngImagePlugin.PngInfo()
    exif_key.add_text("exif", "not exif")
    yield "png-text-exif-key", encode(img, "PNG", pnginfo=exif_key)
    for orientation in (1, 3, 6, 8):
        with_exif = encode(img, "PNG", exif=exif_bytes(orientation))
        yield f"png-exif-{orientation}", with_exif
        yield f"png-exif-after-idat-{orientation}", png_move_exif_after_idat(with_exif)
    plain = encode(img, "PNG")
    yield "png-bad-crc", plain[:29] + bytes([plain[29] ^ 1]) + plain[30:]
    yield "png-unknown-chunk", png_insert(plain, b"vpAg", b"\x00" * 9)
    yield "png-short-gama", png_insert(plain, b"gAMA", b"\x00")
    yield "png-short-phys", png_insert(plain, b"pHYs", b"\x00" * 5)
    yield "png-bad-ztxt", png_insert(plain, b"zTXt", b"k\x00\x00not zlib")
    yield "png-ztxt-method", png_insert(plain, b"zTXt", b"k\x00\x01")
    yield "png-iccp-method", png_insert(plain, b"iCCP", b"name\x00\x01")
    yield (
        "png-iccp-bomb",
        png_insert(plain, b"iCCP", b"name\x00\x00" + zlib.compress(b"\0" * (3 << 20))),
    )
    yield "png-iccp-not-zlib", png_insert(plain, b"iCCP", b"name\x00\x00garbage")
    yield (
        "png-itxt-bomb",
        png_insert(plain, b"iTXt", b"k\x00\x01\x00\x00\x00" + zlib.compress(b"a" * (2 << 20))),
    )
    yield "png-bad-cid", png_insert(plain, b"a-b!", b"")
    yield "png-iend-first", png_build([png_chunks(plain)[0], (b"IEND", b"")])
    yield "png-two-ihdr", png_insert(plain, b"IHDR", png_chunks(plain)[0][1])
    apng = io.BytesIO()
    img.save(apng, "PNG", save_all=True, append_images=[picture(mode="RGB").rotate(90)])
    yield "apng", apng.getvalue()

    yield "gif", encode(img, "GIF")
    yield "gif-transparent", encode(picture(mode="P"), "GIF", transparency=0)
    yield "gif-comment", encode(img, "GIF", comment=b"a comment")
    frames = [picture().rotate(a) for a in (0, 90, 180)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], loop=0, duration=50)
    yield "gif-animated", anim.getvalue()
    gif = encode(img, "GIF")
    yield "gif-small-screen", gif[:6] + struct.pack("<HH", 10, 10) + gif[10:]
    yield "gif-zero-screen", gif[:6] + struct.pack("<HH", 0, 0) + gif[10:]
    yield "gif-junk", gif[: 13 + 768] + b"\x00" + gif[13 + 768 :]
    yield "gif87a", b"GIF87a" + gif[6:]

    yield "webp-lossy", encode(big, "WEBP", quality=80)
    yield "webp-lossless", encode(img, "WEBP", lossless=True)
    yield "webp-alpha", encode(picture(mode="RGBA"), "WEBP")
    yield "webp-alpha-lossless", encode(picture(mode="RGBA"), "WEBP", lossless=True)
    yield "webp-icc", encode(img, "WEBP", icc_profile=b"\x02" * 99)
    for orientation in (1, 6, 8):
        with_exif = encode(img, "WEBP", exif=exif_bytes(orientation))
        yield f"webp-exif-{orientation}", with_exif
        yield f"webp-exif-unflagged-{orientation}", webp_set_flags(with_exif, 0x08)
    yield "webp-exif-lossless", encode(img, "WEBP", exif=exif_bytes(5), lossless=True)
    yield "webp-xmp", encode(img, "WEBP", xmp=b"<x/>")
    anim = io.BytesIO()
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:])
    yield "webp-animated", anim.getvalue()
    lossy = encode(img, "WEBP")
    yield "webp-trailing", lossy + b"\x00\x00"
    yield "webp-riff-short", lossy[:4] + struct.pack("<L", len(lossy) - 10) + lossy[8:]

    yield "bmp", encode(img, "BMP")
    yield "tiff", encode(img, "TIFF")
    yield "empty", b""
    rng = random.Random(1)
    yield "garbage", bytes(rng.randrange(256) for _ in range(2000))
    for magic in MAGICS:
        yield f"garbage-{magic!r}", magic + bytes(rng.randrange(256) for _ in range(500))


def _insert_after_soi(blob: bytes) -> bytes:
    data = encode(picture(), "JPEG")
    return data[:2] + blob + data[2:]


def _with_segment(marker: int, payload: bytes) -> bytes:
    return _insert_after_soi(bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload)


def files_on_disk() -> Iterator[Path]:
    for root in (ROOT / "samples", VECTORS):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            with path.open("rb") as fh:
                start = fh.read(8)
            if path.suffix.lower() in IMAGE_EXTENSIONS or start.startswith(MAGICS):
                yield path


def pillow(src: imaging.Source) -> dict[str, int | str] | None:
    """The reference answer, None when Pillow refuses the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return imaging._probe_with_pillow(src)
        except ProcessorError:
            return None


def assert_agrees(data: bytes, tmp_path: Path, name: str = "img") -> dict[str, int | str] | None:
    """The fast reader, from bytes and from a path, is None or equal to Pillow's answer."""
    expected = pillow(data)
    path = tmp_path / name
    path.write_bytes(data)
    for src in (data, bytearray(data), memoryview(data), path, str(path)):
        fast = imaging._probe_fast(src)
        assert fast is None or fast == expected, (name, type(src), fast, expected)
    fast = imaging._probe_fast(data)
    if fast is not None:
        assert imaging.probe_header(data) == expected
        assert imaging.probe_header(path) == expected
    return fast


GENERATED = dict(generated())
COMMON = [
    "jpeg-baseline",
    "jpeg-progressive",
    "jpeg-grey",
    "jpeg-cmyk",
    "jpeg-exif-6",
    "jpeg-exif-8",
    "jpeg-exif-3",
    "jpeg-exif-dpi",
    "jpeg-exif-big",
    "jpeg-icc",
    "jpeg-icc-large",
    "jpeg-exif-hand-be",
    "jpeg-exif-hand-long",
    "mpo",
    "png-RGB",
    "png-RGBA",
    "png-P",
    "png-text",
    "png-icc",
    "png-exif-6",
    "png-exif-after-idat-6",
    "gif",
    "gif-animated",
    "gif-small-screen",
    "webp-lossy",
    "webp-lossless",
    "webp-alpha",
    "webp-exif-6",
    "webp-exif-unflagged-6",
]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_files_agree_with_pillow(name: str, tmp_path: Path) -> None:
    assert_agrees(GENERATED[name], tmp_path, name)


@pytest.mark.parametrize("name", COMMON)
def test_common_files_take_the_fast_path(name: str, tmp_path: Path) -> None:
    fast = assert_agrees(GENERATED[name], tmp_path, name)
    assert fast is not None
    assert fast == pillow(GENERATED[name])


def test_orientation_is_applied() -> None:
    assert imaging._probe_fast(GENERATED["jpeg-exif-6"]) == {
        "width": 48,
        "height": 64,
        "format": "JPEG",
    }
    assert imaging._probe_fast(GENERATED["png-exif-after-idat-6"]) == {
        "width": 64,
        "height": 48,
        "format": "PNG",
    }
    assert imaging._probe_fast(GENERATED["mpo"]) == {"width": 48, "height": 64, "format": "JPEG"}


@pytest.mark.parametrize("path", list(files_on_disk()), ids=lambda p: p.name)
def test_files_on_disk_agree_with_pillow(path: Path, tmp_path: Path) -> None:
    data = path.read_bytes()
    assert_agrees(data, tmp_path, path.name)
    if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".webp"):
        assert imaging._probe_fast(path) is not None


TRUNCATED = ["jpeg-baseline", "jpeg-exif-6", "png-exif-6", "png-text", "gif-animated"]
TRUNCATED += ["webp-lossy", "webp-exif-6", "webp-lossless", "mpo"]


@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_files_agree_with_pillow(name: str, tmp_path: Path) -> None:
    data = GENERATED[name]
    cuts = set(range(0, min(len(data), 400), 7)) | {len(data) // k for k in (2, 3, 4, 8)}
    cuts |= {len(data) - 1, len(data) - 2}
    for cut in sorted(cuts):
        assert_agrees(data[:cut], tmp_path, f"{name}-{cut}")


@pytest.mark.parametrize("name", ["jpeg-exif-6", "png-text", "gif-animated", "webp-exif-6"])
def test_mutated_files_agree_with_pillow(name: str, tmp_path: Path) -> None:
    """Random byte changes in the header area: wherever Pillow's answer changes (or it starts
    refusing the file), the fast reader must follow or step aside."""
    data = GENERATED[name]
    rng = random.Random(name)
    for i in range(150):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(min(len(data), 600))] = rng.randrange(256)
        fast = imaging._probe_fast(bytes(mutated))
        assert fast is None or fast == pillow(bytes(mutated)), (name, i)
    assert_agrees(data, tmp_path, name)


def test_bomb_sized_headers_go_to_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(picture((200, 100)), "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)
    assert header.read_bytes(data) is not None  # the reader itself still answers
    assert imaging._probe_fast(data) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(Image.DecompressionBombWarning):
            imaging.probe_header(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(ProcessorError, match="decompression bomb"):
        imaging.probe_header(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert imaging._probe_fast(data) == {"width": 200, "height": 100, "format": "JPEG"}


def test_missing_path_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(ProcessorError) as info:
        imaging.probe_header(tmp_path / "nope.jpg")
    assert info.value.permanent is False


def test_file_objects_use_pillow_and_keep_working() -> None:
    data = GENERATED["jpeg-exif-6"]
    fh = io.BytesIO(data)
    assert imaging._probe_fast(fh) is None
    assert imaging.probe_header(fh) == {"width": 48, "height": 64, "format": "JPEG"}


def test_bad_input_never_raises() -> None:
    for data in (
        b"",
        b"\xff",
        b"\xff\xd8\xff",
        header.PNG_SIGNATURE,
        b"GIF89a",
        b"RIFF\0\0\0\0WEBP",
    ):
        assert header.read_bytes(data) is None


def test_inflate_limit_stays_under_pillows() -> None:
    assert header.INFLATE_LIMIT <= PngImagePlugin.MAX_TEXT_CHUNK


def test_jpeg_headers_past_the_first_read(tmp_path: Path) -> None:
    """A JPEG whose SOF lies beyond HEAD_BYTES is still read (a few extra reads)."""
    data = _with_segment(0xE3, b"\x00" * 65000)
    data = data[:2] + data[2 : 2 + 65004] * 2 + data[2:]
    assert len(data) > header.HEAD_BYTES + 60000
    fast = assert_agrees(data, tmp_path, "far-sof.jpg")
    assert fast == {"width": 64, "height": 48, "format": "JPEG"}
