"""A pure-Python reader of image headers, for :func:`processors.media.imaging.probe_header`.

Why: ``PIL.Image.open`` parses every JPEG marker (quantisation and Huffman tables included) and
every PNG chunk handler in Python, ~25 us per small JPEG, and the router agent probes every
upload. Width, height and EXIF orientation sit in a few bytes near the start of the file, so this
module reads the first :data:`HEAD_BYTES` once and walks the structure with ``struct``.

The contract is **"Pillow's answer or None"**: for JPEG, PNG, GIF and WebP it returns exactly what
the Pillow path would report, and for anything it is not sure about (a structure Pillow would
refuse, a quirk where Pillow's parser would read the file differently, EXIF it cannot parse
cleanly, a header beyond what it is willing to read) it returns None and the caller asks Pillow.
It therefore mirrors the conditions under which Pillow's plugins *fail* while opening (a short
DQT table, a bad PNG CRC, a GIF extension Pillow would misread) rather than only the happy path.
It never raises for bad input.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

#: Bytes read up front: enough for the headers of nearly every JPEG (EXIF with its thumbnail is
#: at most 64 kB), PNG and GIF. Anything beyond is fetched on demand, within :data:`_EXTRA_READS`.
HEAD_BYTES: Final = 65536

#: Further reads (``pread`` of a few bytes or one segment) allowed per file before giving up:
#: a JPEG whose markers lie past :data:`HEAD_BYTES` costs one small read per marker.
_EXTRA_READS: Final = 32
#: Total bytes those further reads may fetch.
_EXTRA_BYTES: Final = 1 << 20

#: Inflated-size cap for compressed PNG text / ICC chunks. Pillow refuses (raises) above its
#: ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB by default); staying well under it means "fits here"
#: implies "Pillow accepts it", and anything larger is left to Pillow to judge.
INFLATE_LIMIT: Final = 1 << 18
#: Total PNG text accepted before leaving the file to Pillow (its text-memory guard is 64 MiB).
_TEXT_LIMIT: Final = 1 << 20

_ORIENTATION_TAG: Final = 0x0112
_XRESOLUTION_TAG: Final = 0x011A
_RESOLUTION_UNIT_TAG: Final = 0x0128
_SHORT: Final = 3
_LONG: Final = 4
_RATIONAL: Final = 5
#: The tags Pillow decodes while opening (orientation for us; the resolution pair for JPEG's DPI
#: fallback, which fails the open on some odd types), with the (type, count) we accept for them.
_CHECKED_TAGS: Final[dict[int, tuple[int, int]]] = {
    _ORIENTATION_TAG: (_SHORT, 1),
    _XRESOLUTION_TAG: (_RATIONAL, 1),
    _RESOLUTION_UNIT_TAG: (_SHORT, 1),
}
_LONG_ORIENTATION: Final = (_ORIENTATION_TAG, _LONG, 1)
#: (u16, u32, IFD entry as tag, type, count, value-or-offset) for each byte order.
_TIFF_LE: Final = (struct.Struct("<H"), struct.Struct("<L"), struct.Struct("<HHLL"))
_TIFF_BE: Final = (struct.Struct(">H"), struct.Struct(">L"), struct.Struct(">HHLL"))
#: TIFF field type -> bytes per value, for the types Pillow's IFD reader knows (BigTIFF's 16-18
#: are refused: Pillow only reads them from BigTIFF headers, which we also refuse).
_TIFF_TYPE_SIZE: Final[dict[int, int]] = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
}  # fmt: skip

_JPEG_SOF: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
#: Markers whose segment Pillow skips by its length without looking inside: DHT, DAC, DRI.
_JPEG_SKIPPED: Final = frozenset({0xC4, 0xCC, 0xDD, 0xFE})  # and COM, whose text is kept
#: APPn whose content Pillow interprets (and can fail on): JFIF, Exif/XMP, ICC/MPF, Photoshop,
#: Adobe. The other APPn are stored and skipped.
_JPEG_APP_READ: Final = frozenset({0xE0, 0xE1, 0xE2, 0xED, 0xEE})
_JPEG_SEGMENT: Final = struct.Struct(">BBH")

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: (bit depth, colour type) pairs Pillow can open, and the mode it gives them (for tRNS).
_PNG_MODES: Final[dict[tuple[int, int], str]] = {
    (1, 0): "1", (2, 0): "L", (4, 0): "L", (8, 0): "L", (16, 0): "I;16",
    (8, 2): "RGB", (16, 2): "RGB",
    (1, 3): "P", (2, 3): "P", (4, 3): "P", (8, 3): "P",
    (8, 4): "LA", (16, 4): "RGBA",
    (8, 6): "RGBA", (16, 6): "RGBA",
}  # fmt: skip
#: Minimum lengths below which Pillow's chunk handler raises ("Truncated gAMA chunk", ...).
_PNG_MIN_LENGTH: Final[dict[bytes, int]] = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9}
#: Chunks with a Pillow handler we do not mirror (APNG: Pillow seeks to frame 0 while opening).
_PNG_REFUSED: Final = frozenset({b"IHDR", b"IEND", b"acTL", b"fcTL", b"fdAT"})
_PNG_CID: Final = re.compile(rb"\w\w\w\w")

_WEBP_VALID_FLAGS: Final = 0x3E  # ALPHA | ANIMATION | ICCP | EXIF | XMP, as libwebp's demux
_WEBP_ANIMATION: Final = 0x02
_WEBP_EXIF: Final = 0x08


@dataclass(frozen=True, slots=True)
class Header:
    """What the header says: the *stored* size (before EXIF orientation), Pillow's format name
    and the EXIF orientation Pillow's path would find (1 when there is none)."""

    width: int
    height: int
    format: str
    orientation: int = 1


