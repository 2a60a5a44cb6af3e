"""``compress-video``: re-encode to H.264 (or HEVC) + AAC MP4 at a target bitrate and/or size.

One ffmpeg command (built with ffmpeg-python): decode, optional ``scale=W:H,setsar=1`` (aspect
kept, even sides, never upscaled) and frame-rate cap, encode, ``+faststart``. The output is
probed and checked (duration matches the input: a truncated input that ffmpeg decodes only
partly is an error, not a short file). The result describes the output ("compressed.mp4" in
the workdir, stored as a derived object by the agent) and the source it came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from processors.media.ffmpeg import (
    Bitrate,
    Deadline,
    VideoParams,
    audio_encoder_options,
    check_output,
    clean_on_error,
    fit_size,
    graph_output,
    inspect_video,
    media_input,
    output_summary,
    require_workdir,
    run_ffmpeg,
    scale_filters,
    video_encoder_options,
)
from processors.registry import InputSpec, TaskInput, register

VERSION = "1.0"
OUTPUT = "compressed.mp4"

Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]


class CompressVideoParams(VideoParams):
    bitrate: Bitrate | None = Field(
        default=None, description="target video bitrate: bits/s or '800k'; with crf: a ceiling"
    )
    max_width: int | None = Field(default=None, ge=16, le=16384, description="fit inside (px)")
    max_height: int | None = Field(default=None, ge=16, le=16384, description="fit inside (px)")
    crf: int | None = Field(
        default=None, ge=0, le=51, description="constant quality (default 23 for H.264 w/o bitrate)"
    )
    preset: Preset = Field(default="veryfast", description="x264/x265 speed preset")
    codec: Literal["h264", "hevc"] = "h264"
    max_fps: float | None = Field(default=None, gt=0, le=240, description="cap the frame rate")
    audio_bitrate: Bitrate = Field(default=128_000, description="AAC bitrate")
    audio: bool = Field(default=True, description="keep the audio track (re-encoded to AAC)")


@register(
    "compress-video",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=CompressVideoParams,
)
def compress_video(inp: TaskInput, params: CompressVideoParams) -> dict[str, Any]:
    """Re-encode a video to a smaller H.264/AAC MP4 (target bitrate, max size, CRF, preset)."""
    deadline = Deadline(params.timeout_s, inp.deadline)
    workdir = require_workdir(inp.workdir)
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    size = fit_size(info, params.max_width, params.max_height)
    out = workdir / OUTPUT
    src = media_input(inp.path, params)
    streams = [src["v:0"].chain(scale_filters(info, size, params.max_fps))]
    keep_audio = params.audio and info.has_audio
    if keep_audio:
        streams.append(src["a:0"])
    options = video_encoder_options(
        params.codec, crf=params.crf, bitrate=params.bitrate, preset=params.preset, container="mp4"
    )
    options |= audio_encoder_options("aac", params.audio_bitrate) if keep_audio else {"an": None}
    options |= {"sn": None, "dn": None, "map_metadata": "-1", "movflags": "+faststart", "f": "mp4"}
    command = graph_output(streams, out, options)
    with clean_on_error(workdir):
        run = run_ffmpeg(
            command,
            duration_s=info.duration,
            progress=inp.progress,
            timeout_s=deadline.remaining(),
            deadline=deadline,
        )
        result = check_output(out, info.duration, info, stderr_tail=run.stderr_tail)
    summary = output_summary(result, OUTPUT, "video/mp4")
    return {
        "output": summary,
        "source": {
            k: v
            for k, v in {
                "width": info.width,
                "height": info.height,
                "bitrate": info.bitrate,
                "size": info.file_size,
                "codec": info.video_codec,
                "duration": info.duration,
            }.items()
            if v is not None
        },
        "ratio": round(result.file_size / info.file_size, 4) if info.file_size else None,
        "scaled": size != (info.width, info.height),
        "elapsed_s": round(run.elapsed_s, 3),
    }
