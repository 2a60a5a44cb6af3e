"""``video-sfw``: unsafe segments of a video, in Filestack's "Video SFW" shape.

Frames are sampled in ONE ffmpeg pass (filters ``fps=N`` then ``scale=...``, built with
ffmpeg-python; default 1 frame per second, the short side brought down to 256 px, the size
open-nsfw looks at) into a temporary folder outside the workdir, scored in batches with
:func:`processors.tasks.nsfw.score_images` (open-nsfw), and consecutive frames scoring
``>= threshold`` are merged into segments. A frame sampled at ``t``
stands for ``[t, t + 1/fps)``, so a segment is ``[first frame, last frame + 1/fps)`` (capped at
the duration): its edges are exact to within one sampling interval.

Answer (``details: true``)::

    {"sfw": false, "details": {"unsafe_segments": [
        {"confidence": 88, "start_offset": 3000, "end_offset": 6000}], ...}}

``confidence`` is the highest frame score of the segment x 100 (0-100), offsets are
milliseconds from the start. ``details: false`` (the default, as in Filestack) leaves ``details``
out. ``as_file: true`` writes the full answer (details included) to ``video-sfw.json`` in the
workdir and returns ``{"sfw": ..., "file": {"name", "mimetype", "size"}}``; the agent stores the
file and adds its URI under ``derived``.

Threshold: open-nsfw's authors read >= 0.8 as explicit and < 0.2 as safe; the default 0.8 is
theirs. The only positive available here is a synthetic texture (frames of it in a video score
0.86-0.89, clean test patterns <= 0.01): detection of real explicit content was not measured.
Videos longer than ``max_duration_s`` (600 s, as Filestack's default) are refused.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from processors.media.ffmpeg import (
    Deadline,
    VideoParams,
    clean_on_error,
    graph_output,
    inspect_video,
    media_input,
    require_workdir,
    run_ffmpeg,
    scaled_progress,
)
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register
from processors.tasks import nsfw

VERSION = "1.0"
OUTPUT = "video-sfw.json"
#: Short side of the sampled frames (open-nsfw squashes them to 256x256 anyway).
FRAME_SIDE = 256
BATCH = 32


class VideoSfwParams(VideoParams):
    fps: float = Field(default=1.0, gt=0, le=10, description="frames sampled per second")
    threshold: float = Field(default=0.8, gt=0, le=1, description="frame score counted as unsafe")
    details: bool = Field(default=False, description="include unsafe_segments in the answer")
    as_file: bool = Field(default=False, description="return the answer as a JSON file")
    max_duration_s: float | None = Field(default=600.0, gt=0, description="refuse longer videos")
    max_frames: int = Field(
        default=6000, gt=0, description="refuse when fps x duration exceeds this"
    )
    threads: int | None = Field(default=None, ge=1, le=64, description="model threads")


def segments(
    scores: list[float], fps: float, duration: float, threshold: float
) -> list[dict[str, int]]:
    """Merge runs of consecutive frames scoring ``>= threshold`` into Filestack segments."""
    out: list[dict[str, int]] = []
    step = 1.0 / fps
    i = 0
    while i < len(scores):
        if scores[i] < threshold:
            i += 1
            continue
        j = i
        while j + 1 < len(scores) and scores[j + 1] >= threshold:
            j += 1
        start = i * step
        end = min(duration, (j + 1) * step) if duration > start else (j + 1) * step
        out.append(
            {
                "confidence": round(100 * max(scores[i : j + 1])),
                "start_offset": round(start * 1000),
                "end_offset": round(end * 1000),
            }
        )
        i = j + 1
    return out


def _frame_size(width: int, height: int) -> tuple[int, int]:
    short = min(width, height)
    scale = min(1.0, FRAME_SIDE / short)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _sfw(result: Mapping[str, Any]) -> str | None:
    value = result.get("sfw")
    return None if not isinstance(value, bool) else ("yes" if value else "no")


def _unsafe_count(result: Mapping[str, Any]) -> int | None:
    details = result.get("details")
    segments = details.get("unsafe_segments") if isinstance(details, Mapping) else None
    return len(segments) if isinstance(segments, list) else None


#: For validation rules and workflow conditions (Filestack's ``sfw eq false``: "sfw is no");
#: the number of unsafe segments needs ``details: true``.
RULE_PROPERTIES = {
    "sfw": RuleProperty("string", _sfw, aliases=("sfw", "safe for work")),
    "unsafe_segments": RuleProperty("number", _unsafe_count,
                                    aliases=("number of unsafe segments", "unsafe segments")),
}


@register(
    "video-sfw",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=VideoSfwParams,
    rule_properties=RULE_PROPERTIES,
)
def video_sfw(inp: TaskInput, params: VideoSfwParams) -> dict[str, Any]:
    """Find unsafe (NSFW) segments in a video by scoring sampled frames with open-nsfw."""
    deadline = Deadline(params.timeout_s, inp.deadline)
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    assert info.width and info.height
    expected = math.ceil(info.duration * params.fps)
    if expected > params.max_frames:
        raise ProcessorError(
            f"{info.duration:.0f}s at {params.fps:g} fps is {expected} frames; the limit is "
            f"{params.max_frames} (lower fps or raise max_frames)"
        )
    w, h = _frame_size(info.width, info.height)
    scores: list[float] = []
    with tempfile.TemporaryDirectory(prefix="darkroom-vsfw-") as tmp:
        frames = Path(tmp)
        sampled = media_input(inp.path, params)["v:0"].filter("fps", f"{params.fps:g}")
        command = graph_output(
            [sampled.filter("scale", w, h)],
            frames / "%d.png",
            {
                "an": None,
                "sn": None,
                "dn": None,
                "fps_mode": "passthrough",
                "frame_pts": "1",  # file k.png holds the frame at k / fps
                "c:v": "png",
                "compression_level": "1",
                "f": "image2",
            },
        )
        run_ffmpeg(
            command,
            duration_s=info.duration,
            progress=scaled_progress(inp.progress, 0, 90),
            timeout_s=deadline.remaining(),
            deadline=deadline,
        )
        files = sorted(frames.glob("*.png"), key=lambda p: int(p.stem))
        if not files:
            raise ProcessorError("the video has no decodable frames")
        if len(files) < expected - max(2, 0.05 * expected):
            raise ProcessorError(
                f"the input is truncated or corrupt: sampled {len(files)} of ~{expected} frames"
            )
        by_index: dict[int, float] = {}
        for start in range(0, len(files), BATCH):
            deadline.remaining()
            chunk = files[start : start + BATCH]
            images = []
            for f in chunk:
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
            threads = params.threads or inp.settings.model_threads
            for f, s in zip(chunk, nsfw.score_images(images, threads=threads), strict=True):
                by_index[int(f.stem)] = s
                f.unlink()
            if inp.progress is not None:
                inp.progress(90 + 10 * min(1.0, (start + len(chunk)) / len(files)))
        deadline.remaining()
        # frame k (pts in 1/fps units) stands for [k/fps, (k+1)/fps); gaps count as safe
        top = max(by_index)
        scores = [by_index.get(k, 0.0) for k in range(top + 1)]
    unsafe = segments(scores, params.fps, info.duration, params.threshold)
    sfw = not unsafe
    details: dict[str, Any] = {
        "unsafe_segments": unsafe,
        "frames": len(by_index),
        "fps": params.fps,
        "threshold": params.threshold,
        "max_score": round(max(scores), 4),
        "model": nsfw.OpenNsfw.name,
        "note": "frame scores from open-nsfw; segment edges are exact to one sampling "
        "interval; detection of real explicit content was not measured here",
    }
    if params.as_file:
        workdir = require_workdir(inp.workdir)
        body = json.dumps({"sfw": sfw, "details": details}, indent=2).encode()
        with clean_on_error(workdir):
            (workdir / OUTPUT).write_bytes(body)
        return {
            "sfw": sfw,
            "file": {"name": OUTPUT, "mimetype": "application/json", "size": len(body)},
        }
    if params.details:
        return {"sfw": sfw, "details": details}
    return {"sfw": sfw}
