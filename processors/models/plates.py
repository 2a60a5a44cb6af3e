"""The licence-plate detector shared by ``recognize-plate`` and ``blur-plates``.

Model: OpenCV's Haar cascade ``haarcascade_russian_plate_number.xml`` (part of OpenCV; 20
stages, a 60x20 window), shipped inside ``opencv-python-headless`` < 5 under ``cv2/data`` (5.0
ships an empty ``cv2/data``: :class:`ModelMissing` then says so). It was trained on Russian plates
(black type on a white 520x112 mm plate, 4.6:1); it fires on dark-on-light plates of that shape,
the synthetic European-style test plates included. It is loaded once per process and thread:
``cv2.CascadeClassifier`` keeps per-call scratch state, so concurrent ``detectMultiScale`` calls
on one instance are not safe; each worker thread gets its own classifier (parsing the 75 kB XML
takes a few ms, once per thread).

Pipeline (:func:`detect_plates`):

1. grey, shrunk so that its long side is at most ``detect_side`` (default 1600: a plate narrower
   than ``min_width`` = 60 px *there* is not looked for; on a 4000 px photo that is 150 px, on a
   1600 px one 60 px);
2. ``detectMultiScale`` (``scale_factor`` 1.1, ``min_neighbors`` 3). Tuned on 6 scikit-image
   photos carrying a synthetic plate 24-60 px high, at their size and upscaled 3x: every plate
   found; 1.05 / 5 was 2x slower and fired on the clean motorcycle photo. One false detection
   remains (the 3x motorcycle photo, a 180x60 box on its background): ``recognize-plate`` drops
   it (no legible text), ``blur-plates`` blurs it;
3. overlapping raw detections are merged (the 3:1 window often lands on the left and the right
   half of one 4.7:1 plate as two boxes);
4. each merged box is *refined* to the plate itself: in a margin around it, Otsu's threshold
   splits light from dark; the light pixels between and around a plate's characters form one
   component, bounded by its frame or the car's body. The largest light component whose
   bounding box holds the box's centre, has a plate's aspect (2-7), is at least 45 % filled
   (characters are its holes) and is about the box's size replaces the box; when none qualifies
   (a light plate on a light car without a frame) the merged box is widened to 3.5:1 about its
   centre (``refined: false``). The cascade box is only roughly placed (it covers 60-90 % of a
   wide plate's width and adds margins above and below), so this is what lets a blur cover the
   whole plate. Measured: every synthetic plate above refined to within 3 px of its frame.

Boxes are ``[x0, y0, x1, y1]`` in ORIGINAL pixels (the asset's ``width``/``height``), whatever size
the image handed to the processor was.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import cv2  # type: ignore[import-untyped,unused-ignore]
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.loading import Model, ModelMissing, get_model

U8Array = npt.NDArray[np.uint8]

CASCADE_FILE: Final = "haarcascade_russian_plate_number.xml"
#: Long side of the grey image the cascade scans (see the module docstring).
DETECT_SIDE: Final = 1600
#: The cascade's own window (60x20): nothing smaller can be found at any scale.
WINDOW: Final = (60, 20)
#: An unrefined cascade box is widened to this aspect (a 4.7:1 plate in a box ~1.4x its height).
UNREFINED_ASPECT: Final = 3.5


class PlateCascade(Model):
    """OpenCV's Russian-plate Haar cascade, one ``CascadeClassifier`` per thread."""

    name = "haarcascade_russian_plate_number"
    version = "opencv-4"
    package = "opencv-python-headless"
    files: ClassVar[Mapping[str, str]] = {"cascade": f"cv2/data/{CASCADE_FILE}"}

    def path(self, key: str) -> Path:
        # cv2.data knows where the XML lives whichever OpenCV wheel is installed (opencv-python,
        # -contrib, -headless); the package RECORD is the fallback.
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        if folder and (Path(folder) / CASCADE_FILE).is_file():
            return Path(folder) / CASCADE_FILE
        try:
            return super().path(key)
        except ModelMissing:
            raise ModelMissing(
                f"OpenCV's {CASCADE_FILE} is not installed (opencv-python-headless >= 5 ships an "
                "empty cv2/data): pip install 'opencv-python-headless<5'"
            ) from None

    def _load(self) -> None:
        self.file = self.path("cascade")
        self._local = threading.local()
        self._new_classifier()  # fail here, at load time, on an unreadable file

    def _new_classifier(self) -> Any:
        clf = cv2.CascadeClassifier(str(self.file))
        if clf.empty():
            raise ModelMissing(f"OpenCV could not load the cascade {self.file}")
        self._local.clf = clf
        return clf

    def classifier(self) -> Any:
        """This thread's classifier (created on first use in the thread)."""
        self.load()
        clf = getattr(self._local, "clf", None)
        return clf if clf is not None else self._new_classifier()

    def detect(self, grey: U8Array, scale_factor: float, min_neighbors: int,
               min_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Raw cascade boxes ``(x, y, w, h)`` in ``grey`` pixels."""
        found = self.classifier().detectMultiScale(
            grey, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=min_size
        )
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]


class DetectParams(BaseModel):
    """Detector tuning shared by the plate tasks.

    ``scale_factor``: the cascade's pyramid step (smaller: slower, finds more sizes);
    ``min_neighbors``: overlapping raw hits a detection needs (higher: fewer false positives,
    more misses); ``min_width``: the narrowest plate looked for, in pixels of the detection
    image (long side ``detect_side``); ``detect_side``: the long side the cascade scans.
    """

    model_config = ConfigDict(extra="forbid")

    scale_factor: float = Field(default=1.1, gt=1.0, le=1.5)
    min_neighbors: int = Field(default=3, ge=1, le=20)
    min_width: int = Field(default=WINDOW[0], ge=WINDOW[0], le=1000)
    detect_side: int = Field(default=DETECT_SIDE, ge=320, le=4096)


@dataclass(frozen=True)
class Plate:
    """A detected plate: ``box`` (x0, y0, x1, y1) in original pixels, the raw cascade hits merged
    into it, and whether the box was refined to the plate's light rectangle."""

    box: tuple[int, int, int, int]
    hits: int
    refined: bool

    def as_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "hits": self.hits, "refined": self.refined}


