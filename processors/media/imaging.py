"""Image probing and decoding shared by the image processors and the agents' decode cache.

Pure code: the only I/O is reading the bytes / file object / path it is given. The goals, in
order:

1. **Never decode what we are going to refuse.** :func:`probe_header` and the bomb check in
   :func:`decode` only parse the header (Pillow's ``Image.open`` is lazy).
2. **Decode as little as possible.** For JPEG, ``draft`` lets libjpeg decode directly at 1/2,
   1/4 or 1/8 scale (DCT scaling), which is 2-3x cheaper than a full decode followed by a resize.
3. **One error type.** Anything wrong with the input becomes
   :class:`~processors.registry.ProcessorError` with ``permanent=True``: retrying a corrupt file
   cannot help, so the agent should dead-letter it at once instead of burning retries.

``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left alone: silently grey-filling a truncated
upload would hand every downstream task (hashes, colours, models) garbage. Pillow alone still
grey-fills more than that, so :func:`decode_with_info` adds two defences:

* **structure walks** that read no pixels (PNG chunks to ``IEND``, GIF blocks to the ``;``
  trailer, WebP RIFF sizes): Pillow happily decodes a PNG whose IEND is gone or a GIF cut in a
  later frame, because it stops reading once the first frame's pixels are in;
* **a strict JPEG decoder**: libjpeg only *warns* about corrupt entropy data ("Corrupt JPEG data:
  ...", "Premature end of JPEG file", a fake EOI, a header larger than its scans) and fills the
  rest with grey, and Pillow discards its warnings. JPEGs are therefore decoded by libjpeg-turbo
  through ``simplejpeg`` (same library, same scaled IDCT, pixel-identical output, same cost), which
  reports them; Pillow stays the decoder for what that path does not cover (CMYK, odd files).

Decoding also has a memory bound (``max_decode_bytes``) besides the pixel bound.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Final

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from PIL.TiffImagePlugin import TiffImageFile

from processors.media import header
from processors.registry import ProcessorError

Source = bytes | bytearray | memoryview | BinaryIO | IO[bytes] | Path | str
"""What callers may hand us: raw bytes, an open binary file, or a filesystem path."""

EXIF_ORIENTATION: Final = 0x0112

#: Default decode memory bound: the pixel buffer the decoder has to allocate, not the file size.
DEFAULT_MAX_DECODE_BYTES: Final = 1 << 30

#: EXIF orientation -> the transpose that displays the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Pillow names for formats that users know under another name. MPO is what Pillow calls a JPEG
#: carrying extra "multi-picture" frames (many phone cameras): a rule "format contains JPEG" must
#: match it.
_FORMAT_ALIASES: Final[dict[str, str]] = {"MPO": "JPEG"}

#: Errors Pillow raises for unreadable or corrupt data: OSError ("image file is truncated",
#: "broken data stream"), SyntaxError (its historical "not a valid file of this format"),
#: ValueError/IndexError/struct.error from malformed headers, and the decompression-bomb error
#: it raises itself for headers over 2x ``Image.MAX_IMAGE_PIXELS``.
_PIL_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    IndexError,
    TypeError,
    EOFError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
)

#: Resize quality/speed trade-off: ``reduce()`` by an integer factor first, then resample the last
#: <= 3x with a real filter. Pillow documents 3.0 as indistinguishable from a plain resample.
REDUCING_GAP: Final = 3.0


@dataclass(frozen=True)
class Decoded:
    """A decoded image plus what the cache needs to know about how it was decoded.

    ``original_size`` is the upright (EXIF-oriented) size of the full picture, so ``full`` tells
    whether ``image`` holds every pixel (then any smaller request can be served from it).
    """

    image: Image.Image
    original_size: tuple[int, int]
    format: str

    @property
    def full(self) -> bool:
        return max(self.image.size) >= max(self.original_size)


@contextmanager
def _binary(src: Source) -> Iterator[tuple[IO[bytes], bool]]:
    """Yield ``(stream, owned)`` for ``src``; close the stream afterwards only if we opened it.

    ``owned`` is False for a caller's file object: ``Image.close()`` closes the stream it read
    from, so the image must then be left to the garbage collector instead.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        yield io.BytesIO(src), True
    elif isinstance(src, str | os.PathLike):
        try:
            fh = open(src, "rb")  # noqa: SIM115 - closed in finally, stream is yielded
        except OSError as exc:
            # A path we cannot open is an environment problem, not a corrupt image: retryable.
            raise ProcessorError(f"cannot read image file {src!s}: {exc}", permanent=False) from exc
        try:
            yield fh, True
        finally:
            fh.close()
    else:
        yield src, False


