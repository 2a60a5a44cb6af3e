"""The JPEG quality a file was saved with, read from its quantisation tables.

Shared by ``remove-artifacts`` (which quality to re-apply, and whether to do anything at all) and
``analyze-quality`` (the ``jpeg_quality`` score).

Method (what ImageMagick's ``identify -format %Q`` does, with a plain distance instead of its
sum/hash lookup): every libjpeg-family encoder (libjpeg, libjpeg-turbo, mozjpeg's default
tables, Pillow, ImageMagick, GIMP, most phone encoders) makes its tables by scaling the standard
tables of ITU T.81 Annex K by the quality (``jpeg_quality_scaling``: ``5000 / q`` below 50,
``200 - 2q`` from 50, each entry ``(base * scale + 50) // 100`` clamped to 1..255). So the
header's tables are compared with the scaled standard tables of every quality 1-100 (table 0
with the luminance table, the others with the chrominance table) and the closest wins, by the
mean relative difference of the 64 entries. ``exact`` says the tables are the standard ones at
that quality (then it is the quality the encoder was given, exactly); cameras and Photoshop use
tables of their own, for which the estimate is the standard quality closest to them (as
ImageMagick's) and ``distance`` says how far off they are.

Only the header is read (Pillow parses the DQT markers in ``Image.open``; no pixel is decoded):
about 0.5 ms for a 12 MP file here, most of it Pillow parsing the header.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
from PIL import Image, JpegImagePlugin

#: ITU T.81 Annex K, table K.1 (luminance), natural (row-major) order, as Pillow reports tables.
STD_LUMINANCE: Final = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
#: Table K.2 (chrominance).
STD_CHROMINANCE: Final = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

#: Pillow's ``get_sampling`` -> the usual name (-1: something else, e.g. 4:1:1 or grey).
SUBSAMPLING_NAMES: Final = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def scale_factor(quality: int) -> int:
    """libjpeg's ``jpeg_quality_scaling``: the percentage the standard tables are scaled by."""
    q = min(100, max(1, quality))
    return 5000 // q if q < 50 else 200 - 2 * q


def scaled_table(base: Sequence[int], quality: int) -> tuple[int, ...]:
    """``base`` scaled as libjpeg's ``jpeg_add_quant_table`` does for ``quality`` (baseline:
    entries clamped to 1..255)."""
    s = scale_factor(quality)
    return tuple(min(255, max(1, (b * s + 50) // 100)) for b in base)


#: The standard tables at every quality: row q - 1 holds quality q's 64 entries.
_STD_LUMA: Final = np.array([scaled_table(STD_LUMINANCE, q) for q in range(1, 101)], np.float64)
_STD_CHROMA: Final = np.array([scaled_table(STD_CHROMINANCE, q) for q in range(1, 101)],
                              np.float64)


@dataclass(frozen=True)
class JpegQuality:
    """``quality`` 1-100; ``exact``: the tables are libjpeg's at that quality; ``distance``: mean
    relative difference of the entries to those tables (0 when exact); ``subsampling``: chroma
    subsampling ("4:2:0", "4:2:2", "4:4:4", or None when grey / unusual); ``tables``: the
    file's quantisation tables (table id -> 64 entries, natural order), as Pillow's ``qtables``
    save option takes them."""

    quality: int
    exact: bool
    distance: float
    subsampling: str | None = None
    tables: Mapping[int, tuple[int, ...]] | None = None

    @property
    def pillow_subsampling(self) -> int:
        """Pillow's ``subsampling`` save option for the same chroma layout (4:2:0 if unknown)."""
        names = {v: k for k, v in SUBSAMPLING_NAMES.items()}
        return names.get(self.subsampling or "", 2)

    def as_dict(self) -> dict[str, Any]:
        return {"quality": self.quality, "exact": self.exact,
                "distance": round(self.distance, 4), "subsampling": self.subsampling}


def estimate_from_tables(
    tables: Mapping[int, Sequence[int]], subsampling: str | None = None
) -> JpegQuality | None:
    """The quality whose standard tables are closest to ``tables`` (None: no usable table)."""
    usable = {k: tuple(int(x) for x in v) for k, v in tables.items() if len(v) == 64}
    if not usable or min(min(v) for v in usable.values()) < 1:
        return None
    dist = np.zeros(100)
    for k, table in usable.items():
        std = _STD_LUMA if k == 0 else _STD_CHROMA
        dist += (np.abs(np.asarray(table, np.float64) - std) / std).mean(axis=1)
    dist /= len(usable)
    i = int(np.argmin(dist))  # the first (lowest) quality on a tie
    best = float(dist[i])
    return JpegQuality(i + 1, best == 0.0, best, subsampling, usable)


def from_image(im: Image.Image) -> JpegQuality | None:
    """The estimate for an image Pillow opened as JPEG (None for anything else)."""
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return None
    tables = getattr(im, "quantization", None)
    if not tables:
        return None
    sampling = JpegImagePlugin.get_sampling(im) if im.mode != "L" else -1
    return estimate_from_tables(tables, SUBSAMPLING_NAMES.get(sampling))


def estimate(src: Path | str | bytes | IO[bytes]) -> JpegQuality | None:
    """The estimate for a file, its bytes or an open binary stream: only the header is parsed.
    None when it is not a JPEG or cannot be opened (the decode reports damage, not this)."""
    fp: Any = io.BytesIO(src) if isinstance(src, bytes) else src
    if isinstance(fp, str | os.PathLike):
        fp = Path(fp)
    try:
        with Image.open(fp, formats=("JPEG",)) as im:
            return from_image(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
