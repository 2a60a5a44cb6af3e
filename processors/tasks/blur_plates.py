"""``blur-plates``: a copy of the picture with every detected licence plate made unreadable.

Detection: :mod:`processors.models.plates` (the same cascade and refinement as ``recognize-plate``),
run on a ``detect_side`` copy; the blur is applied to the FULL-resolution picture, each plate box
grown by ``padding`` (a fraction of the box's height on every side: the refined box is the plate's
light interior, the padding takes its frame and any misplacement along). A plate that the cascade
misses stays readable: the detector was tuned on synthetic plates (see
:mod:`processors.models.plates`),
so check real material before relying on it for privacy.

Methods (``strength`` scales both; default 1):

* ``gaussian``: a Gaussian blur of sigma = ``strength`` x the plate's height / 4 (characters are
  ~70 % of a plate's height: at sigma h/4 they merge into a grey band; RapidOCR read nothing on a
  blurred test plate);
* ``pixelate``: the region is averaged over square cells of ``strength`` x height / 2 (about
  one cell per character, two over the plate's height: finer mosaics of text can be attacked by
  matching candidate strings' mosaics), then scaled back with nearest neighbour;
* ``fill``: the region is painted with its mean colour (nothing left to recover).

Output: ``blurred.jpg`` (JPEG input, quality ``quality``), ``blurred.webp`` (WebP) or
``blurred.png`` (anything else) in the task's workdir, or the family named by ``format``. The
picture is upright (EXIF orientation applied by the decoder) and carries no metadata (no EXIF, no
GPS) and no alpha (the decoder composites transparency onto white). The result lists the blurred
boxes (original pixels, padding included) and the output name; the agent adds its URI under
``derived``.

Input size: ``max_side=None`` (full size): the output is a deliverable that replaces the upload;
a smaller copy would be a loss. The cascade still scans only ``detect_side`` px, so the cost of
full size is decoding and encoding: measured 0.36 s for a 12 MP picture with one plate (JPEG
out), 0.1 s at 1 MP, on this 2-core box.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import cv2  # type: ignore[import-untyped,unused-ignore]
import numpy as np
from PIL import Image
from pydantic import Field

from processors.models.plates import DetectParams, cascade_identity, detect_plates
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION: Final = "1.0"
OUTPUT_STEM: Final = "blurred"

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)

#: Input format (as probed) -> output family.
_FAMILY: Final[dict[str, str]] = {"JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
_EXT: Final[dict[str, str]] = {"jpeg": "jpg", "png": "png", "webp": "webp"}


class BlurPlatesParams(DetectParams):
    """Detector tuning (see :class:`processors.models.plates.DetectParams`) plus how to blur.

    ``method``: ``gaussian``, ``pixelate`` or ``fill``; ``strength``: scales the blur radius
    (1 = a quarter of the plate's height) and the mosaic cell (1 = half its height);
    ``padding``: grows each box by this fraction of its height on every side; ``format``:
    ``auto`` (the input's family: JPEG -> JPEG, WebP -> WebP, else PNG), ``jpeg``, ``png`` or
    ``webp``; ``quality``: JPEG/WebP quality.
    """

    method: Literal["gaussian", "pixelate", "fill"] = "gaussian"
    strength: float = Field(default=1.0, ge=0.25, le=10.0)
    padding: float = Field(default=0.15, ge=0.0, le=2.0)
    format: Literal["auto", "jpeg", "png", "webp"] = "auto"
    quality: int = Field(default=90, ge=1, le=100)


def blur_region(arr: np.ndarray, box: tuple[int, int, int, int], method: str, strength: float,
                plate_height: float) -> None:
    """Blur ``arr[y0:y1, x0:x1]`` in place (``arr``: H x W x C uint8)."""
    x0, y0, x1, y1 = box
    region = arr[y0:y1, x0:x1]
    if region.size == 0:
        return
    if method == "fill":
        region[...] = region.reshape(-1, region.shape[2]).mean(axis=0).round().astype(np.uint8)
        return
    radius = max(1.0, strength * plate_height / 4)
    if method == "pixelate":
        h, w = region.shape[:2]
        cell = 2 * radius
        small = cv2.resize(region, (max(1, round(w / cell)), max(1, round(h / cell))),
                           interpolation=cv2.INTER_AREA)
        region[...] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        return
    # Blur a margin of 3 sigma around the region too, so the edges see real neighbours (no
    # mirrored plate content leaking back in at the border).
    m = int(np.ceil(3 * radius))
    H, W = arr.shape[:2]
    ox0, oy0, ox1, oy1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
    blurred = cv2.GaussianBlur(np.ascontiguousarray(arr[oy0:oy1, ox0:ox1]), (0, 0), radius)
    region[...] = blurred[y0 - oy0:y1 - oy0, x0 - ox0:x1 - ox0]


def output_family(params: BlurPlatesParams, input_format: Any) -> str:
    if params.format != "auto":
        return params.format
    return _FAMILY.get(str(input_format or "").upper(), "png")


@register(
    "blur-plates",
    outputs=True,
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=None, mode="RGB"),
    params=BlurPlatesParams,
)
def blur_plates(inp: TaskInput, params: BlurPlatesParams) -> dict[str, Any]:
    """Blur every detected licence plate on the full-size picture; writes ``blurred.<ext>``."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("blur-plates needs a decoded image input", permanent=True)
    if inp.workdir is None:
        raise ProcessorError("blur-plates needs a workdir for its output", permanent=True)
    try:
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(f"blur-plates: unreadable image: {type(exc).__name__}: {exc}") from exc
    plates = detect_plates(rgb, params)  # boxes in this (full-size) image's pixels
    arr = np.array(rgb, dtype=np.uint8)  # a copy: the decoded image may be shared with others
    boxes = []
    for plate in plates:
        x0, y0, x1, y1 = plate.box
        pad = round((y1 - y0) * params.padding)
        box = (max(0, x0 - pad), max(0, y0 - pad),
               min(rgb.width, x1 + pad), min(rgb.height, y1 + pad))
        blur_region(arr, box, params.method, params.strength, y1 - y0)
        boxes.append(list(box))

    family = output_family(params, inp.properties.get("format"))
    name = f"{OUTPUT_STEM}.{_EXT[family]}"
    out = Image.fromarray(arr)
    if family == "jpeg":
        out.save(inp.workdir / name, format="JPEG", quality=params.quality, optimize=True)
    elif family == "webp":
        out.save(inp.workdir / name, format="WEBP", quality=params.quality)
    else:
        out.save(inp.workdir / name, format="PNG", compress_level=3)
    return {
        "boxes": boxes,
        "count": len(boxes),
        "output": name,
        "format": family,
        "method": params.method,
        "strength": params.strength,
        "padding": params.padding,
        "width": rgb.width,
        "height": rgb.height,
        "detector": cascade_identity(),
    }