class _Blob:
    """The first bytes of the file plus bounded random access to the rest.

    ``head`` is what one read returned (the whole data for an in-memory source); ``at`` serves
    from it and falls back to ``os.pread`` on ``fd`` within the extra-read budget.
    """

    __slots__ = ("_bytes_left", "_data", "_fd", "_reads_left", "head", "size")

    def __init__(self, head: bytes, size: int, fd: int | None, data: memoryview | None) -> None:
        self.head = head
        self.size = size
        self._fd = fd
        self._data = data
        self._reads_left = _EXTRA_READS
        self._bytes_left = _EXTRA_BYTES

    def at(self, offset: int, n: int) -> bytes | None:
        """``n`` bytes at ``offset``, or None when the file has fewer or the budget is spent."""
        end = offset + n
        if offset < 0 or n < 0 or end > self.size:
            return None
        if end <= len(self.head):
            return self.head[offset:end]
        if self._data is not None:
            return bytes(self._data[offset:end])
        if self._fd is None or self._reads_left <= 0 or self._bytes_left < n:
            return None
        self._reads_left -= 1
        self._bytes_left -= n
        try:
            chunk = os.pread(self._fd, n, offset)
        except OSError:
            return None
        return chunk if len(chunk) == n else None


# ------------------------------------------------------------------------------------- EXIF
def exif_orientation(raw: bytes) -> int | None:
    """The orientation Pillow's ``Image.Exif().load(raw).get(0x0112, 1)`` gives, mapped to 1..8
    as ``imaging._orientation`` does, or None unless the TIFF structure is entirely clean.

    Clean means: a standard TIFF header, IFD0 and its out-of-line values inside the data, known
    field types, and standard types for the tags Pillow decodes while opening (orientation, and
    the resolution tags JPEG's DPI fallback reads), so Pillow neither warns nor fails on them.
    """
    data = raw
    base = 0
    for _ in range(2):  # Pillow strips one or two "Exif\0\0" prefixes
        if data.startswith(b"Exif\x00\x00", base):
            base += 6
    n = len(data)
    if base == n:
        return 1
    mark = data[base : base + 4]
    if mark == b"II\x2a\x00":
        structs = _TIFF_LE
    elif mark == b"MM\x00\x2a":
        structs = _TIFF_BE
    else:
        return None
    u16, u32, entry = structs
    if base + 8 > n:
        return None
    ifd = u32.unpack_from(data, base + 4)[0]
    if ifd < 8 or base + ifd + 2 > n:
        return None
    count = u16.unpack_from(data, base + ifd)[0]
    start = base + ifd + 2
    end = start + 12 * count
    if end + 4 > n:  # the entries and the next-IFD pointer
        return None
    size_limit = n - base  # offsets are relative to the TIFF header
    seen: set[int] = set()
    orientation = 1
    total = 0
    sizes = _TIFF_TYPE_SIZE
    for pos in range(start, end, 12):
        tag, typ, values, inline = entry.unpack_from(data, pos)
        unit = sizes.get(typ)
        if unit is None:
            return None
        size = unit * values
        if size > 4:
            total += size
            if inline + size > size_limit or total > size_limit:
                return None
        if tag in _CHECKED_TAGS:
            if tag in seen:
                return None
            seen.add(tag)
            if (typ, values) != _CHECKED_TAGS[tag] and (tag, typ, values) != _LONG_ORIENTATION:
                return None
            if tag == _ORIENTATION_TAG:
                (found,) = (u16 if typ == _SHORT else u32).unpack_from(data, pos + 8)
                orientation = found if 2 <= found <= 8 else 1
    return orientation