def _open(fp: IO[bytes]) -> ImageFile.ImageFile:
    """``Image.open`` with Pillow's exceptions turned into permanent ``ProcessorError``."""
    try:
        return Image.open(fp)
    except UnidentifiedImageError as exc:
        # Pillow's message names the stream object (useless in a log); show the magic bytes.
        try:
            fp.seek(0)
            head = fp.read(8)
        except (OSError, ValueError):
            head = b""
        raise ProcessorError(f"not a recognised image format (starts with {head!r})") from exc
    except Image.DecompressionBombError as exc:
        raise ProcessorError(f"image refused as a decompression bomb: {exc}") from exc
    except _PIL_ERRORS as exc:
        raise ProcessorError(f"corrupt image header: {type(exc).__name__}: {exc}") from exc


def _format_name(im: ImageFile.ImageFile) -> str:
    name = (im.format or "").upper()
    return _FORMAT_ALIASES.get(name, name)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8) from the header only.

    ``Image.getexif()`` on a PNG whose eXIf chunk follows the pixel data decodes the whole image to
    find it, so only look where the header put it (``info["exif"]``, or TIFF's parsed tags).
    Unreadable EXIF is ignored: a broken camera tag must not make the picture unusable.
    """
    try:
        raw = im.info.get("exif")
        if raw:
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(EXIF_ORIENTATION, 1)
        elif isinstance(im, TiffImageFile):
            value = im.getexif().get(EXIF_ORIENTATION, 1)
        else:
            return 1
        return int(value) if int(value) in _ORIENTATION_TRANSPOSE else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF means "no rotation"
        return 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Orientations 5-8 swap width and height (the picture is stored rotated by 90 degrees)."""
    return (size[1], size[0]) if orientation >= 5 else size


def probe_header(src: Source) -> dict[str, int | str]:
    """Read ``{width, height, format}`` from the header without decoding any pixels.

    ``width``/``height`` are the *displayed* size (EXIF orientation applied), because that is what
    validation rules ("width is smaller than 500") and aspect-ratio consumers (blurhash) mean.
    ``format`` is Pillow's upper-case name ("JPEG", "PNG", "WEBP", "GIF", ...), with MPO reported
    as JPEG.

    JPEG, PNG, GIF and WebP headers are read by :mod:`processors.media.header` (several times
    cheaper than ``Image.open``, same answers); whatever it is unsure of goes through Pillow.
    """
    fast = _probe_fast(src)
    return fast if fast is not None else _probe_with_pillow(src)


def _probe_fast(src: Source) -> dict[str, int | str] | None:
    """:func:`probe_header` through the pure-Python reader, or None to ask Pillow.

    Pillow is asked instead for file objects (their position is the caller's), when
    ``LOAD_TRUNCATED_IMAGES`` changes what Pillow accepts, and for images over
    ``Image.MAX_IMAGE_PIXELS``: Pillow warns above it and raises above twice it, and the caller
    must get that same warning and ProcessorError.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        return None
    if isinstance(src, bytes | bytearray | memoryview):
        head = header.read_bytes(src)
    elif isinstance(src, str | os.PathLike):
        try:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            # As in _binary: a path we cannot open is an environment problem, retryable.
            raise ProcessorError(f"cannot read image file {src!s}: {exc}", permanent=False) from exc
        try:
            head = header.read_fd(fd)
        finally:
            os.close(fd)
    else:
        return None
    if head is None:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and head.width * head.height > limit:
        return None
    width, height = _upright_size((head.width, head.height), head.orientation)
    fmt = _FORMAT_ALIASES.get(head.format, head.format)
    return {"width": width, "height": height, "format": fmt}


def _probe_with_pillow(src: Source) -> dict[str, int | str]:
    """:func:`probe_header` through ``Image.open`` (the reference the fast reader must match)."""
    with _binary(src) as (fp, owned):
        im = _open(fp)
        try:
            width, height = _upright_size(im.size, _orientation(im))
            return {"width": width, "height": height, "format": _format_name(im)}
        finally:
            if owned:
                im.close()


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse a decode whose pixel count exceeds ``max_pixels`` (decompression-bomb guard)."""
    w, h = size
    if w * h > max_pixels:
        raise ProcessorError(
            f"image is {w}×{h} = {w * h} pixels, over the limit of {max_pixels}",  # noqa: RUF001
            permanent=True,
        )


def _draft_box(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The ``draft`` request that keeps the *longest* side >= ``max_side``.

    Pillow picks the largest DCT scale s in {8, 4, 2, 1} with ``w // s >= box_w`` and
    ``h // s >= box_h``. A square box would also force the *short* side up to ``max_side`` and so
    over-decode panoramas (6000x2000 at 512: 3000x1000 instead of 750x250); asking only for the
    long side gives the smallest scale that still needs no upsampling.
    """
    return (max_side, 1) if size[0] >= size[1] else (1, max_side)


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white and return RGB (what a viewer shows on white)."""
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    )


#: Pixels converted per step by :func:`_wide_grey_to_l` (its float temporaries: ~4 MB).
_BAND_PIXELS: Final = 1 << 20


def _wide_grey_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit grey (``I;16*``, ``I``, ``F``) to 8-bit ``L``, scaled by 1/257 rather than clipped
    (``I`` only when it holds values over 255), in bands of rows.

    Converting the whole array at once held ~14 bytes of float temporaries per pixel: 1.5 GB for
    a 100 MP 16-bit PNG whose pixels take 200 MB. Banding gives the same pixels (the same float32
    operations, element by element) for the cost of one extra 8-bit buffer.
    """
    w, h = im.size
    divide = im.mode.startswith("I;16") or (im.mode == "I" and _max_value(im) > 255)
    out = np.empty((h, w), np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, w))
    for top in range(0, h, rows):
        band = np.asarray(im.crop((0, top, w, min(h, top + rows)))).astype(np.float32)
        if divide:
            band /= 257.0
        np.rint(band, out=band)
        np.clip(band, 0, 255, out=band)
        out[top : top + rows] = band
    return Image.fromarray(out)


def _max_value(im: Image.Image) -> float:
    extrema = im.getextrema()
    high = extrema[1]
    return float(high) if isinstance(high, int | float) else 0.0


def _to_resizable(im: Image.Image) -> Image.Image:
    """Bring exotic modes to 8-bit L/RGB/RGBA *before* resizing.

    Pillow resizes ``P`` and ``1`` with NEAREST (ugly) and converts 16-bit/float modes by
    clipping at 255 (a 16-bit PNG would turn white), so these are converted first; the common
    L/RGB/RGBA/LA pass through untouched so the (cheaper) conversion happens after the shrink.
    """
    mode = im.mode
    if mode in ("L", "RGB", "RGBA", "LA") and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_grey_to_l(im)
    if _has_alpha(im):
        return im.convert("RGBA")
    if mode in ("1", "P", "PA"):
        return im.convert("RGB" if mode != "1" else "L")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Final conversion to the requested mode; alpha is composited on white unless kept."""
    if im.mode == mode:
        return im
    if mode == "RGBA":
        return im.convert("RGBA")
    if _has_alpha(im):
        im = _flatten_alpha(im)
    return im if im.mode == mode else im.convert(mode)


def shrink(img: Image.Image, max_side: int | None, resample: str = "bilinear") -> Image.Image:
    """Return a NEW image whose longest side is at most ``max_side`` (aspect ratio kept).

    Never mutates ``img`` and never returns it: callers (the decode cache in particular) hand the
    result to code that may draw on it. ``None`` means "full size", i.e. a copy.
    """
    w, h = img.size
    if max_side is None or max(w, h) <= max_side:
        return img.copy()
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    scale = max_side / max(w, h)
    size = (max_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_side)
    if resample == "box":  # an exact area average (no reducing gap: it is one already)
        return img.resize(size, Image.Resampling.BOX)
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)


