"""``analyze-accessibility``: how well people with colour-vision deficiencies can tell the
picture's colours and edges apart, in Cloudinary's terms: ``distinct_edges`` and
``distinct_colors`` (0-1), the ``most_indistinct_pair`` of colours, and the
``colorblind_accessibility_score``.

**Simulation**: the matrices of Machado, Oliveira & Fernandes ("A physiologically-based model
for simulation of color vision deficiency", IEEE TVCG 2009) at severity 1 (dichromacy:
protanopia, deuteranopia, tritanopia), applied to linear sRGB, as ``colorspacious`` does (its
results and these agree to 1e-15; it is not a dependency: three 3x3 matrices). Colours are
compared in CIELAB (D65) with **CIEDE2000**; a difference under ~2 is invisible, over 10 obvious.

* ``distinct_colors``: the palette (the ``colors`` most prominent colours, Pillow's fast octree
  quantisation, entries under ``min_share`` of the picture ignored). For every pair that normal
  vision tells apart (CIEDE2000 >= 10), the share of its difference that survives the
  simulation, ``kept = min(1, dE_simulated / min(dE_normal, 15))`` (15: past that two colours are
  different at a glance). Each colour's distinctness is its lowest ``kept``; the score is their
  mean weighted by area: the share of the picture whose colour stays told apart from all the
  others (a red/green pie chart on white: the white keeps 1, the red and green slices their
  ``kept``). A picture without two distinct colours scores 1.
* ``distinct_edges``: the colour edges of the picture (per-pixel Lab gradient, i.e. dE76 per
  pixel, Sobel on L, a, b; pixels whose gradient is at least 5); the share of their strength
  that survives the simulation (each pixel counts up to its normal strength).
* ``most_indistinct_pair``: the normally distinct pair with the smallest surviving share (ties:
  the larger pair), with the deficiency and both differences under ``most_indistinct``.
* ``colorblind_accessibility_score``: the mean of the two, each taken for the worst deficiency.

``by_deficiency`` holds the three figures for each deficiency. Input: the shared decode at
``max_side=512`` (area and edge statistics; 512 keeps one-pixel outlines visible). ~30 ms.

Validation properties: "colorblind accessibility score" (alias "accessibility score"),
"distinct colors", "distinct edges".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
MAX_SIDE: Final = 512

#: Machado et al. 2009, severity 1.0, for linear RGB.
MACHADO_2009: Final = {
    "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                            [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                              [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779],
                            [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}
#: linear sRGB -> CIE XYZ (D65).
_RGB_TO_XYZ: Final = np.array([[0.4124564, 0.3575761, 0.1804375],
                               [0.2126729, 0.7151522, 0.0721750],
                               [0.0193339, 0.1191920, 0.9503041]])
_WHITE: Final = np.array([0.95047, 1.0, 1.08883])

DISTINCT: Final = 10.0  # CIEDE2000 at which two colours are plainly different
CLEAR: Final = 15.0  # past this, "clearly different" at a glance, either way
EDGE: Final = 5.0  # Lab gradient (dE per pixel) that makes an edge

F64 = npt.NDArray[np.float64]


class AccessibilityParams(BaseModel):
    """``colors``: palette size; ``min_share``: palette entries covering less are ignored."""

    model_config = ConfigDict(extra="forbid")

    colors: int = Field(default=8, ge=2, le=16)
    min_share: float = Field(default=0.02, ge=0.0, le=0.5)


def to_linear(srgb01: F64) -> F64:
    out: F64 = np.where(srgb01 <= 0.04045, srgb01 / 12.92, ((srgb01 + 0.055) / 1.055) ** 2.4)
    return out


def simulate(linear: F64, deficiency: str) -> F64:
    """Linear RGB as seen with ``deficiency`` (clipped to the gamut)."""
    out: F64 = np.clip(linear @ MACHADO_2009[deficiency].T, 0.0, 1.0)
    return out


def linear_to_lab(linear: F64) -> F64:
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: F64, lab2: F64) -> F64:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), element-wise over ``...x3``."""
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dL = L2 - L1
    dC = c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    L_mean = (L1 + L2) / 2
    cp_mean = (c1p + c2p) / 2
    hsum = h1p + h2p
    h_mean = np.where(np.abs(h1p - h2p) > 180,
                      np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2), hsum / 2)
    h_mean = np.where(c1p * c2p == 0, hsum, h_mean)
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
    sl = 1 + 0.015 * (L_mean - 50) ** 2 / np.sqrt(20 + (L_mean - 50) ** 2)
    sc = 1 + 0.045 * cp_mean
    sh = 1 + 0.015 * cp_mean * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    out: F64 = np.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2
                       + rt * (dC / sc) * (dH / sh))
    return out


