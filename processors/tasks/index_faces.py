"""``index-faces``: a 128-d identity embedding per face, for the face-cluster index.

Pipeline: MTCNN detection (the same detector, settings and 640 px detection image as
``count-faces``, so both tasks see the same faces), then per face dlib's 5-point landmarks inside
the MTCNN box, dlib's aligned 150x150 chip (padding 0.25) and dlib's ResNet encoder
(:mod:`processors.models.faces`). Embeddings compare by Euclidean distance: measured here, the
same person (resized, JPEG q40, mirrored) lies 0.05-0.35 apart, different people 0.53-0.92.

Input size: ``max_side=1024``, larger than the detector's 640. The chip shows the face at ~100 px:
a face smaller than that in the analysed image is upscaled into it, and blurred chips drift
(astronaut at half size + JPEG q40 moved 0.33 from the original). At 1024 px every face taking at
least 10 % of the picture's long side gets a full-resolution chip (16 % at 640). The extra pixels
only cost the decode and one resize: detection runs on the 640 px shrink and the encoder's cost
is per face (~60-100 ms each, single-threaded dlib), not per pixel.

The processor is pure: it returns the embeddings; its declared result hook adds them to the
cluster index (:func:`sinks.indexes.faces.result_hook`, run by the sink) and its declared routes
serve the clusters (:func:`agents.api.routes.faces.task_routes`, mounted by the API).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from processors.models.faces import (
    DetectorParams,
    DlibFaceEncoder,
    Mtcnn,
    detect_faces,
    detection_size,
    original_scale,
    to_rgb_array,
)
from processors.models.loading import get_model
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION = "1.0"
MAX_SIDE = 1024


class IndexFacesParams(DetectorParams):
    """Detector settings (as ``count-faces``) and the encoder's jitter count."""

    num_jitters: int = Field(
        default=0,
        ge=0,
        le=16,
        description="0/1: one encoder pass per face; N>1 averages N jittered passes (N x cost)",
    )
    max_faces: int = Field(
        default=32,
        ge=1,
        le=256,
        description="encode at most this many faces (highest confidence first)",
    )


@register(
    "index-faces",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=IndexFacesParams,
    # by name: processors import nothing of sinks or agents (resolved where they are used)
    hooks="sinks.indexes.faces:result_hook",
    routes="agents.api.routes.faces:task_routes",
)
def index_faces(inp: TaskInput, params: IndexFacesParams) -> dict[str, Any]:
    """Detect faces and compute a 128-d dlib embedding for each (for face clustering)."""
    rgb = to_rgb_array(inp.image, "index-faces")
    detector = get_model(Mtcnn, inp.settings.model_threads)
    encoder = get_model(DlibFaceEncoder, inp.settings.model_threads)
    faces = detect_faces(
        detector,
        rgb,
        min_face_size=params.min_face_size,
        min_confidence=params.min_confidence,
        thresholds=params.thresholds,
    )
    faces = faces[: params.max_faces]
    try:
        vectors = encoder.encode(rgb, [(f.x1, f.y1, f.x2, f.y2) for f in faces], params.num_jitters)
    except (RuntimeError, ValueError) as exc:
        raise ProcessorError(f"index-faces: face encoding failed: {exc}", permanent=False) from exc
    h, w = rgb.shape[:2]
    sx, sy, ow, oh = original_scale(inp.properties, w, h)
    out = []
    for f, vec in zip(faces, vectors, strict=True):
        out.append(
            {
                "box": f.scaled(sx, sy).box_xywh(),
                "confidence": round(f.score, 4),
                "embedding": [round(float(v), 6) for v in vec],
            }
        )
    return {
        "count": len(out),
        "faces": out,
        "width": ow,
        "height": oh,
        "analysed": list(detection_size(w, h)),
        **encoder.identity,
        "detector": detector.identity,
    }
