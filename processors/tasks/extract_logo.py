"""``extract-logo``: which logos of a user-provided library appear in a picture, and where.

No logo detector ships in any installable package (see shared/reference/models.md), so this is
classical feature matching against a folder of reference logos (``library`` parameter, default
``TaskInput.settings.logo_library``, which the agents fill from ``DARKROOM_LOGO_LIBRARY``); a
logo's brand is its file's stem
(``acme.png`` -> ``acme``). Library images: PNG/JPEG/WebP/BMP/GIF/TIFF; transparent pixels (alpha)
are left out of the features, so a cut-out logo matches whatever it is printed on.

Features: SIFT by default (``detector``; in OpenCV's main module since the patent expired), ORB
as the fast option. Per library logo, computed once per process, folder and detector (the cache
key holds every file's name, size and mtime, so an added or rewritten logo is picked up): grey,
long side scaled to 400 px; SIFT once (it is scale-invariant over its octaves), ORB at scales 1,
0.6 and 0.36 (its own pyramid spans only ~3.6x), keypoints mapped back to the 400 px frame.

Per picture: up to ``features`` (4000) keypoints; for each logo, 2-NN matches (L2 for SIFT,
Hamming for ORB) filtered by Lowe's ratio test (``ratio`` 0.75), at most one match per pixel
position on each side (a circle's centre yields a dozen keypoints; such a pile once let RANSAC
map the whole logo onto one point), then a homography (OpenCV's USAC_ACCURATE, reprojection
threshold 5 px). A logo counts as found only when all of these hold (false-positive guards):

* at least ``min_inliers`` (default 8) inliers and an inlier ratio (inliers / matches) of at
  least ``min_inlier_ratio`` (0.25);
* no logo corner maps to or behind the horizon, and the corners form a convex quadrilateral;
* its scale (square root of the area ratio) lies in 0.03-8, opposite sides differ at most
  ``MAX_SIDE_RATIO`` (4) x and the aspect ratio changes at most 4x (no extreme perspective, no
  collapse to a sliver);
* the inliers are spread over the logo: their convex hull covers at least 5 % of its area.

Measured on 11 scikit-image photos with the synthetic badge logo of
tests/unit/processors/tasks/test_plates_logos_artifacts.py (300 px) pasted rotated 10-15°, SIFT: at
0.7 scale
54-60 inliers and a box within ~2 px of the pasted one on every photo, at 0.45 25-32 inliers
(all found), at 0.25 (75 px) 8-14 (10 of 11 found); ORB found 13 of those 33. A logo drawn on
transparency (text and a ring, no backing) is much harder: its surroundings change with every
photo (SIFT found it on 2 of 11). False positives: none with ``min_inliers`` lowered to 6 on 18
photos x 3 rotations/scales x 4 library logos (a badge, the text logo, scikit-image's logo, a
word mark); without the one-match-per-position rule, clean photos reached 8 "inliers".

Result: ``brands`` (``brand``, ``polygon``: the logo's four corners clockwise from its top-left,
``box`` ``[x0, y0, x1, y1]`` (both in ORIGINAL pixels), ``inliers``, ``matches``, ``score`` =
inliers / matches), most inliers first; ``count``; ``library`` (folder), ``library_size``,
``library_skipped`` (files that could not be read). One instance per brand is reported (the one
with the most inliers).

Input size: ``max_side=1280``: logos down to ~75 px across are found (about 1/17 of the
picture's width at 1280); SIFT takes ~0.25-0.35 s at 1280 px on this 2-core box plus ~35 ms per
library logo (brute-force matching of 4000 keypoints), 40-130 ms at 512-640 px. A large library
(hundreds of logos) would want an approximate matcher (FLANN) instead: not done.

Rule properties: ``brand`` (string; the list of found brands: "brand is 'acme'" holds when acme is
among them, "brand is not 'acme'" when it is not) and ``brand_count`` (number of brands found).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import cv2  # type: ignore[import-untyped,unused-ignore]
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
MAX_SIDE: Final = 1280
ENV_LIBRARY: Final = "DARKROOM_LOGO_LIBRARY"  # named in errors; read by agents.settings
#: Long side of a library logo's base level, and the extra scales features are taken at.
LOGO_SIDE: Final = 400
LOGO_SCALES: Final = (1.0, 0.6, 0.36)
LOGO_FEATURES: Final = 1000
RANSAC_THRESHOLD: Final = 5.0
#: OpenCV's USAC with local optimisation: with plain RANSAC, ORB matches once gave a homography
#: with one corner 35 px off (a perspective the logo did not have); USAC_ACCURATE put it within 5.
HOMOGRAPHY_METHOD: Final = cv2.USAC_ACCURATE
SCALE_BOUNDS: Final = (0.03, 8.0)
MAX_SIDE_RATIO: Final = 4.0
MIN_HULL_COVERAGE: Final = 0.05
IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif",
                                   ".tiff"})
#: Library folders whose descriptors stay in memory (least recently used dropped first).
CACHE_FOLDERS: Final = 8

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
Descriptors = npt.NDArray[Any]
Detector = Literal["sift", "orb"]


@dataclass(frozen=True)
class LibraryLogo:
    """A library logo's features: points in its ``size`` (LOGO_SIDE px) frame, ORB descriptors."""

    brand: str
    file: str
    size: tuple[int, int]
    points: F32  # [N, 2]
    descriptors: Descriptors