def palette(img: Image.Image, colors: int, min_share: float) -> list[tuple[str, float, F64]]:
    """``(hex, share, srgb 0-1)`` of the most prominent colours, largest first."""
    quantized = img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    pal = quantized.getpalette() or []
    counts = quantized.getcolors(maxcolors=256) or []
    total = img.width * img.height
    merged: dict[tuple[int, int, int], int] = {}
    for n, index in counts:
        assert isinstance(index, int)
        rgb = (pal[3 * index], pal[3 * index + 1], pal[3 * index + 2])
        merged[rgb] = merged.get(rgb, 0) + n
    out = []
    for rgb, n in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])):
        if n / total >= min_share:
            out.append(("#{:02x}{:02x}{:02x}".format(*rgb), n / total,
                        np.array(rgb, dtype=np.float64) / 255))
    return out


F32 = npt.NDArray[np.float32]


def _pixels_lab(linear: F32, deficiency: str | None = None) -> F32:
    """Per-pixel CIELAB of linear RGB (OpenCV's linear-RGB conversion, D65; within 0.002 of
    :func:`linear_to_lab`), optionally as seen with ``deficiency``."""
    src = linear
    if deficiency is not None:
        m = MACHADO_2009[deficiency].astype(np.float32)
        src = np.clip(np.asarray(cv2.transform(linear, m), dtype=np.float32), 0.0, 1.0)
    out: F32 = np.asarray(cv2.cvtColor(src, cv2.COLOR_LRGB2Lab), dtype=np.float32)
    return out