# ------------------------------------------------------------------------------------- JPEG
def _photoshop_ok(s: bytes) -> bool:
    """Whether Pillow's APP13 "Photoshop 3.0" walk gets through ``s`` (it catches struct.error
    only: a resource name cut short raises IndexError and fails the whole open)."""
    offset = 14
    try:
        while s[offset : offset + 4] == b"8BIM":
            offset += 6
            name_len = s[offset]
            offset += 1 + name_len
            offset += offset & 1
            (size,) = struct.unpack_from(">L", s, offset)
            offset += 4 + size
            offset += offset & 1
    except struct.error:
        return True
    except IndexError:
        return False
    return True


def _dqt_ok(s: bytes) -> bool:
    """Pillow raises "bad quantization table marker" when a table is cut short."""
    pos, n = 0, len(s)
    while pos < n:
        pos += 1 + (64 if s[pos] < 16 else 128)
        if pos > n:
            return False
    return True


def _jpeg(blob: _Blob) -> Header | None:
    """Walk the markers as Pillow's ``JpegImageFile._open`` does, from SOI to the first SOS.

    Pillow reads every segment up to the scan (the last SOF wins, later Exif segments are
    appended), so stopping at the first SOF could disagree with it; walking on to SOS costs only
    a length read per segment. Junk between markers, DNL/DHP/EXP, JPGn and repeated SOF or Exif
    segments are left to Pillow.
    """
    pos = 2
    size: tuple[int, int] | None = None
    exif: bytes | None = None
    head = blob.head
    in_head = len(head) - 4
    while True:
        if pos <= in_head:  # the common case, without a call or a copy
            ff, marker, length = _JPEG_SEGMENT.unpack_from(head, pos)
        else:
            seg = blob.at(pos, 4)  # no length follows a standalone marker, but SOS comes later
            if seg is None:
                return None
            ff, marker, length = _JPEG_SEGMENT.unpack(seg)
        if ff != 0xFF:
            return None
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7:  # RSTn: standalone
            pos += 2
            continue
        body = pos + 4
        n = length - 2
        if n < 0 or body + n > blob.size:
            return None
        if marker == 0xDA:  # SOS: Pillow skips its header, then stops
            break
        if marker in _JPEG_SOF:
            s = blob.at(body, n)
            if s is None or size is not None or n < 6 or s[0] != 8 or s[5] not in (1, 3, 4):
                return None
            height, width = struct.unpack_from(">HH", s, 1)
            size = (width, height)
        elif marker == 0xDB:
            s = blob.at(body, n)
            if s is None or not _dqt_ok(s):
                return None
        elif marker in _JPEG_APP_READ:
            prefix = blob.at(body, min(n, 14))
            if prefix is None:
                return None
            if marker == 0xE1:
                if prefix.startswith(b"Exif\x00\x00"):
                    if exif is not None:
                        return None
                    exif = blob.at(body, n)
                    if exif is None:
                        return None
            elif (marker == 0xE0 and prefix.startswith(b"JFIF")) or (
                marker == 0xEE and prefix.startswith(b"Adobe")
            ):
                if n < 7:  # Pillow's i16(s, 5) fails
                    return None
            elif marker == 0xE2:
                if prefix.startswith(b"ICC_PROFILE\x00") and n < 14:
                    return None  # Pillow's icclist[0][13] fails at the SOF
            elif marker == 0xED and prefix.startswith(b"Photoshop 3.0\x00"):
                s = blob.at(body, n)
                if s is None or not _photoshop_ok(s):
                    return None
        elif not (0xE0 <= marker <= 0xEF or marker in _JPEG_SKIPPED):
            return None
        pos = body + n
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    orientation = 1 if exif is None else exif_orientation(exif)
    if orientation is None:
        return None
    return Header(size[0], size[1], "JPEG", orientation)


