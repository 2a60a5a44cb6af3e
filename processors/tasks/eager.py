"""``eager``: image renditions made at upload time (Cloudinary's "eager transformations"): a list
of resized / cropped / re-encoded versions per post-process, each stored as a derived object
``derived/<asset>/<post-process>/<name>.<ext>``.

**One decode**: the task reads the header, works out the largest source resolution any rendition
needs (its target size over the share of the picture its crop keeps) and decodes the file once,
at the smallest JPEG DCT scale (1/1, 1/2, 1/4, 1/8) that still has that many pixels (libjpeg's
draft mode; other formats decode at full size). Every rendition is resampled from that one
decoded picture and encoded. Resampling: Pillow's antialiased bicubic (``resample: lanczos`` for
Lanczos), with ``reducing_gap`` 3 (an integer box reduction first, then at most a 3x filter step,
which Pillow documents as indistinguishable from the plain filter). Bicubic was chosen by
measurement: the three resamples of the benchmark cost 70 ms with it and 150 ms with Lanczos,
which alone would put the task over its budget. The decode is the shared strict decoder
(``processors.media.imaging``: corrupt JPEG data refused, EXIF orientation applied), so
renditions are upright.

Parameters: ``renditions``, each with

* ``name``: the file name (letters, digits, ``. _ -``; the format's extension is added);
* ``width`` / ``height`` (px; at least one);
* ``fit``: ``contain`` (inside the box, aspect kept; scaled up if needed), ``cover`` (fills the
  box, aspect kept, the overflow cropped around ``gravity``), ``fill`` (stretched to the box),
  ``scale-down`` (as contain, but never larger than the source);
* ``crop``: ``{x, y, width, height}`` as fractions (0-1) of the upright picture, applied first;
* ``gravity`` (cover): ``center``, ``north``, ``south``, ``east``, ``west``, ``north_east``, ...;
* ``format``: ``webp``, ``avif``, ``jpeg`` or ``png``; ``quality`` (1-100; defaults webp 80,
  avif 60, jpeg 85; ignored for png).

AVIF is offered because Pillow here writes it (``PIL.features.check("avif")``); a Pillow built
without libavif refuses AVIF renditions when the parameters are checked (at configuration load
and for every upload), never halfway through a task. Transparency is kept in PNG, WebP and
AVIF, composited on white for JPEG.

Result: ``renditions``: ``[{name, file, format, width, height, bytes, quality}]``, plus the size
the source was decoded at (``decoded``) and its full size (``source``). The agent adds each
file's URI under ``derived``.

Measured (``benchmarks/eager.py``, 12 MP JPEG, three renditions 1600 px WebP, 800x800 cover
JPEG, 200x200 cover AVIF): see the README "Tasks" section for the figure.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, Literal

from PIL import Image, features
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from processors.media import imaging
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION: Final = "1.0"
#: Backstop only: the router already refused headers over the deployment's pixel limit.
MAX_PIXELS: Final = 1_000_000_000
MAX_RENDITIONS: Final = 20
MAX_SIDE: Final = 16384
REDUCING_GAP: Final = 3.0

Fit = Literal["contain", "cover", "fill", "scale-down"]
Format = Literal["webp", "avif", "jpeg", "png"]
Gravity = Literal["center", "north", "south", "east", "west", "north_east", "north_west",
                  "south_east", "south_west"]

EXTENSIONS: Final = {"webp": "webp", "avif": "avif", "jpeg": "jpg", "png": "png"}
DEFAULT_QUALITY: Final = {"webp": 80, "avif": 60, "jpeg": 85, "png": None}
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: gravity -> (horizontal, vertical) position of the kept window (0 = left/top, 1 = right/bottom)
_GRAVITY: Final = {"center": (0.5, 0.5), "north": (0.5, 0.0), "south": (0.5, 1.0),
                   "east": (1.0, 0.5), "west": (0.0, 0.5), "north_east": (1.0, 0.0),
                   "north_west": (0.0, 0.0), "south_east": (1.0, 1.0), "south_west": (0.0, 1.0)}


def avif_available() -> bool:
    return bool(features.check("avif"))


class Crop(BaseModel):
    """A region of the upright picture, in fractions of its width and height."""

    model_config = ConfigDict(extra="forbid")

    x: float = Field(default=0.0, ge=0.0, lt=1.0)
    y: float = Field(default=0.0, ge=0.0, lt=1.0)
    width: float = Field(default=1.0, gt=0.0, le=1.0)
    height: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _inside(self) -> Crop:
        if self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9:
            raise ValueError("crop must lie inside the picture (x + width <= 1, y + height <= 1)")
        return self


class Rendition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    fit: Fit = "contain"
    crop: Crop | None = None
    gravity: Gravity = "center"
    format: Format = "webp"
    quality: int | None = Field(default=None, ge=1, le=100)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("name: 1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v == "avif" and not avif_available():
            raise ValueError("AVIF renditions need Pillow built with libavif, and this one is "
                             "not (PIL.features.check('avif') is False); use webp")
        return v

    @model_validator(mode="after")
    def _size(self) -> Rendition:
        if self.width is None and self.height is None:
            raise ValueError(f"rendition {self.name!r}: give width, height or both")
        return self

    @property
    def file_name(self) -> str:
        ext = EXTENSIONS[self.format]
        return self.name if self.name.lower().endswith(f".{ext}") else f"{self.name}.{ext}"


class EagerParams(BaseModel):
    """``renditions``: 1-20 rendition specs (see the module docstring); ``resample``: the
    resampling filter (``bicubic``, default, or ``lanczos``: sharper by a hair, 2x the cost)."""

    model_config = ConfigDict(extra="forbid")

    renditions: list[Rendition] = Field(min_length=1, max_length=MAX_RENDITIONS)
    resample: Literal["bicubic", "lanczos"] = "bicubic"

    @model_validator(mode="after")
    def _unique(self) -> EagerParams:
        seen: set[str] = set()
        for r in self.renditions:
            if r.file_name.lower() in seen:
                raise ValueError(f"two renditions write {r.file_name!r}")
            seen.add(r.file_name.lower())
        return self


# ------------------------------------------------------------------------------- geometry
Box = tuple[float, float, float, float]


def crop_box(r: Rendition, size: tuple[int, int]) -> Box:
    """The crop region in pixels of a picture of ``size``."""
    w, h = size
    c = r.crop or Crop()
    return (c.x * w, c.y * h, (c.x + c.width) * w, (c.y + c.height) * h)


def plan(r: Rendition, size: tuple[int, int]) -> tuple[tuple[int, int], Box]:
    """``(output size, source box)`` of rendition ``r`` from a picture of ``size``."""
    x0, y0, x1, y1 = crop_box(r, size)
    cw, ch = x1 - x0, y1 - y0
    tw, th = r.width, r.height
    if tw is None or th is None:  # one side given: the other follows the aspect
        scale = tw / cw if tw is not None else (th or 1) / ch
        if r.fit == "scale-down":
            scale = min(scale, 1.0)
        return (max(1, round(cw * scale)), max(1, round(ch * scale))), (x0, y0, x1, y1)
    if r.fit == "fill":
        return (tw, th), (x0, y0, x1, y1)
    if r.fit == "cover":
        scale = max(tw / cw, th / ch)
        sw, sh = tw / scale, th / scale  # the window of the crop that fills the box
        gx, gy = _GRAVITY[r.gravity]
        left, top = x0 + (cw - sw) * gx, y0 + (ch - sh) * gy
        return (tw, th), (left, top, left + sw, top + sh)
    scale = min(tw / cw, th / ch)
    if r.fit == "scale-down":
        scale = min(scale, 1.0)
    return (max(1, round(cw * scale)), max(1, round(ch * scale))), (x0, y0, x1, y1)


def needed_scale(renditions: list[Rendition], size: tuple[int, int]) -> float:
    """The largest ratio output px / source px any rendition asks for (capped at 1: more
    source pixels than the file has do not exist)."""
    need = 0.0
    for r in renditions:
        (ow, oh), (x0, y0, x1, y1) = plan(r, size)
        need = max(need, ow / max(x1 - x0, 1e-9), oh / max(y1 - y0, 1e-9))
    return min(1.0, need)


def draft_side(long_side: int, scale: float) -> int | None:
    """The ``max_side`` that makes the decoder pick the smallest DCT scale 1/s (s in 8, 4, 2)
    keeping at least ``scale`` of the pixels, so that its output needs no further shrink
    (``long_side // s``); None = full size."""
    for s in (8, 4, 2):
        if long_side // s >= math.ceil(long_side * scale):
            return long_side // s
    return None


# ------------------------------------------------------------------------------- encoding
def _encode(img: Image.Image, r: Rendition, path: Any) -> int | None:
    quality = r.quality or DEFAULT_QUALITY[r.format]
    if r.format == "jpeg":
        if img.mode != "RGB":
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        img.save(path, format="JPEG", quality=quality, optimize=True)
    elif r.format == "webp":
        img.save(path, format="WEBP", quality=quality, method=4)
    elif r.format == "avif":
        img.save(path, format="AVIF", quality=quality)
    else:
        img.save(path, format="PNG", compress_level=6)
        quality = None
    return quality


def _has_alpha(path: Any) -> bool:
    """Whether the header announces transparency (then PNG/WebP/AVIF renditions keep it)."""
    try:
        with Image.open(path) as im:
            return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    except (OSError, SyntaxError, ValueError):
        return False  # the decode reports what is wrong with the file


@register(
    "eager",
    outputs=True,
    lane="long",  # a 12 MP source with several renditions (AVIF above all) takes ~0.5-2 s
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="file"),  # decoded here, once, at the size the renditions need
    params=EagerParams,
)
def eager(inp: TaskInput, params: EagerParams) -> dict[str, Any]:
    """Resized / cropped / re-encoded renditions from one decode, stored as derived files."""
    if inp.path is None:
        raise ProcessorError("eager needs the file", permanent=True)
    if inp.workdir is None:
        raise ProcessorError("eager needs a workdir for its renditions", permanent=True)
    header = imaging.probe_header(inp.path)
    full = (int(header["width"]), int(header["height"]))
    scale = needed_scale(params.renditions, full)
    max_side = draft_side(max(full), scale) if header["format"] == "JPEG" else None
    alpha = _has_alpha(inp.path) and any(r.format != "jpeg" for r in params.renditions)
    decoded = imaging.decode_with_info(inp.path, max_side, mode="RGBA" if alpha else "RGB",
                                       max_pixels=MAX_PIXELS)
    src = decoded.image
    # Plans are made on the full size (so the output sizes do not depend on the decode scale)
    # and their source boxes mapped onto the decoded picture.
    fx, fy = src.width / full[0], src.height / full[1]
    resample = {"bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS}[params.resample]
    out = []
    for r in params.renditions:
        inp.deadline.check()  # between renditions: an encode itself cannot be interrupted
        size, (x0, y0, x1, y1) = plan(r, full)
        box = (x0 * fx, y0 * fy, x1 * fx, y1 * fy)
        if size == src.size and box == (0.0, 0.0, float(src.width), float(src.height)):
            img = src
        else:
            img = src.resize(size, resample, box=box, reducing_gap=REDUCING_GAP)
        path = inp.workdir / r.file_name
        try:
            quality = _encode(img, r, path)
        except (OSError, ValueError) as exc:
            raise ProcessorError(f"eager: encoding {r.name} as {r.format} failed: {exc}",
                                 permanent=True) from exc
        out.append({"name": r.name, "file": r.file_name, "format": r.format,
                    "width": img.width, "height": img.height,
                    "bytes": path.stat().st_size, "quality": quality})
    return {
        "renditions": out,
        "decoded": {"width": src.width, "height": src.height},
        "source": {"width": full[0], "height": full[1], "format": header["format"]},
    }
