"""``thumbnail`` and ``video-thumbnail``: a small WebP preview of the asset, stored as a derived
object and pointed at by the asset's ``info.thumbnail``.

* ``thumbnail`` (images): the shared decode (``InputSpec(kind="image", max_side=256)``, the size
  ``dominant-colors`` asks for, so one decode serves both; EXIF orientation applied, transparency
  composited on white) encoded as ``thumbnail.webp`` in the workdir. Never upscaled: a picture
  smaller than 256 px keeps its size.
* ``video-thumbnail`` (videos): one frame at ``position`` (10 %) of the duration, grabbed by one
  ffmpeg run (input-side seek, ``-frames:v 1``, scaled to fit ``max_side`` at the display aspect
  ratio, autorotated) through :mod:`processors.media.ffmpeg`, then encoded like an image.

The agent stores every file the processor leaves in its workdir as
``derived/<asset>/<post-process>/<name>`` and lists it under ``derived`` in the result; both
tasks declare ``info={"thumbnail": ...}`` (the URI of that object), so the asset's info points at
its thumbnail and the API adds the HTTP URL that serves it (``info_urls``).

Result: ``file`` (``thumbnail.webp``), ``width``/``height`` of the thumbnail, ``format``
(``WEBP``), ``mimetype``, ``size`` in bytes, ``source`` (the asset's upright size; for videos
also ``position_s``, the time of the frame).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.media.ffmpeg import (
    Deadline,
    VideoParams,
    graph_output,
    inspect_video,
    media_input,
    require_workdir,
    run_ffmpeg,
)
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION = "1.0"
MAX_SIDE = 256
OUTPUT = "thumbnail.webp"
MIMETYPE = "image/webp"


class ThumbnailParams(BaseModel):
    """Longest side (never more than the 256 px the task's input is decoded at) and the WebP
    quality."""

    model_config = ConfigDict(extra="forbid")

    max_side: int = Field(default=MAX_SIDE, ge=16, le=MAX_SIDE,
                          description="longest side of the thumbnail, px")
    quality: int = Field(default=80, ge=1, le=100, description="WebP quality")


class VideoThumbnailParams(VideoParams):
    max_side: int = Field(default=MAX_SIDE, ge=16, le=1024,
                          description="longest side of the thumbnail, px")
    quality: int = Field(default=80, ge=1, le=100, description="WebP quality")
    position: float = Field(default=0.1, ge=0.0, lt=1.0,
                            description="where the frame is taken, as a fraction of the duration")


def thumbnail_uri(result: Mapping[str, Any]) -> str | None:
    """The asset info's ``thumbnail``: the URI of the stored WebP (None before it is stored)."""
    derived = result.get("derived")
    name = result.get("file")
    if not isinstance(derived, Mapping) or not isinstance(name, str):
        return None
    uri = derived.get(name)
    return uri if isinstance(uri, str) else None


def fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit ``max_side`` (never up), at least 1 px a side."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def write_webp(img: Image.Image, workdir: Path, max_side: int, quality: int) -> dict[str, Any]:
    """Encode ``img`` (shrunk to fit ``max_side``) as ``workdir/thumbnail.webp``."""
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    size = fit(img.width, img.height, max_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    target = workdir / OUTPUT
    try:
        img.save(target, "WEBP", quality=quality, method=4)
    except (OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        raise ProcessorError(f"WebP encoding failed: {exc}") from exc
    return {"file": OUTPUT, "format": "WEBP", "mimetype": MIMETYPE, "width": img.width,
            "height": img.height, "size": target.stat().st_size}


INFO = {"thumbnail": thumbnail_uri}


@register(
    "thumbnail",
    outputs=True,
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=ThumbnailParams,
    info=INFO,
)
def thumbnail(inp: TaskInput, params: ThumbnailParams) -> dict[str, Any]:
    """A small WebP thumbnail of the image (longest side 256 px), stored as a derived object."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("thumbnail needs a decoded image input", permanent=True)
    workdir = require_workdir(inp.workdir)
    out = write_webp(img, workdir, params.max_side, params.quality)
    props = inp.properties
    out["source"] = {"width": int(props.get("width", img.width)),
                     "height": int(props.get("height", img.height))}
    return out


@register(
    "video-thumbnail",
    outputs=True,
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=VideoThumbnailParams,
    info=INFO,
)
def video_thumbnail(inp: TaskInput, params: VideoThumbnailParams) -> dict[str, Any]:
    """A WebP thumbnail of one video frame (at 10 % of the duration), stored as a derived
    object."""
    deadline = Deadline(params.timeout_s)
    workdir = require_workdir(inp.workdir)
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    if not info.width or not info.height:
        raise ProcessorError("the video stream has no frame size")
    aspect = info.display_aspect
    if aspect >= 1:
        w, h = params.max_side, round(params.max_side / aspect)
    else:
        w, h = round(params.max_side * aspect), params.max_side
    w, h = min(w, info.width * 2), min(h, info.height * 2)  # a tiny video is not blown up 10x
    at = params.position * info.duration
    with tempfile.TemporaryDirectory(prefix="darkroom-vthumb-") as tmp:
        frame = Path(tmp) / "frame.png"
        stream = media_input(inp.path, params, start=at)["v:0"]
        command = graph_output(
            [stream.filter("scale", max(1, int(w)), max(1, int(h))).filter("setsar", 1)],
            frame,
            {"an": None, "sn": None, "dn": None, "frames:v": "1", "c:v": "png", "f": "image2"},
        )
        run_ffmpeg(command, duration_s=None, progress=inp.progress,
                   timeout_s=deadline.remaining())
        if not frame.is_file():
            raise ProcessorError(f"ffmpeg decoded no frame at {at:.2f}s")
        with Image.open(frame) as img:
            img.load()
            out = write_webp(img, workdir, params.max_side, params.quality)
    out["source"] = {"width": info.width, "height": info.height, "duration": info.duration,
                     "position_s": round(at, 3)}
    return out
