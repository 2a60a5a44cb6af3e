"""``ocr``: the text in a picture (lines, their boxes and confidences) with RapidOCR.

Engine: ``rapidocr`` (Apache-2.0) with the ONNX models bundled in its wheel only: PP-OCRv6 small
detection + recognition and the PP-OCR mobile v2 direction classifier (180° text). The three files
are located inside the installed distribution (:func:`processors.models.loading.package_file`) and
handed
to the engine as explicit ``model_path``\\ s, so its download code path (other models are URLs in
its yaml) is never reached; the test suite runs it with sockets disabled. The engine is built
once per process and thread count (:class:`RapidOcr`), with explicit onnxruntime thread counts.

Result: ``text`` (lines joined by ``\\n`` in reading order: top to bottom, then left to right
within a row of lines that overlap vertically), ``lines`` (``text``, ``box``: four ``[x, y]``
corners clockwise from top-left in ORIGINAL image pixels, ``confidence``), ``line_count`` and the
model identity. Lines under ``min_confidence`` (recognition score) are dropped.

Input size: ``max_side=1600``. Measured on a 4000x2667 photo carrying lines set at 16-96 px: at
1600 every line from 24 px up was read exactly (~1.0 s on this 2-core box, 1 thread), at 1280
too (0.77 s) and 2048 also read the 16 px line but took 1.5 s; at 960 the 24 px line was already
shaky. The recogniser needs type about 8 px high *in its input*, so 1600 reads text down to about
1/200 of the picture's long side (20 px on a 4000 px photo: any caption, sign or watermark meant
to be read) and keeps most photos of documents legible; past 2000 px RapidOCR shrinks the input
itself (``Global.max_side_len``), so more would be decoded for nothing.

Known behaviour (measured): rendered text scores 0.95-1.0; photos without text may yield short
spurious strings (a cat's eyes read as "0" at 0.73, a tripod as "0000" at 0.77, a whole-image box
"8" at 0.90 on a cup of coffee). The default ``min_confidence`` of 0.93 drops all of those, so a
"text contains" rule does not fire on them; lower it to keep faint text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.loading import Model, get_model
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
MAX_SIDE: Final = 1600

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)


class RapidOcr(Model):
    """RapidOCR's bundled PP-OCR models, one engine per process and thread count.

    The engine is called without per-call parameters, so concurrent calls do not mutate shared
    state (``RapidOCR.update_params`` only writes when given values); its onnxruntime sessions
    are thread-safe. It keeps every line (``text_score`` 0): filtering is per task call.
    """

    name = "PP-OCRv6-small"
    version = "v3.10.0"  # the rapidocr model release these files come from
    package = "rapidocr"
    files: ClassVar[Mapping[str, str]] = {
        "det": "rapidocr/models/PP-OCRv6_det_small.onnx",
        "rec": "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "cls": "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    }

    def _load(self) -> None:
        from rapidocr import RapidOCR

        self.engine: Any = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.text_score": 0.0,
                "Det.model_path": str(self.path("det")),
                "Rec.model_path": str(self.path("rec")),
                "Cls.model_path": str(self.path("cls")),
                # RapidOCR ignores (= uses every core) counts above os.cpu_count().
                "EngineConfig.onnxruntime.intra_op_num_threads": min(
                    self.threads, os.cpu_count() or 1
                ),
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def read(self, img: Image.Image) -> tuple[np.ndarray, tuple[str, ...], tuple[float, ...]]:
        """``(boxes [N,4,2] in ``img`` pixels, texts, scores)``; empty when no text is found."""
        self.load()
        out = self.engine(img)
        boxes = getattr(out, "boxes", None)
        txts = getattr(out, "txts", None)
        scores = getattr(out, "scores", None)
        if boxes is None or txts is None or scores is None or len(txts) == 0:
            return np.zeros((0, 4, 2), dtype=np.float64), (), ()
        return (
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4, 2),
            tuple(str(t) for t in txts),
            tuple(float(s) for s in scores),
        )


class OcrParams(BaseModel):
    """``min_confidence``: drop recognised lines scoring below it (0..1)."""

    model_config = ConfigDict(extra="forbid")

    min_confidence: float = Field(default=0.93, ge=0.0, le=1.0)


def reading_order(boxes: np.ndarray) -> list[int]:
    """Indexes of ``boxes`` ([N,4,2]) top to bottom, then left to right within a row.

    A box joins the current row when its vertical centre lies inside the row's vertical span
    (lines side by side on one baseline); rows are ordered by their top, boxes in a row by left x.
    """
    if len(boxes) == 0:
        return []
    tops = boxes[:, :, 1].min(axis=1)
    bottoms = boxes[:, :, 1].max(axis=1)
    lefts = boxes[:, :, 0].min(axis=1)
    centres = (tops + bottoms) / 2
    rows: list[list[int]] = []
    span: tuple[float, float] = (0.0, 0.0)
    for i in sorted(range(len(boxes)), key=lambda k: (float(tops[k]), float(lefts[k]))):
        if rows and span[0] <= centres[i] <= span[1]:
            rows[-1].append(i)
            span = (span[0], max(span[1], float(bottoms[i])))
        else:
            rows.append([i])
            span = (float(tops[i]), float(bottoms[i]))
    return [i for row in rows for i in sorted(row, key=lambda k: float(lefts[k]))]


def _text(result: Mapping[str, Any]) -> Any:
    return result.get("text")


RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "text": RuleProperty(
        "string",
        _text,
        aliases=("text", "ocr text", "recognized text", "recognised text", "text in image"),
    ),
}


@register(
    "ocr",
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=OcrParams,
    rule_properties=RULE_PROPERTIES,
)
def ocr(inp: TaskInput, params: OcrParams) -> dict[str, Any]:
    """Read the text in the image (RapidOCR, bundled PP-OCR models); boxes in original pixels."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("ocr needs a decoded image input", permanent=True)
    try:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(f"ocr: unreadable image: {type(exc).__name__}: {exc}") from exc
    inp.deadline.check()  # between the steps: the model run itself cannot be interrupted
    model = get_model(RapidOcr, inp.settings.model_threads)
    boxes, txts, scores = model.read(img)
    inp.deadline.check()

    # The agent may hand a shrunk picture: scale boxes back to the asset's own pixels.
    props = inp.properties
    sx = float(props.get("width") or img.width) / img.width
    sy = float(props.get("height") or img.height) / img.height
    keep = [i for i, s in enumerate(scores) if s >= params.min_confidence and txts[i].strip()]
    boxes = boxes[keep] * np.array([sx, sy])
    txts = tuple(txts[i] for i in keep)
    scores = tuple(scores[i] for i in keep)

    order = reading_order(boxes)
    lines = [
        {
            "text": txts[i],
            "box": [[round(float(x), 1), round(float(y), 1)] for x, y in boxes[i]],
            "confidence": round(scores[i], 4),
        }
        for i in order
    ]
    return {
        "text": "\n".join(txts[i] for i in order),
        "lines": lines,
        "line_count": len(lines),
        "min_confidence": params.min_confidence,
        **model.identity,
    }
