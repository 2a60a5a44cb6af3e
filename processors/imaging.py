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
upload would hand every downstream task (hashes, colours, models) garbage.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Final

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from PIL.TiffImagePlugin import TiffImageFile

from processors.registry import ProcessorError

Source = bytes | bytearray | memoryview | BinaryIO | IO[bytes] | Path | str
"""What callers may hand us: raw bytes, an open binary file, or a filesystem path."""

EXIF_ORIENTATION: Final = 0x0112

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
    """
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
        arr = np.asarray(im)
        if mode.startswith("I;16") or (mode == "I" and arr.size and int(arr.max()) > 255):
            scaled = arr.astype(np.float32) / 257.0
        else:
            scaled = arr.astype(np.float32)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
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


def shrink(img: Image.Image, max_side: int | None) -> Image.Image:
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
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)


def decode_with_info(
    src: Source, max_side: int | None, *, mode: str = "RGB", max_pixels: int
) -> Decoded:
    """:func:`decode`, also returning the upright full size and format (for the decode cache)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    with _binary(src) as (fp, owned):
        im = _open(fp)
        keep_open = not owned
        try:
            header_size = im.size
            check_pixels(header_size, max_pixels)
            fmt = _format_name(im)
            if max_side is not None:
                # JPEG only (a no-op elsewhere): libjpeg decodes at the smallest DCT scale whose
                # longest side is still >= max_side. Asking for "L" lets it skip colour work.
                draft_mode = mode if mode in ("L", "RGB") else None
                im.draft(draft_mode, _draft_box(header_size, max_side))
            try:
                im.load()
                orientation = _orientation(im)
                out: Image.Image = _to_resizable(im)
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


def decode(src: Source, max_side: int | None, *, mode: str = "RGB", max_pixels: int) -> Image.Image:
    """Decode ``src`` to a ``mode`` image whose longest side is at most ``max_side``.

    * refuses images over ``max_pixels`` from the header, before any pixel is decoded;
    * JPEG: ``draft`` so libjpeg decodes at 1/2, 1/4 or 1/8 scale when that is enough;
    * applies EXIF orientation (the result is upright; width/height swap for 90° rotations);
    * ``mode="RGB"`` composites transparency onto white; palette, LA and 16-bit modes are handled;
    * ``max_side=None`` decodes at full size.

    Any decoding failure raises ``ProcessorError(permanent=True)``.
    """
    return decode_with_info(src, max_side, mode=mode, max_pixels=max_pixels).image