def _damaged(detail: str) -> ProcessorError:
    """The error for a file whose bytes are broken. The prefix is the one Pillow's failures have
    always carried, so log searches, dead-letter triage and existing rules keep matching."""
    return ProcessorError(f"corrupt or truncated image: {detail}", permanent=True)


# ------------------------------------------------------------------------ structure checks
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _stream_size(fp: IO[bytes]) -> int:
    fp.seek(0, io.SEEK_END)
    return fp.tell()


def _read_all(fp: IO[bytes]) -> bytes:
    """The whole file; for bytes handed in by the caller this is their own object (no copy):
    an unmodified ``BytesIO`` returns the buffer it was created from."""
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()
    fp.seek(0)
    return fp.read()


def _check_png(fp: IO[bytes], size: int) -> None:
    """Walk the chunks to ``IEND`` reading only their 8-byte headers (seeks over the data).

    Pillow stops reading after the last IDAT it needs, so a PNG cut anywhere after its pixel data
    (or mid-way through a later APNG frame) decodes "fine". Data CRCs are not recomputed: inflate
    already notices corrupt pixel data, and hashing every byte would cost more than the walk.
    """
    pos = len(PNG_SIGNATURE)
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise _damaged("truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", head)
        if length > 0x7FFF_FFFF or not kind.isalpha():
            raise _damaged(f"corrupt PNG (no valid chunk header at byte {pos})")
        end = pos + 12 + length  # length, type, data, CRC
        if end > size:
            cut = kind.decode("ascii") + f" chunk at byte {pos} is cut"
            raise _damaged(
                f"truncated PNG (the {cut})"
                if kind == b"IEND"
                else f"truncated PNG (no IEND chunk: the {cut})"
            )
        if kind == b"IEND":
            return
        pos = end


