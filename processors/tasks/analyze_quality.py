"""``analyze-quality``: the quality scores users know from Cloudinary's quality analysis, where
they can be computed honestly without a learned model, each 0-1 (1 = good), and an overall
``quality_score``.

No no-reference model is used: none that ships its model installs here from wheels (``brisque``
0.2 ships its SVM but needs ``libsvm-official``, which has no wheels, plus scikit-image and
requests at run time; ``pyiqa`` and ``piq`` need PyTorch and download their weights). So every
score is a classical measure, named, with the mapping to 0-1 stated (the mappings are smooth,
with no plateau, so a worse picture always scores lower; their centres were set on scikit-image's
photos and blurred, noisy, re-exposed and re-compressed copies of them):

* ``focus``: the blur metric of Crete-Roffet et al. ("The blur effect", 2007): the luma is
  blurred again (11 px box filter, each axis) and the loss of neighbour-to-neighbour variation
  measured (``blur_effect`` 0 = sharp ... 1 = flat). Six sharp photos measure 0.24-0.40, with a
  Gaussian blur of 1 px 0.35-0.53, 2 px 0.56-0.69, 3 px 0.70-0.80.
  ``focus = 1 / (1 + exp((blur_effect - 0.55) / 0.06))``: sharp 0.92-0.99, 1 px 0.6-0.96, 3 px
  0.01-0.08. A ratio, so it does not depend on the picture's contrast as the variance of the
  Laplacian does (reported as ``laplacian_variance``: 400-1500 on the same sharp photos, 2-5 at
  3 px). Noise reads as detail: a noisy picture looks sharper to it.
* ``noise``: the noise standard deviation of the luma (0-255), Immerkær's estimator ("Fast noise
  variance estimation", 1996: the mean absolute response to the 3x3 difference-of-Laplacians
  mask, x sqrt(pi/2) / 6) over the 90 % of pixels with the weakest Sobel gradient, so edges and
  texture do not count as noise (Tai & Yang 2008). On photos with Gaussian noise added it reads
  the added sigma within 10 %. ``noise = 1 / (1 + exp((sigma - 6) / 1.5))``: sigma 2 -> 0.93,
  4 -> 0.79, 6 -> 0.5, 10 -> 0.06.
* ``exposure``: from the luma histogram: mean ``m`` (0-1), share of clipped highlights ``hi``
  (luma >= 250) and crushed shadows ``lo`` (<= 5). ``exposure = exp(-((m - 0.47) / 0.25)^2)
  x exp(-hi / 0.1) x exp(-max(0, lo - 0.1) / 0.2)`` (up to 10 % black is allowed: dark backgrounds
  are common). It cannot tell a low-key or snow scene from a mis-exposed one.
* ``contrast``: RMS contrast (the standard deviation of luma, 0-1; Peli 1990),
  ``contrast = tanh(rms / 0.15)``: 0.25 (a typical photo) -> 0.93, 0.1 -> 0.58.
* ``saturation``: colourfulness of Hasler & Süsstrunk (2003), ``M = sqrt(sd_rg^2 + sd_yb^2) +
  0.3 sqrt(mean_rg^2 + mean_yb^2)`` on 0-255 RGB (their scale: 15 "slightly", 33 "moderately",
  45 "quite", 59 "highly colourful"), ``saturation = tanh(M / 25)``. A greyscale picture (M < 1)
  has ``null``: no colour to judge (and it does not count in the overall score).
  Over-saturation is not penalised.
* ``jpeg_quality``: the quality the file was saved with, read from its quantisation tables
  (:mod:`processors.media.jpeg_quality`, shared with ``remove-artifacts``), / 100. ``null`` for
  other formats (a PNG is not scored for a JPEG history it may have had).
* ``resolution``: the original's megapixels on a log scale, 0 at 0.01 MP (100x100) and 1 from
  8 MP: ``log10(MP / 0.01) / log10(800)``; 1 MP -> 0.69, 2 MP -> 0.79.

``quality_score``: the weighted geometric mean of the scores present (focus 3, noise 2,
exposure 2, jpeg_quality 2, contrast 1, saturation 1, resolution 1; each floored at 0.01), so one
very bad aspect pulls the whole down. ``measures`` holds the raw figures behind every score.

Input: the shared decode at ``max_side=1024``: the scores describe the picture as a screen shows
it (a picture sharp at 1024 px but soft at 100 % is sharp here; noise shrinks with the picture).
The JPEG tables come from the file's header (``inp.path``; no second decode). 40-90 ms at
1024x768 on this shared 2-core machine (OpenCV filters and numpy; no model).

Validation properties: "quality score" (e.g. "quality score is smaller than 0.4 => notice"),
"focus", "noise score", "exposure", "jpeg quality".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from processors.media import jpeg_quality
from processors.registry import (
    InputSpec,
    NoParams,
    ProcessorError,
    RuleProperty,
    TaskInput,
    register,
)

VERSION: Final = "1.0"
MAX_SIDE: Final = 1024

#: Weights of the overall score (weighted geometric mean of the scores present).
WEIGHTS: Final = {"focus": 3.0, "noise": 2.0, "exposure": 2.0, "jpeg_quality": 2.0,
                  "contrast": 1.0, "saturation": 1.0, "resolution": 1.0}
BLUR_FILTER: Final = 11
_LUMA: Final = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601, as JPEG

F32 = npt.NDArray[np.float32]


def _logistic(x: float, centre: float, scale: float) -> float:
    """1 well below ``centre``, 0 well above it."""
    z = (x - centre) / scale
    return 1.0 / (1.0 + math.exp(min(z, 60.0)))


def blur_effect(luma: F32, h: int = BLUR_FILTER) -> float:
    """Crete-Roffet's blur metric, 0 (sharp) .. 1 (blurred): the share of neighbour-to-neighbour
    variation that survives a strong re-blur, the worse of the two axes."""
    worst = 0.0
    for dx, dy, ksize in ((1, 0, (h, 1)), (0, 1, (1, h))):
        blurred = cv2.blur(luma, ksize)
        sharp_d = np.abs(cv2.Sobel(luma, cv2.CV_32F, dx, dy, ksize=3))[2:-1, 2:-1]
        blur_d = np.abs(cv2.Sobel(blurred, cv2.CV_32F, dx, dy, ksize=3))[2:-1, 2:-1]
        m1 = float(sharp_d.sum())
        if m1 <= 0:
            return 1.0  # a flat picture: nothing in focus
        m2 = float(np.maximum(sharp_d - blur_d, 0.0).sum())
        worst = max(worst, abs(m1 - m2) / m1)
    return worst


_IMMERKAER: Final = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(luma: F32, keep: float = 90.0) -> float:
    """Immerkær's noise sigma over the ``keep`` % of pixels with the weakest gradient."""
    if min(luma.shape) < 3:
        return 0.0
    response = np.abs(cv2.filter2D(luma, -1, _IMMERKAER))[1:-1, 1:-1].ravel()
    grad = cv2.magnitude(cv2.Sobel(luma, cv2.CV_32F, 1, 0), cv2.Sobel(luma, cv2.CV_32F, 0, 1))
    grad = grad[1:-1, 1:-1].ravel()
    n = max(1, int(grad.size * keep / 100))
    weakest = np.argpartition(grad, n - 1)[:n]
    return float(math.sqrt(math.pi / 2) * response[weakest].mean() / 6)