def to_grey(img: Image.Image, max_side: int) -> tuple[U8Array, float]:
    """``img`` as a grey array whose long side is at most ``max_side``, and the scale used."""
    scale = min(1.0, max_side / max(img.width, img.height))
    grey = img.convert("L")
    if scale < 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.uint8), scale


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area (x0, y0, x1, y1 boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(1, smaller)


def merge_boxes(
    boxes: list[tuple[int, int, int, int]], min_overlap: float = 0.25
) -> list[tuple[tuple[int, int, int, int], int]]:
    """Union of boxes (x0, y0, x1, y1) that overlap by ``min_overlap`` of the smaller one,
    repeated until stable; each result carries how many input boxes it merged."""
    groups = [(b, 1) for b in boxes]
    changed = True
    while changed:
        changed = False
        out: list[tuple[tuple[int, int, int, int], int]] = []
        for box, n in groups:
            for k, (other, m) in enumerate(out):
                if _overlap(box, other) >= min_overlap:
                    out[k] = (
                        (min(box[0], other[0]), min(box[1], other[1]),
                         max(box[2], other[2]), max(box[3], other[3])),
                        n + m,
                    )
                    changed = True
                    break
            else:
                out.append((box, n))
        groups = out
    return sorted(groups, key=lambda g: (g[0][1], g[0][0]))


def refine_box(grey: U8Array, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The light, plate-shaped region around ``box``'s centre (``grey`` pixels), or None.

    A plate is a light rectangle holding dark characters and (mostly) framed by a darker border
    or body panel: after an Otsu threshold of a margin around the box, the light pixels between
    and around its characters form one connected component whose bounding box is the plate. The
    largest light component whose bounding box holds the box's centre, has a plate's aspect
    (2-7), is filled at least 45 % (characters are the holes) and is about the box's size wins.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rx0, ry0 = max(0, x0 - w // 2), max(0, y0 - h // 2)
    rx1, ry1 = min(grey.shape[1], x1 + w // 2), min(grey.shape[0], y1 + h // 2)
    roi = grey[ry0:ry1, rx0:rx1]
    if roi.size == 0 or int(roi.max()) - int(roi.min()) < 40:
        return None
    _, light = cv2.threshold(roi, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(light, connectivity=4)
    cx, cy = (x0 + x1) / 2 - rx0, (y0 + y1) / 2 - ry0
    best: tuple[int, int, int, int, int] | None = None
    for label in range(1, n):
        bx, by, bw, bh, area = (int(v) for v in stats[label])
        if not (bx <= cx <= bx + bw and by <= cy <= by + bh) or bh == 0:
            continue
        if not 2.0 <= bw / bh <= 7.0 or area < 0.45 * bw * bh:
            continue
        if not (0.6 * w <= bw <= 2.0 * w and 0.3 * h <= bh <= 1.2 * h):
            continue
        if best is None or area > best[4]:
            best = (bx, by, bw, bh, area)
    if best is None:
        return None
    bx, by, bw, bh, _ = best
    return (rx0 + bx, ry0 + by, rx0 + bx + bw, ry0 + by + bh)


def widen(box: tuple[int, int, int, int], aspect: float) -> tuple[int, int, int, int]:
    """``box`` widened about its centre to at least ``aspect`` (width / height)."""
    x0, y0, x1, y1 = box
    want = round((y1 - y0) * aspect)
    if x1 - x0 >= want:
        return box
    extra = want - (x1 - x0)
    return (x0 - extra // 2, y0, x1 + extra - extra // 2, y1)


def detect_plates(img: Image.Image, params: DetectParams,
                  original_size: tuple[int, int] | None = None) -> list[Plate]:
    """Plates in ``img``, boxes in ``original_size`` pixels (default: ``img``'s own)."""
    model = get_model(PlateCascade)
    grey, _ = to_grey(img, params.detect_side)
    min_w = params.min_width
    raw = model.detect(grey, params.scale_factor, params.min_neighbors,
                       (min_w, max(WINDOW[1], round(min_w * WINDOW[1] / WINDOW[0]))))
    merged = merge_boxes([(x, y, x + w, y + h) for x, y, w, h in raw])
    ow, oh = original_size or img.size
    sx, sy = ow / grey.shape[1], oh / grey.shape[0]
    plates = []
    for box, hits in merged:
        fine = refine_box(grey, box)
        # Unrefined: the cascade box is ~1.4x the plate's height and often short of its width.
        b = fine or widen(box, UNREFINED_ASPECT)
        plates.append(Plate(
            box=(max(0, int(b[0] * sx)), max(0, int(b[1] * sy)),
                 min(ow, int(np.ceil(b[2] * sx))), min(oh, int(np.ceil(b[3] * sy)))),
            hits=hits,
            refined=fine is not None,
        ))
    return plates


def cascade_identity() -> dict[str, str]:
    return get_model(PlateCascade).identity