def _lab_gradient(lab: F32) -> F32:
    """Lab gradient magnitude (dE76 per pixel; Sobel / 8 per channel)."""
    total = np.zeros(lab.shape[:2], dtype=np.float32)
    for c in range(3):
        ch = np.ascontiguousarray(lab[..., c])
        gx = cv2.Sobel(ch, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(ch, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        total += gx * gx + gy * gy
    out: F32 = np.sqrt(total)
    return out


def _colours(colours: list[tuple[str, float, F64]], deficiency: str
             ) -> tuple[float, dict[str, Any] | None]:
    """distinct_colors for one deficiency and its most indistinct pair.

    Each palette colour's distinctness is the smallest share of its difference to another
    (normally distinct) colour that survives the simulation; the score is their mean weighted
    by area, i.e. the share of the picture whose colour stays told apart from all the others."""
    if len(colours) < 2:
        return 1.0, None
    srgb = np.stack([c[2] for c in colours])
    lin = to_linear(srgb)
    lab, lab_sim = linear_to_lab(lin), linear_to_lab(simulate(lin, deficiency))
    kept_of: dict[int, float] = {}
    worst: tuple[float, float, dict[str, Any]] | None = None
    for i, j in itertools.combinations(range(len(colours)), 2):
        d_norm = float(ciede2000(lab[i], lab[j]))
        if d_norm < DISTINCT:
            continue  # not told apart with normal vision either: nothing to lose
        d_sim = float(ciede2000(lab_sim[i], lab_sim[j]))
        kept = min(1.0, d_sim / min(d_norm, CLEAR))
        for k in (i, j):
            kept_of[k] = min(kept_of.get(k, 1.0), kept)
        weight = colours[i][1] * colours[j][1]
        if worst is None or (kept, -weight) < (worst[0], worst[1]):
            worst = (kept, -weight, {"pair": [colours[i][0], colours[j][0]],
                                     "deficiency": deficiency,
                                     "delta_e": round(d_norm, 2),
                                     "delta_e_simulated": round(d_sim, 2),
                                     "kept": round(kept, 4)})
    area = sum(colours[k][1] for k in kept_of)
    if area <= 0:
        return 1.0, None
    score = sum(colours[k][1] * v for k, v in kept_of.items()) / area
    return score, worst[2] if worst else None


def _edges(grad: F32, lin: F32, deficiency: str) -> float:
    mask = grad >= EDGE
    strength = float(grad[mask].sum())
    if strength <= 0:
        return 1.0
    sim_grad = _lab_gradient(_pixels_lab(lin, deficiency))
    return float(np.minimum(sim_grad[mask], grad[mask]).sum()) / strength


def _number(name: str) -> RuleProperty:
    aliases = {"colorblind_accessibility_score": ("colorblind accessibility score",
                                                  "accessibility score",
                                                  "colourblind accessibility score"),
               "distinct_colors": ("distinct colors", "distinct colours"),
               "distinct_edges": ("distinct edges",)}[name]

    def extract(result: Mapping[str, Any]) -> Any:
        if name == "colorblind_accessibility_score":
            return result.get(name)
        return (result.get("colorblind_accessibility_analysis") or {}).get(name)

    return RuleProperty("number", extract, aliases=aliases)


RULE_PROPERTIES: Final = {n: _number(n) for n in
                          ("colorblind_accessibility_score", "distinct_colors", "distinct_edges")}


@register(
    "analyze-accessibility",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=AccessibilityParams,
    rule_properties=RULE_PROPERTIES,
    info={"colorblind_accessibility_score": "colorblind_accessibility_score"},
)
def analyze_accessibility(inp: TaskInput, params: AccessibilityParams) -> dict[str, Any]:
    """Colour-blind accessibility: distinct colours and edges under simulated dichromacy."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("analyze-accessibility needs a decoded image input", permanent=True)
    try:
        img.load()
        rgb_img = img if img.mode == "RGB" else img.convert("RGB")
        srgb = np.asarray(rgb_img, dtype=np.float32) / np.float32(255)
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        raise ProcessorError(
            f"analyze-accessibility: unreadable image: {type(exc).__name__}: {exc}") from exc
    colours = palette(rgb_img, params.colors, params.min_share)
    lin = np.ascontiguousarray(to_linear(srgb).astype(np.float32))  # type: ignore[arg-type]
    grad = _lab_gradient(_pixels_lab(lin))
    by: dict[str, dict[str, Any]] = {}
    worst_pair: dict[str, Any] | None = None
    for deficiency in MACHADO_2009:
        dc, pair = _colours(colours, deficiency)
        de = _edges(grad, lin, deficiency)
        by[deficiency] = {"distinct_colors": round(dc, 4), "distinct_edges": round(de, 4),
                          "most_indistinct_pair": pair["pair"] if pair else None}
        if pair is not None and (worst_pair is None or pair["kept"] < worst_pair["kept"]):
            worst_pair = pair
    distinct_colors = min(v["distinct_colors"] for v in by.values())
    distinct_edges = min(v["distinct_edges"] for v in by.values())
    score = (distinct_colors + distinct_edges) / 2
    return {
        "colorblind_accessibility_analysis": {
            "distinct_edges": round(distinct_edges, 4),
            "distinct_colors": round(distinct_colors, 4),
            "most_indistinct_pair": worst_pair["pair"] if worst_pair else None,
        },
        "colorblind_accessibility_score": round(score, 4),
        "most_indistinct": worst_pair,
        "by_deficiency": by,
        "palette": [{"hex": h, "share": round(s, 4)} for h, s, _ in colours],
        "analysed_size": [rgb_img.width, rgb_img.height],
        "method": "Machado 2009 (severity 1) in linear sRGB; CIEDE2000",
    }