# -------------------------------------------------------------------------------------- PNG
def _inflates(data: bytes) -> bool:
    """Whether ``data`` inflates to at most :data:`INFLATE_LIMIT` bytes (or is not zlib at all:
    Pillow ignores a zlib error in these chunks but raises when the output is too large)."""
    try:
        d = zlib.decompressobj()
        d.decompress(data, INFLATE_LIMIT)
    except zlib.error:
        return True
    return not d.unconsumed_tail


def _png_text_ok(cid: bytes, s: bytes) -> tuple[bool, int]:
    """Mirror Pillow's tEXt/zTXt/iTXt/iCCP handlers: (Pillow accepts it, text bytes kept).

    A text chunk keyed "exif" would put its value into ``info["exif"]``: left to Pillow.
    """
    key, sep, rest = s.partition(b"\x00")
    if cid == b"iCCP":
        if len(rest) < 1 or rest[0] != 0:  # Pillow reads the method byte after the name
            return False, 0
        return _inflates(rest[1:]), 0
    if key == b"exif":
        return False, 0
    if cid == b"tEXt":
        return True, len(rest)
    if cid == b"zTXt":
        if rest and rest[0] != 0:
            return False, 0
        return _inflates(rest[1:]), INFLATE_LIMIT
    # iTXt: compression flag, method, language\0, translated keyword\0, text. Pillow returns
    # early (keeping nothing) when a separator is missing, and inflates only after both.
    parts = rest[2:].split(b"\x00", 2)
    if not sep or len(rest) < 2 or len(parts) < 3:
        return True, 0
    if rest[0] != 0 and rest[1] == 0:
        return _inflates(parts[2]), INFLATE_LIMIT
    return True, len(rest)


def _png(blob: _Blob) -> Header | None:
    """Walk the chunks before the first IDAT as ``PngImageFile._open`` does, CRCs included
    (Pillow checks them and refuses a mismatch), and take the orientation from an ``eXIf``
    chunk only when it comes before IDAT: Pillow puts only those into ``info["exif"]``."""
    head = blob.at(8, 25)
    if head is None or head[:8] != b"\x00\x00\x00\x0dIHDR":
        return None
    width, height, depth, ctype, _, filt, _ = struct.unpack_from(">LLBBBBB", head, 8)
    mode = _PNG_MODES.get((depth, ctype))
    if mode is None or filt != 0 or width <= 0 or height <= 0:
        return None
    if zlib.crc32(head[4:21]) != struct.unpack_from(">L", head, 21)[0]:
        return None
    pos = 33
    exif: bytes | None = None
    text = 0
    while True:
        chunk = blob.at(pos, 8)
        if chunk is None:
            return None
        length, cid = struct.unpack(">L4s", chunk)
        if not _PNG_CID.match(cid) or cid in _PNG_REFUSED:
            return None
        if cid == b"IDAT":
            break
        if length > _EXTRA_BYTES:
            return None
        body = blob.at(pos + 8, length + 4)
        if body is None:
            return None
        s = body[:length]
        if zlib.crc32(s, zlib.crc32(cid)) != struct.unpack_from(">L", body, length)[0]:
            return None
        if length < _PNG_MIN_LENGTH.get(cid, 0):
            return None
        if cid == b"tRNS" and mode in ("1", "L", "I;16", "RGB"):
            if length < (6 if mode == "RGB" else 2):
                return None
        elif cid == b"eXIf":
            if exif is not None:
                return None
            exif = b"Exif\x00\x00" + s
        elif cid in (b"tEXt", b"zTXt", b"iTXt", b"iCCP"):
            ok, kept = _png_text_ok(cid, s)
            text += kept
            if not ok or text > _TEXT_LIMIT:
                return None
        pos += 12 + length
    orientation = 1 if exif is None else exif_orientation(exif)
    if orientation is None:
        return None
    return Header(width, height, "PNG", orientation)