def colourfulness(rgb: F32) -> float:
    """Hasler & Süsstrunk's colourfulness M of 0-255 RGB."""
    opponent = cv2.transform(rgb, np.array([[1, -1, 0], [0.5, 0.5, -1]], dtype=np.float32))
    mean, std = cv2.meanStdDev(opponent)
    return float(math.hypot(*std.ravel()) + 0.3 * math.hypot(*mean.ravel()))


def exposure_score(mean: float, highlights: float, shadows: float) -> float:
    return (math.exp(-(((mean - 0.47) / 0.25) ** 2)) * math.exp(-highlights / 0.1)
            * math.exp(-max(0.0, shadows - 0.1) / 0.2))


def resolution_score(width: int, height: int) -> float:
    mp = width * height / 1e6
    return min(1.0, max(0.0, math.log10(max(mp, 1e-9) / 0.01) / math.log10(800)))


def overall(scores: Mapping[str, float | None]) -> float:
    num = den = 0.0
    for key, weight in WEIGHTS.items():
        value = scores.get(key)
        if value is not None:
            num += weight * math.log(max(value, 0.01))
            den += weight
    return math.exp(num / den) if den else 0.0


def _r(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


def analyze(rgb: npt.NDArray[np.uint8], original_size: tuple[int, int],
            jpeg: jpeg_quality.JpegQuality | None) -> dict[str, Any]:
    """Scores and measures of ``rgb`` (H x W x 3) for a picture of ``original_size``."""
    f = rgb.astype(np.float32)
    luma = np.ascontiguousarray(f @ _LUMA)
    be = blur_effect(luma)
    sigma = noise_sigma(luma)
    lum01 = luma / 255.0
    mean = float(lum01.mean())
    hi = float((luma >= 250).mean())
    lo = float((luma <= 5).mean())
    rms = float(lum01.std())
    colour = colourfulness(f)
    scores: dict[str, float | None] = {
        "focus": _logistic(be, 0.55, 0.06),
        "noise": _logistic(sigma, 6.0, 1.5),
        "exposure": exposure_score(mean, hi, lo),
        "contrast": math.tanh(rms / 0.15),
        "saturation": math.tanh(colour / 25) if colour >= 1.0 else None,
        "jpeg_quality": jpeg.quality / 100 if jpeg is not None else None,
        "resolution": resolution_score(*original_size),
    }
    result: dict[str, Any] = {k: _r(v) for k, v in scores.items()}
    result["quality_score"] = _r(overall(scores))
    result["measures"] = {
        "blur_effect": _r(be, 4),
        "laplacian_variance": _r(float(cv2.Laplacian(luma, cv2.CV_32F).var()), 2),
        "noise_sigma": _r(sigma, 3),
        "mean_luminance": _r(mean, 4),
        "clipped_highlights": _r(hi, 4),
        "clipped_shadows": _r(lo, 4),
        "rms_contrast": _r(rms, 4),
        "colourfulness": _r(colour, 2),
        "megapixels": _r(original_size[0] * original_size[1] / 1e6, 3),
        "analysed_size": [int(rgb.shape[1]), int(rgb.shape[0])],
    }
    result["jpeg"] = jpeg.as_dict() if jpeg is not None else None
    return result


def _score(name: str) -> RuleProperty:
    aliases = {"quality_score": ("quality score", "quality", "overall quality"),
               "focus": ("focus", "focus score", "sharpness"),
               "noise": ("noise score",),
               "exposure": ("exposure", "exposure score"),
               "jpeg_quality": ("jpeg quality", "jpeg quality score")}[name]

    def extract(result: Mapping[str, Any]) -> Any:
        return result.get(name)

    return RuleProperty("number", extract, aliases=aliases)


RULE_PROPERTIES: Final = {name: _score(name) for name in
                          ("quality_score", "focus", "noise", "exposure", "jpeg_quality")}


@register(
    "analyze-quality",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=NoParams,
    rule_properties=RULE_PROPERTIES,
    info={"quality_score": "quality_score"},
)
def analyze_quality(inp: TaskInput, params: NoParams) -> dict[str, Any]:
    """Focus, noise, exposure, contrast, saturation, JPEG quality, resolution; overall score."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("analyze-quality needs a decoded image input", permanent=True)
    try:
        img.load()
        rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        raise ProcessorError(
            f"analyze-quality: unreadable image: {type(exc).__name__}: {exc}") from exc
    if min(rgb.shape[:2]) < 8:
        raise ProcessorError("analyze-quality: the picture is smaller than 8 px", permanent=True)
    props = inp.properties
    size = (int(props.get("width", img.width)), int(props.get("height", img.height)))
    jpeg = jpeg_quality.estimate(inp.path) if inp.path is not None else None
    if jpeg is None:
        jpeg = jpeg_quality.from_image(img)
    return analyze(rgb, size, jpeg)