def _gif_color_table(packed: int) -> int:
    """Size of the colour table a logical-screen or image descriptor's packed byte announces."""
    return 3 << ((packed & 7) + 1) if packed & 0x80 else 0


def _skip_gif_sub_blocks(data: bytes, pos: int) -> int:
    """Position after a chain of data sub-blocks (length byte + data, ended by a 0 length)."""
    n = len(data)
    while pos < n:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return pos


def _check_gif(data: bytes) -> None:
    """Walk the blocks to the ``;`` trailer without LZW-decoding anything.

    Pillow decodes only the first frame, so an animation cut in a later frame (or a still image
    cut after its pixels) passes it unnoticed. Each sub-block is one step: ~0.1 ms per 25 kB.
    """
    n = len(data)
    pos = 13 + (_gif_color_table(data[10]) if n > 10 else 0)
    while pos < n:
        block = data[pos]
        if block == 0x3B:
            return
        if block == 0x21:  # extension: introducer, label, sub-blocks
            pos = _skip_gif_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            packed = data[pos + 9] if pos + 9 < n else 0
            pos = _skip_gif_sub_blocks(data, pos + 10 + _gif_color_table(packed) + 1)
        else:
            raise _damaged(f"corrupt GIF (byte 0x{block:02x} at {pos} starts no block)")
    raise _damaged("truncated GIF (no trailer)")


def _check_webp(fp: IO[bytes], size: int) -> None:
    """The RIFF size must fit in the file, and the chunks inside it must fit in the RIFF."""
    fp.seek(4)
    riff_end = 8 + int.from_bytes(fp.read(4), "little")
    if riff_end > size:
        raise _damaged(
            f"truncated WebP (its RIFF header says {riff_end} bytes, the file has {size})"
        )
    pos = 12
    while pos + 8 <= riff_end:
        fp.seek(pos)
        head = fp.read(8)
        length = int.from_bytes(head[4:], "little")
        pos += 8 + length + (length & 1)
        # An encoder that leaves out the final pad byte is sloppy, not broken.
        if pos > riff_end + (length & 1):
            name = head[:4].decode("latin-1")
            raise _damaged(f"corrupt WebP (the {name!r} chunk ends past the RIFF data)")


def check_structure(fp: IO[bytes], fmt: str) -> None:
    """Refuse a PNG, GIF or WebP (Pillow's ``format``) whose structure is cut short or broken.

    Reads no pixels (see the ``_check_*`` walks) and leaves the stream where it was; other
    formats pass untouched (JPEG is checked by its strict decoder).
    """
    walks: dict[str, Callable[[], None]] = {
        "PNG": lambda: _check_png(fp, _stream_size(fp)),
        "GIF": lambda: _check_gif(_read_all(fp)),
        "WEBP": lambda: _check_webp(fp, _stream_size(fp)),
    }
    walk = walks.get(fmt)
    if walk is not None:
        pos = fp.tell()
        walk()
        fp.seek(pos)


def _open_explained(fp: IO[bytes]) -> ImageFile.ImageFile:
    """:func:`_open`, saying "truncated" when that is why a WebP fails to open: Pillow's WebP
    plugin decodes in ``open`` and only reports "could not create decoder object"."""
    try:
        return _open(fp)
    except ProcessorError:
        fp.seek(0)
        head = fp.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            _check_webp(fp, _stream_size(fp))
        raise