@dataclass(frozen=True)
class Library:
    folder: str
    logos: tuple[LibraryLogo, ...]
    skipped: tuple[str, ...]


_CACHE: OrderedDict[tuple[Any, ...], Library] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _grey_and_mask(im: Image.Image) -> tuple[U8, U8 | None]:
    """Grey pixels (transparency composited on white) and the opaque mask, if any."""
    im.load()
    if im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        grey = np.asarray(Image.alpha_composite(white, rgba).convert("L"))
        mask = (alpha >= 128).astype(np.uint8) * 255
        return grey, (None if mask.all() else mask)
    return np.asarray(im.convert("L")), None


def features(detector: Detector, grey: U8, n: int,
             mask: U8 | None = None) -> tuple[F32, Descriptors | None]:
    """Keypoint positions [N, 2] and descriptors (SIFT: float32 [N, 128], ORB: uint8 [N, 32];
    None when there are none). A new detector object per call: they are cheap and not shared
    between threads."""
    det: Any = cv2.SIFT.create(nfeatures=n) if detector == "sift" else cv2.ORB.create(nfeatures=n)
    kps, des = det.detectAndCompute(grey, mask)
    pts = np.array([kp.pt for kp in kps], dtype=np.float32).reshape(-1, 2)
    return pts, (None if des is None or len(des) == 0 else np.asarray(des))


