"""``index-similarity``: an image embedding and a perceptual hash, for the similarity index.

* ``embedding``: MobileNetV2's pooled 1280-d features (:mod:`processors.models.mobilenet`, the
network
  of ``tag``), L2-normalised, as base64 of little-endian float32 (6.8 kB of JSON; float32 keeps
  cosine exact to ~1e-7, float16 would save half for a 1e-3 error: not worth a second format).
  Cosine = dot product. Measured here: astronaut vs its JPEG q10 0.94, vs other photos 0.38-0.56.
* ``phash``: ``imagehash.phash`` (64-bit DCT hash of a 32x32 greyscale) of a 256 px shrink, 16 hex
  digits. Robust to recompression and resizing, not to crops/rotations; compared by Hamming
  distance.

The processor is pure: its declared result hook adds the vector to the index
(:func:`sinks.indexes.similarity.result_hook`, run by the sink), which answers "similar images"
and flags near-duplicates; its declared routes serve the queries
(:func:`agents.api.routes.similarity.task_routes`, mounted by the API).

Input size: ``max_side=512`` (as ``tag``: the embedding at 512 is within cosine 0.994 of the
full-size one; see :mod:`processors.tasks.tag`). The hash is computed on a 256 px shrink of that.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Final

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

from processors.models.mobilenet import (
    EMBED_DIM,
    MAX_SIDE,
    PIXEL_ERRORS,
    get_mobilenet,
    normalise,
)
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION: Final = "1.0"
ENCODING: Final = "base64-float32le"
PHASH_SIDE: Final = 256


def encode_embedding(v: npt.NDArray[Any]) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")


def decode_embedding(s: str, dim: int = EMBED_DIM) -> npt.NDArray[np.float32]:
    """The vector of an ``embedding`` string; raises ValueError when malformed."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"embedding is not base64: {exc}") from exc
    if len(raw) != dim * 4:
        raise ValueError(f"embedding has {len(raw) // 4} values, expected {dim}")
    v = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(v)):
        raise ValueError("embedding has non-finite values")
    return v


def phash_hex(img: Image.Image) -> str:
    """64-bit perceptual hash (hex) of a ``PHASH_SIDE`` shrink of ``img``."""
    small = img.convert("RGB")
    if max(small.size) > PHASH_SIDE:
        small = small.copy()
        small.thumbnail((PHASH_SIDE, PHASH_SIDE), Image.Resampling.BILINEAR)
    return str(imagehash.phash(small))


def embed_images(images: list[Image.Image], threads: int | None = None,
                 data_dir: Path | None = None,
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[str]]:
    """(normalised embeddings [N, 1280], class probabilities [N, 1000], phash hex per image);
    ``threads`` and ``data_dir`` pick the model instance (see :func:`get_mobilenet`)."""
    probs, emb = get_mobilenet(threads, data_dir).predict(images)
    try:
        hashes = [phash_hex(im) for im in images]
    except PIXEL_ERRORS as exc:
        raise ProcessorError(f"unreadable image: {exc}", permanent=True) from exc
    return normalise(emb), probs, hashes


@register(
    "index-similarity",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    # by name: processors import nothing of sinks or agents (resolved where they are used)
    hooks="sinks.indexes.similarity:result_hook",
    routes="agents.api.routes.similarity:task_routes",
)
def index_similarity(inp: TaskInput, params: Any) -> dict[str, Any]:
    """Embed the image (MobileNetV2, 1280-d) and hash it (pHash) for the similarity index."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("index-similarity needs a decoded image input", permanent=True)
    emb, _, hashes = embed_images([img], inp.settings.model_threads, inp.settings.data_dir)
    return {
        "embedding": encode_embedding(emb[0]),
        "embedding_dim": EMBED_DIM,
        "embedding_encoding": ENCODING,
        "phash": hashes[0],
        **get_mobilenet(inp.settings.model_threads, inp.settings.data_dir).identity,
    }