# --------------------------------------------------------------------------- strict JPEG
#: Pillow mode -> (strict decoder's output, Pillow raw mode to unpack it). RGBX rather than RGB:
#: Pillow stores RGB in 4 bytes per pixel, and unpacking RGBX costs 30 ms less at 12 MP.
_JPEG_COLORSPACES: Final = {"RGB": ("RGBX", "RGBX"), "L": ("GRAY", "L")}


def _jpeg_damage(message: str) -> str | None:
    """What a libjpeg warning says about the data, or None for a quirk that spoils no pixel.

    Every entropy-data warning of jerror.h (HIT_MARKER, EXTRANEOUS_DATA, HUFF_BAD_CODE,
    ARITH_BAD_CODE, MUST_RESYNC) starts "Corrupt JPEG data"; JPEG_EOF is a truncation. BOGUS_ICC
    shares the prefix but concerns a metadata marker, and the rest (unknown JFIF revision, Adobe
    transform code, ...) concern headers: those files decode as before.
    """
    if message.startswith("Premature end of JPEG file"):
        return "truncated JPEG (the data ends before the EOI marker)"
    if message.startswith("Corrupt JPEG data") and "ICC" not in message:
        return f"JPEG entropy data is corrupt ({message})"
    return None


def _pillow_load(im: ImageFile.ImageFile, libjpeg_said: str | None = None) -> Image.Image:
    """``im.load()``; when libjpeg already refused the file (a fatal error such as "Unsupported
    marker type"), Pillow fails too, and libjpeg's words explain it better than "broken data
    stream"."""
    try:
        im.load()
    except _PIL_ERRORS as exc:
        if libjpeg_said is None:
            raise
        raise _damaged(f"corrupt JPEG ({libjpeg_said})") from exc
    return im


def _decode_jpeg_strict(im: JpegImageFile, data: bytes) -> Image.Image:
    """Decode ``im`` (after ``draft``) with libjpeg-turbo, raising on corrupt entropy data.

    Pillow decodes instead where this path does not fit: CMYK/YCCK (only validated here, at 1/8
    scale, because Pillow knows Adobe's inverted CMYK), a header quirk libjpeg only warns about
    (TurboJPEG reports the *first* warning, so nothing after it could be told apart), a file
    TurboJPEG declines, or a scale other than the one ``draft`` chose.
    """
    spaces = _JPEG_COLORSPACES.get(im.mode)
    w, h = im.size
    try:
        if spaces is None:
            simplejpeg.decode_jpeg(data, colorspace="CMYK", min_width=1, min_height=1, strict=True)
            return _pillow_load(im)
        # The smallest libjpeg scale (n/8) at least this large is the 1/s that draft picked.
        arr = simplejpeg.decode_jpeg(
            data, colorspace=spaces[0], min_width=w, min_height=h, strict=True
        )
    except ValueError as exc:
        damage = _jpeg_damage(str(exc))
        if damage is not None:
            raise _damaged(damage) from exc
        return _pillow_load(im, libjpeg_said=str(exc))
    if arr.shape[:2] != (h, w):
        return _pillow_load(im)
    out = Image.frombytes(im.mode, (w, h), arr, "raw", spaces[1])
    out.info = dict(im.info)  # what the loaded JPEG (and everything derived from it) carried
    return out


def _load(im: ImageFile.ImageFile, fp: IO[bytes]) -> Image.Image:
    """The decoded pixels: JPEG through the strict decoder, everything else through Pillow."""
    if isinstance(im, JpegImageFile) and len(im.tile) == 1:
        return _decode_jpeg_strict(im, _read_all(fp))
    return _pillow_load(im)


# --------------------------------------------------------------------------- memory bound
def _rawmode(im: ImageFile.ImageFile) -> str:
    """The decoder's raw mode ("RGB;16B" for a 16-bit RGB PNG), "" when Pillow shows none."""
    if not im.tile:
        return ""
    args = im.tile[0].args
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""


def decode_bytes_per_pixel(im: ImageFile.ImageFile) -> int:
    """Bytes per pixel of the samples the header announces: 6 for 16-bit RGB (Pillow keeps only
    8 bits of it, but the decoder reads and unpacks all 16), 2 for 16-bit grey, 3 for RGB."""
    mode = im.mode
    if mode in ("I", "F"):
        return 4
    if mode.startswith("I;16"):
        return 2
    try:
        bands = Image.getmodebands(mode)
    except KeyError:
        return 4
    return bands * (2 if ";16" in _rawmode(im) else 1)