def logo_features(im: Image.Image, brand: str, file: str, detector: Detector) -> LibraryLogo:
    grey, mask = _grey_and_mask(im)
    h, w = grey.shape
    s0 = LOGO_SIDE / max(w, h)
    size = (max(1, round(w * s0)), max(1, round(h * s0)))
    pts_all: list[F32] = []
    des_all: list[Descriptors] = []
    # SIFT is scale-invariant over its own octaves; ORB's pyramid spans only ~3.6x.
    for scale in LOGO_SCALES if detector == "orb" else (1.0,):
        sz = (max(8, round(size[0] * scale)), max(8, round(size[1] * scale)))
        g: U8 = np.asarray(cv2.resize(grey, sz, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        m: U8 | None = None
        if mask is not None:
            m = np.asarray(cv2.erode(cv2.resize(mask, sz, interpolation=cv2.INTER_NEAREST),
                                     np.ones((3, 3), np.uint8)), dtype=np.uint8)
        pts, des = features(detector, g, LOGO_FEATURES, m)
        if des is None:
            continue
        pts_all.append(pts * np.array([size[0] / sz[0], size[1] / sz[1]], dtype=np.float32))
        des_all.append(des)
    points = np.concatenate(pts_all) if pts_all else np.zeros((0, 2), np.float32)
    descriptors = np.concatenate(des_all) if des_all else np.zeros((0, 32), np.uint8)
    return LibraryLogo(brand, file, size, points, descriptors)


def _signature(folder: Path, detector: Detector) -> tuple[Any, ...]:
    try:
        entries = sorted(
            (e.name, e.stat().st_size, e.stat().st_mtime_ns)
            for e in os.scandir(folder)
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        )
    except OSError as exc:
        raise ProcessorError(f"extract-logo: cannot read the logo library {folder}: {exc}",
                             permanent=True) from exc
    return (str(folder), detector, tuple(entries))


def load_library(folder: str | os.PathLike[str], detector: Detector = "sift") -> Library:
    """The features of every logo in ``folder`` (cached per process and detector until a file in
    the folder changes)."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ProcessorError(f"extract-logo: logo library {path} is not a folder", permanent=True)
    key = _signature(path, detector)
    with _CACHE_LOCK:
        lib = _CACHE.get(key)
        if lib is not None:
            _CACHE.move_to_end(key)
            return lib
        logos: list[LibraryLogo] = []
        skipped: list[str] = []
        for name, _, _ in key[2]:
            try:
                with Image.open(path / name) as im:
                    logo = logo_features(im, Path(name).stem, name, detector)
            except (*_PIXEL_ERRORS, UnidentifiedImageError, Image.DecompressionBombError):
                skipped.append(name)
                continue
            if len(logo.points) < 4:
                skipped.append(name)  # a flat or tiny image: nothing to match
                continue
            logos.append(logo)
        lib = Library(str(path), tuple(logos), tuple(skipped))
        for old in [k for k in _CACHE if k[:2] == key[:2]]:
            del _CACHE[old]
        _CACHE[key] = lib
        while len(_CACHE) > CACHE_FOLDERS:
            _CACHE.popitem(last=False)
        return lib


class ExtractLogoParams(BaseModel):
    """``library``: folder of reference logos (default: the deployment's, DARKROOM_LOGO_LIBRARY);
    ``detector``: ``sift`` (robust, ~0.3 s at 1280 px) or ``orb`` (~10x faster, finds far fewer
    rotated/scaled logos); ``min_inliers``: RANSAC inliers a match needs; ``min_inlier_ratio``:
    inliers / ratio-test matches; ``ratio``: Lowe's ratio test; ``features``: the most keypoints
    taken from the picture."""

    model_config = ConfigDict(extra="forbid")

    library: str | None = None
    detector: Detector = "sift"
    min_inliers: int = Field(default=8, ge=6, le=1000)
    min_inlier_ratio: float = Field(default=0.25, ge=0.0, le=1.0)
    ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
    features: int = Field(default=4000, ge=100, le=50000)


def _convex_quad(quad: F32) -> bool:
    """Strictly convex, consistently oriented quadrilateral (no self-intersection)."""
    signs = []
    for i in range(4):
        a, b, c = quad[i], quad[(i + 1) % 4], quad[(i + 2) % 4]
        signs.append(float((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])))
    return all(s > 0 for s in signs) or all(s < 0 for s in signs)


def _area(poly: F32) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def sane_homography(h_mat: npt.NDArray[np.float64], size: tuple[int, int],
                    inlier_pts: F32) -> F32 | None:
    """The logo's corners in the picture if the homography is plausible, else None."""
    w, h = size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32).reshape(-1, 1, 2)
    denom = (h_mat[2, :2] @ corners.reshape(-1, 2).T.astype(np.float64)) + h_mat[2, 2]
    if np.any(denom <= 1e-6):  # a corner behind the camera: not a view of a flat logo
        return None
    quad = cv2.perspectiveTransform(corners, h_mat).reshape(-1, 2).astype(np.float32)
    if not np.all(np.isfinite(quad)) or not _convex_quad(quad):
        return None
    scale = (_area(quad) / float(w * h)) ** 0.5
    if not SCALE_BOUNDS[0] <= scale <= SCALE_BOUNDS[1]:
        return None
    sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)
    for a, b in ((sides[0], sides[2]), (sides[1], sides[3])):
        if min(a, b) <= 0 or max(a, b) / min(a, b) > MAX_SIDE_RATIO:
            return None
    # Aspect of the mapped logo vs its own, within the same bound (no squashing to a sliver).
    aspect = ((sides[0] + sides[2]) / (sides[1] + sides[3])) / (w / h)
    if not 1 / MAX_SIDE_RATIO <= aspect <= MAX_SIDE_RATIO:
        return None
    hull = cv2.convexHull(inlier_pts.reshape(-1, 1, 2)).reshape(-1, 2)
    if len(hull) < 3 or _area(hull.astype(np.float32)) < MIN_HULL_COVERAGE * w * h:
        return None
    return quad


def unique_matches(good: list[Any], src_pts: F32, dst_pts: F32, cell: float = 1.0) -> list[Any]:
    """At most one match per ``cell``-pixel position on each side (the best by distance).

    Keypoints repeat at one position over several scales and orientations (a circle's centre
    gives a dozen); unchecked, such a pile lets RANSAC settle on a homography that maps the whole
    logo onto that one point with "many" inliers.
    """
    seen_src: set[tuple[int, int]] = set()
    seen_dst: set[tuple[int, int]] = set()
    out = []
    for m in sorted(good, key=lambda m: m.distance):
        s = (int(src_pts[m.queryIdx][0] // cell), int(src_pts[m.queryIdx][1] // cell))
        d = (int(dst_pts[m.trainIdx][0] // cell), int(dst_pts[m.trainIdx][1] // cell))
        if s in seen_src or d in seen_dst:
            continue
        seen_src.add(s)
        seen_dst.add(d)
        out.append(m)
    return out


def match_logo(logo: LibraryLogo, pts: F32, des: Descriptors, params: ExtractLogoParams,
               matcher: Any) -> dict[str, Any] | None:
    """Where ``logo`` is among the picture's features (``pts``, ``des``), or None."""
    if len(logo.descriptors) < 2 or len(des) < 2:
        return None
    pairs = matcher.knnMatch(logo.descriptors, des, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < params.ratio * p[1].distance]
    if len(good) < max(params.min_inliers, 4):
        return None
    good = unique_matches(good, logo.points, pts)
    if len(good) < max(params.min_inliers, 4):
        return None
    src = logo.points[[m.queryIdx for m in good]]
    dst = pts[[m.trainIdx for m in good]]
    h_mat, mask = cv2.findHomography(src, dst, HOMOGRAPHY_METHOD, RANSAC_THRESHOLD)
    if h_mat is None or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    inliers = int(inl.sum())
    score = inliers / len(good)
    if inliers < params.min_inliers or score < params.min_inlier_ratio:
        return None
    quad = sane_homography(np.asarray(h_mat, dtype=np.float64), logo.size, src[inl])
    if quad is None:
        return None
    return {"brand": logo.brand, "quad": quad, "inliers": inliers, "matches": len(good),
            "score": round(score, 4)}


def _library_folder(params: ExtractLogoParams, default: str = "") -> str:
    folder = params.library or default
    if not folder:
        raise ProcessorError(
            f"extract-logo needs a logo library: set the 'library' parameter or ${ENV_LIBRARY}",
            permanent=True,
        )
    return folder


def _brands(result: Mapping[str, Any]) -> Any:
    return [b["brand"] for b in result.get("brands") or []]


RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "brand": RuleProperty("string", _brands, aliases=("brand", "brands", "logo brand", "logo")),
    "brand_count": RuleProperty(
        "number",
        lambda r: r.get("count"),
        aliases=("number of brands", "number of logos", "logo count", "brand count"),
    ),
}


@register(
    "extract-logo",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=ExtractLogoParams,
    rule_properties=RULE_PROPERTIES,
)
def extract_logo(inp: TaskInput, params: ExtractLogoParams) -> dict[str, Any]:
    """Find logos of a logo library (ORB + RANSAC homography); boxes in original pixels."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("extract-logo needs a decoded image input", permanent=True)
    library = load_library(_library_folder(params, inp.settings.logo_library), params.detector)
    if not library.logos:
        raise ProcessorError(
            f"extract-logo: no usable logo image in {library.folder}"
            + (f" (unreadable: {', '.join(library.skipped)})" if library.skipped else ""),
            permanent=True,
        )
    try:
        img.load()
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(
            f"extract-logo: unreadable image: {type(exc).__name__}: {exc}"
        ) from exc
    pts, des = features(params.detector, grey, params.features)
    props = inp.properties
    sx = float(props.get("width") or img.width) / img.width
    sy = float(props.get("height") or img.height) / img.height
    found = []
    if des is not None:
        matcher = cv2.BFMatcher(cv2.NORM_L2 if params.detector == "sift" else cv2.NORM_HAMMING)
        for logo in library.logos:
            hit = match_logo(logo, pts, des, params, matcher)
            if hit is not None:
                found.append(hit)
    best: dict[str, dict[str, Any]] = {}
    for hit in found:
        if hit["brand"] not in best or hit["inliers"] > best[hit["brand"]]["inliers"]:
            best[hit["brand"]] = hit
    brands = []
    for hit in sorted(best.values(), key=lambda h: -int(h["inliers"])):
        quad = hit.pop("quad") * np.array([sx, sy], dtype=np.float32)
        ow, oh = float(props.get("width") or img.width), float(props.get("height") or img.height)
        box = [max(0.0, float(quad[:, 0].min())), max(0.0, float(quad[:, 1].min())),
               min(ow, float(quad[:, 0].max())), min(oh, float(quad[:, 1].max()))]
        brands.append({
            **hit,
            "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in quad],
            "box": [round(v, 1) for v in box],
        })
    return {
        "brands": brands,
        "count": len(brands),
        "library": library.folder,
        "library_size": len(library.logos),
        "library_skipped": list(library.skipped),
        "detector": params.detector,
    }


def clear_library_cache() -> None:
    """Forget the computed library features (``agents.composition.reset_caches``)."""
    with _CACHE_LOCK:
        _CACHE.clear()