# -------------------------------------------------------------------------------------- GIF
def _gif(blob: _Blob) -> Header | None:
    """The size Pillow reports: the logical screen, grown to the first frame's extent when that
    frame sticks out. Walks the blocks up to the first image descriptor as ``_seek(0)`` does and
    gives up where Pillow would fail or misread (a cut block, an extension whose first sub-block
    is empty: Pillow then takes the next block's introducer for a length)."""
    screen = blob.at(0, 13)
    if screen is None:
        return None
    width, height, flags = struct.unpack_from("<HHB", screen, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        intro = blob.at(pos, 2)
        if intro is None:
            return None
        if intro[0] == 0x21:  # extension: label, sub-blocks
            label = intro[1]
            pos += 2
            first = True
            while True:
                length_byte = blob.at(pos, 1)
                if length_byte is None:
                    return None
                length = length_byte[0]
                if length == 0:
                    if first and label != 0xFE:
                        return None
                    pos += 1
                    break
                block = blob.at(pos + 1, length)
                if block is None:
                    return None
                if first and label == 0xF9 and length < (4 if block[0] & 1 else 3):
                    return None
                if first and label == 0xFF and block.startswith(b"NETSCAPE2.0"):
                    nxt = blob.at(pos + 1 + length, 1)
                    if nxt is None or nxt[0] == 0:  # Pillow reads a second block here
                        return None
                first = False
                pos += 1 + length
        elif intro[0] == 0x2C:  # image descriptor
            desc = blob.at(pos + 1, 9)
            if desc is None:
                return None
            x0, y0, w, h, packed = struct.unpack("<HHHHB", desc)
            if w == 0 or h == 0:  # an empty frame: Pillow's disposal fill may refuse it
                return None
            palette = 3 << ((packed & 7) + 1) if packed & 0x80 else 0
            if blob.at(pos + 10 + palette, 1) is None:  # the LZW code size byte
                return None
            width, height = max(width, x0 + w), max(height, y0 + h)
            break
        else:  # the trailer, or junk Pillow would skip byte by byte
            return None
    if width <= 0 or height <= 0:
        return None
    return Header(width, height, "GIF")


# ------------------------------------------------------------------------------------- WebP
def _vp8_size(frame: bytes, chunk_size: int) -> tuple[int, int] | None:
    """libwebp's ``VP8GetInfo``: a shown key frame with a sane first partition."""
    if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    bits = frame[0] | (frame[1] << 8) | (frame[2] << 16)
    if bits & 1 or ((bits >> 1) & 7) > 3 or not (bits >> 4) & 1 or (bits >> 5) >= chunk_size:
        return None
    w, h = struct.unpack_from("<HH", frame, 6)
    w, h = w & 0x3FFF, h & 0x3FFF
    return (w, h) if w and h else None


def _vp8l_size(frame: bytes) -> tuple[int, int] | None:
    """libwebp's ``VP8LGetInfo``: signature 0x2f, 14-bit sizes, version 0."""
    if len(frame) < 5 or frame[0] != 0x2F or frame[4] >> 5:
        return None
    (bits,) = struct.unpack_from("<L", frame, 1)
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1


def _webp(blob: _Blob) -> Header | None:
    """Still WebP whose RIFF chunks tile the file exactly (what libwebp's demuxer, which Pillow
    uses, insists on). VP8X files: canvas size, which must equal the image's, and the EXIF chunk
    only when the VP8X EXIF flag is set (the demuxer keeps it only then). Animations and unknown
    chunks are left to Pillow."""
    (riff_size,) = struct.unpack_from("<L", blob.head, 4)
    riff_end = 8 + riff_size
    if riff_size & 1 or riff_size < 12 or riff_end != blob.size:
        return None
    chunks: list[tuple[bytes, int, int]] = []
    pos = 12
    while pos < riff_end:
        chunk = blob.at(pos, 8)
        if chunk is None or len(chunks) >= 8:
            return None
        cid, length = struct.unpack("<4sL", chunk)
        chunks.append((cid, pos + 8, length))
        pos += 8 + length + (length & 1)
    if pos != riff_end:
        return None
    first, body, length = chunks[0]
    if first != b"VP8X":
        if len(chunks) != 1:
            return None
        size = _webp_frame(blob, first, body, length)
        return None if size is None else Header(size[0], size[1], "WEBP")
    vp8x = blob.at(body, 10)
    if vp8x is None or length != 10:
        return None
    flags = vp8x[0]
    if flags & ~_WEBP_VALID_FLAGS or flags & _WEBP_ANIMATION:
        return None
    canvas = (
        int.from_bytes(vp8x[4:7], "little") + 1,
        int.from_bytes(vp8x[7:10], "little") + 1,
    )
    names = [cid for cid, _, _ in chunks[1:]]
    images = [i for i, cid in enumerate(names) if cid in (b"VP8 ", b"VP8L")]
    if len(images) != 1 or len(set(names)) != len(names):
        return None
    if not set(names) <= {b"ICCP", b"ALPH", b"VP8 ", b"VP8L", b"EXIF", b"XMP "}:
        return None
    if b"ALPH" in names and (names[images[0]] != b"VP8 " or names.index(b"ALPH") > images[0]):
        return None
    cid, body, length = chunks[1 + images[0]]
    size = _webp_frame(blob, cid, body, length)
    if size != canvas:
        return None
    orientation = 1
    if flags & _WEBP_EXIF and b"EXIF" in names:
        _, body, length = chunks[1 + names.index(b"EXIF")]
        raw = blob.at(body, length)
        found = None if raw is None or not raw else exif_orientation(raw)
        if found is None:
            return None
        orientation = found
    return Header(canvas[0], canvas[1], "WEBP", orientation)


def _webp_frame(blob: _Blob, cid: bytes, body: int, length: int) -> tuple[int, int] | None:
    head = blob.at(body, min(length, 10))
    if head is None:
        return None
    if cid == b"VP8 ":
        return _vp8_size(head, length)
    if cid == b"VP8L":
        return _vp8l_size(head)
    return None


# ------------------------------------------------------------------------------------ entry
def _parse(blob: _Blob) -> Header | None:
    head = blob.head
    try:
        if head[:3] == b"\xff\xd8\xff":
            return _jpeg(blob)
        if head[:8] == PNG_SIGNATURE:
            return _png(blob)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(blob)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(blob)
    except (struct.error, IndexError, ValueError, OverflowError):  # a parser bug, not the file's
        return None
    return None


def read_bytes(data: bytes | bytearray | memoryview) -> Header | None:
    """The header of an in-memory image, or None (see the module docstring)."""
    if isinstance(data, bytes):
        return _parse(_Blob(data, len(data), None, None))
    view = memoryview(data).cast("B")
    return _parse(_Blob(bytes(view[:HEAD_BYTES]), len(view), None, view))


def read_fd(fd: int) -> Header | None:
    """The header of the file open on ``fd`` (read with ``pread``: the offset is untouched),
    or None, also when reading fails: the caller's Pillow path then reports the error."""
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
        # A short read is the end of the file; only a full one needs the size (one more call).
        size = len(head) if len(head) < HEAD_BYTES else os.fstat(fd).st_size
    except OSError:
        return None
    if size < len(head):  # not a regular file
        return None
    return _parse(_Blob(head, size, fd, None))
