"""``recognize-plate``: licence plates in a picture and the text on them.

Detection: :mod:`processors.models.plates` (OpenCV's Russian-plate Haar cascade, boxes refined to
the
plate's light rectangle). Reading: the recogniser of :mod:`processors.tasks.ocr`'s RapidOCR engine
(the
same bundled PP-OCRv6 model, the same once-per-process instance). A refined plate is one line of
text, so its crop (10 % margin, scaled to the recogniser's 48 px input height) goes to the
recogniser alone: ~25 ms a plate instead of ~1 s for detection + recognition over an upscaled crop,
and exact on every synthetic test plate down to 16 px high. A plate whose box could not be refined
(a rough cascade box: margins, maybe cut short), or one whose recogniser score is under
``min_confidence``, goes through the whole engine (text detection included) on a crop with a
white border; the better of the two readings is kept.

Text is normalised: upper-case, only ``A-Z``, ``0-9`` and single spaces are kept (plate fonts
carry no lower case; punctuation and separators like the Cyrillic/EU symbols are OCR noise here).

Result: ``plates`` (``text``: as read, spaces included; ``compact``: letters and digits only;
``box`` ``[x0, y0, x1, y1]`` in ORIGINAL pixels; ``confidence``: the recogniser's score 0..1;
``characters``: letters and digits, spaces not counted), best first (highest confidence);
``count``; ``detections`` (cascade detections before reading: the ones dropped had no legible
text scoring ``min_confidence``); the model identities.

Rule properties: ``plate_characters`` ("number of characters in number plate", number) and
``plate_content`` ("number plate content", string) are those of the best plate. The content is
the COMPACT text (no spaces): whether OCR reports the gap in "AB12 CDE" varies from picture to
picture (both were seen on the same synthetic plate), so rules compare "AB12CDE" and behave the
same either way (write "number plate is 'AB12CDE'"). With no plate read both are missing, so
every condition on them is false, negated ones included (see :mod:`agents.policy.rules`).

Input size: ``max_side=2048``. Plates are small parts of a photo: the recogniser read 16 px high
plates exactly (characters ~11 px), which at 2048 px is a plate ~1/28 of the picture's width (a
car across a street scene); the cascade scans a 1600 px copy (``detect_side``), and the crops are
taken from the 2048 px image. More pixels would mostly cost decode time (a 4000 px JPEG decodes at
1/2 scale to 2000 px through libjpeg's DCT scaling). Measured on this 2-core box, models warm: a
12 MP photo handed at 2048x1536 with one plate 0.21 s; 1155x866 0.13 s; 512 px photos 20-60 ms
(the cascade dominates; reading is ~25 ms a plate, ~0.6 s for a detection without text that
goes through the whole engine).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from PIL import Image, ImageOps
from pydantic import Field

from processors.models.loading import get_model
from processors.models.plates import DetectParams, Plate, cascade_identity, detect_plates
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register
from processors.tasks.ocr import RapidOcr

VERSION: Final = "1.0"
MAX_SIDE: Final = 2048
#: The recogniser's input height (PP-OCR rec_img_shape (3, 48, 320)).
REC_HEIGHT: Final = 48
#: Margin around a refined plate box, as a fraction of its height, when cropping for reading.
CROP_MARGIN: Final = 0.1

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)
_NOT_PLATE_CHARS: Final = re.compile(r"[^A-Z0-9 ]+")


class RecognizePlateParams(DetectParams):
    """Detector tuning (see :class:`processors.models.plates.DetectParams`) plus ``min_confidence``
    (a plate whose best reading scores below it is dropped) and ``min_characters`` (fewer letters
    and digits than this is not a plate reading)."""

    min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    min_characters: int = Field(default=2, ge=1, le=20)


def normalize_text(text: str) -> str:
    """Upper-case, ``A-Z 0-9`` and single spaces only."""
    return " ".join(_NOT_PLATE_CHARS.sub(" ", text.upper()).split())


def characters(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def _rec_only(model: RapidOcr, crop: Image.Image) -> tuple[str, float]:
    """Recognise ``crop`` as one line with the engine's recogniser alone ("" when unavailable).

    This reaches into rapidocr 3.x (``RapidOCR._load_rec_model``, ``TextRecInput``): with
    another layout it returns nothing and the caller uses the whole engine (slower, same text).
    """
    try:
        from rapidocr.ch_ppocr_rec.typings import TextRecInput
    except ImportError:
        return "", 0.0
    model.load()
    loader = getattr(model.engine, "_load_rec_model", None)
    if loader is None:
        return "", 0.0
    scale = REC_HEIGHT / crop.height
    line = crop.resize((max(1, round(crop.width * scale)), REC_HEIGHT), Image.Resampling.BICUBIC)
    bgr = np.ascontiguousarray(np.asarray(line)[:, :, ::-1])
    out = loader()(TextRecInput(img=[bgr]))
    txts = getattr(out, "txts", None) or ("",)
    scores = getattr(out, "scores", None) or (0.0,)
    return str(txts[0]), float(scores[0])


def _full_engine(model: RapidOcr, crop: Image.Image) -> tuple[str, float]:
    """Text detection + recognition on ``crop`` scaled to 48 px high with a 16 px white border:
    all lines in reading order, joined by spaces; the score is their mean."""
    from processors.tasks.ocr import reading_order

    scale = REC_HEIGHT / crop.height
    line = crop.resize((max(1, round(crop.width * scale)), REC_HEIGHT), Image.Resampling.BICUBIC)
    boxes, txts, scores = model.read(ImageOps.expand(line, 16, fill=(255, 255, 255)))
    keep = [i for i in reading_order(boxes) if normalize_text(txts[i])]
    if not keep:
        return "", 0.0
    # Stray marks read as single characters with low scores ("L", "口" from a plate's frame).
    keep = [i for i in keep if scores[i] >= 0.9 or characters(normalize_text(txts[i])) > 1] or keep
    return " ".join(txts[i] for i in keep), float(np.mean([scores[i] for i in keep]))


def read_plate(model: RapidOcr, img: Image.Image, plate: Plate, sx: float, sy: float,
               min_confidence: float) -> tuple[str, float]:
    """The normalised text on ``plate`` (box in original pixels; ``img`` is scaled by 1/sx, 1/sy)
    and its confidence."""
    x0, y0, x1, y1 = plate.box[0] / sx, plate.box[1] / sy, plate.box[2] / sx, plate.box[3] / sy
    m = max(1.0, (y1 - y0) * CROP_MARGIN)
    crop = img.crop((max(0, round(x0 - m)), max(0, round(y0 - m)),
                     min(img.width, round(x1 + m)), min(img.height, round(y1 + m))))
    if crop.width < 4 or crop.height < 4:
        return "", 0.0
    best = ("", 0.0)
    if plate.refined:
        text, score = _rec_only(model, crop)
        best = (normalize_text(text), score)
    if not plate.refined or best[1] < min_confidence or not best[0]:
        text, score = _full_engine(model, crop)
        if normalize_text(text) and score > best[1]:
            best = (normalize_text(text), score)
    return best


def _best(result: Mapping[str, Any], key: str) -> Any:
    plates = result.get("plates") or []
    return plates[0].get(key) if plates else None


RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "plate_characters": RuleProperty(
        "number",
        lambda r: _best(r, "characters"),
        aliases=(
            "number of characters in number plate",
            "number of characters in the number plate",
            "number of characters",
            "plate characters",
            "number plate length",
        ),
    ),
    "plate_content": RuleProperty(
        "string",
        lambda r: _best(r, "compact"),
        aliases=("number plate content", "plate content", "number plate", "plate",
                 "licence plate", "license plate"),
    ),
}


@register(
    "recognize-plate",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=RecognizePlateParams,
    rule_properties=RULE_PROPERTIES,
)
def recognize_plate(inp: TaskInput, params: RecognizePlateParams) -> dict[str, Any]:
    """Find licence plates (OpenCV cascade) and read them (RapidOCR); boxes in original pixels."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("recognize-plate needs a decoded image input", permanent=True)
    try:
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(
            f"recognize-plate: unreadable image: {type(exc).__name__}: {exc}"
        ) from exc
    props = inp.properties
    ow = int(props.get("width") or rgb.width)
    oh = int(props.get("height") or rgb.height)
    found = detect_plates(rgb, params, original_size=(ow, oh))
    model = get_model(RapidOcr, inp.settings.model_threads)
    sx, sy = ow / rgb.width, oh / rgb.height
    plates: list[dict[str, Any]] = []
    for plate in found:
        text, score = read_plate(model, rgb, plate, sx, sy, params.min_confidence)
        n = characters(text)
        if score >= params.min_confidence and n >= params.min_characters:
            plates.append({"text": text, "compact": text.replace(" ", ""),
                           "box": list(plate.box), "confidence": round(score, 4),
                           "characters": n})
    plates.sort(key=lambda p: -float(p["confidence"]))
    return {
        "plates": plates,
        "count": len(plates),
        "detections": len(found),
        "min_confidence": params.min_confidence,
        "detector": cascade_identity(),
        **model.identity,
    }