def check_decode_bytes(im: ImageFile.ImageFile, max_decode_bytes: int) -> None:
    """Refuse a decode whose pixel buffer would exceed ``max_decode_bytes``.

    Call it after ``draft``: ``im.size`` is then the size libjpeg will actually produce, so a
    12 MP JPEG wanted at 640 px costs 1000x750 pixels, not 4000x3000. The pixel limit alone cannot
    tell a 100 MP 8-bit grey PNG (100 MB) from a 100 MP 16-bit RGBA one (800 MB).
    """
    w, h = im.size
    bpp = decode_bytes_per_pixel(im)
    need = w * h * bpp
    if need > max_decode_bytes:
        raise ProcessorError(
            f"decoding this image needs about {need} bytes ({w}×{h} px × {bpp} bytes, "  # noqa: RUF001
            f"{im.mode}), over the limit max_decode_bytes={max_decode_bytes}",
            permanent=True,
        )


@contextmanager
def _seekable(src: Source) -> Iterator[tuple[IO[bytes], bool]]:
    """:func:`_binary`, with a stream that cannot seek read into memory (the checks seek)."""
    with _binary(src) as (fp, owned):
        if fp.seekable():
            yield fp, owned
        else:
            yield io.BytesIO(fp.read()), True


def decode_with_info(
    src: Source,
    max_side: int | None,
    *,
    mode: str = "RGB",
    max_pixels: int,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Decoded:
    """:func:`decode`, also returning the upright full size and format (for the decode cache)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    with _seekable(src) as (fp, owned):
        im = _open_explained(fp)
        keep_open = not owned
        try:
            header_size = im.size
            check_pixels(header_size, max_pixels)
            fmt = _format_name(im)
            check_structure(fp, fmt)
            if max_side is not None:
                # JPEG only (a no-op elsewhere): libjpeg decodes at the smallest DCT scale whose
                # longest side is still >= max_side. Asking for "L" lets it skip colour work.
                draft_mode = mode if mode in ("L", "RGB") else None
                im.draft(draft_mode, _draft_box(header_size, max_side))
            check_decode_bytes(im, max_decode_bytes)
            try:
                pixels = _load(im, fp)
                orientation = _orientation(im)
                out: Image.Image = _to_resizable(pixels)
                if max_side is not None and max(out.size) > max_side:
                    out = shrink(out, max_side)
                # Transpose after the shrink: rotating 512 px is cheaper than rotating 12 MP, and
                # a square bounding box makes the shrink orientation-independent anyway.
                transpose = _ORIENTATION_TRANSPOSE.get(orientation)
                if transpose is not None:
                    out = out.transpose(transpose)
                out = _to_mode(out, mode)
            except _PIL_ERRORS as exc:
                raise ProcessorError(
                    f"corrupt or truncated image: {type(exc).__name__}: {exc}", permanent=True
                ) from exc
            # Full-size decode already in the right mode: hand out the loaded image itself rather
            # than paying for a copy (its pixels are in memory; the file is no longer needed).
            keep_open = keep_open or out is im
            return Decoded(
                image=out, original_size=_upright_size(header_size, orientation), format=fmt
            )
        finally:
            if not keep_open:
                im.close()


def decode(
    src: Source,
    max_side: int | None,
    *,
    mode: str = "RGB",
    max_pixels: int,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode ``src`` to a ``mode`` image whose longest side is at most ``max_side``.

    * refuses images over ``max_pixels`` from the header, before any pixel is decoded, and
      decodes needing more than ``max_decode_bytes`` of pixel buffer (after JPEG draft);
    * refuses truncated or corrupt files Pillow would grey-fill (see the module docstring);
    * JPEG: ``draft`` so libjpeg decodes at 1/2, 1/4 or 1/8 scale when that is enough;
    * applies EXIF orientation (the result is upright; width/height swap for 90° rotations);
    * ``mode="RGB"`` composites transparency onto white; palette, LA and 16-bit modes are handled;
    * ``max_side=None`` decodes at full size.

    Any decoding failure raises ``ProcessorError(permanent=True)``.
    """
    return decode_with_info(
        src, max_side, mode=mode, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes
    ).image
