"""``convert-video``: another container and/or codec.

Formats and their default codecs: ``mp4``/``mov``/``mkv`` H.264 + AAC, ``webm`` VP9 +
Opus, ``avi`` MPEG-4 part 2 + MP3, ``ogv`` Theora + Vorbis. ``video_codec``/``audio_codec``
override them within what the container takes (``copy`` remuxes without re-encoding, ``none``
drops audio). VP9/VP8/AV1 run in their realtime modes unless ``speed`` says ``balanced`` or
``quality`` (VP9 realtime: ~0.7 s for 10 s of 640x360 here, ``good`` mode 4-8 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from processors.media.ffmpeg import (
    Bitrate,
    Deadline,
    Options,
    VideoParams,
    audio_encoder_options,
    check_output,
    clean_on_error,
    fit_size,
    graph_output,
    inspect_video,
    media_input,
    muxers,
    output_summary,
    require_workdir,
    run_ffmpeg,
    scale_filters,
    video_encoder_options,
)
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION = "1.0"


@dataclass(frozen=True)
class Container:
    muxer: str
    ext: str
    mimetype: str
    video: tuple[str, ...]  # allowed video codecs, the default first
    audio: tuple[str, ...]  # allowed audio codecs, the default first
    extra: tuple[tuple[str, str], ...] = ()  # muxer options


CONTAINERS: dict[str, Container] = {
    "mp4": Container(
        "mp4",
        "mp4",
        "video/mp4",
        ("h264", "hevc", "av1", "vp9", "mpeg4"),
        ("aac", "mp3", "opus", "flac"),
        (("movflags", "+faststart"),),
    ),
    "mov": Container(
        "mov",
        "mov",
        "video/quicktime",
        ("h264", "hevc", "prores", "mpeg4"),
        ("aac", "pcm", "mp3"),
        (("movflags", "+faststart"),),
    ),
    "mkv": Container(
        "matroska",
        "mkv",
        "video/x-matroska",
        ("h264", "hevc", "vp9", "vp8", "av1", "mpeg4", "prores", "theora"),
        ("aac", "opus", "vorbis", "mp3", "flac", "pcm"),
    ),
    "webm": Container("webm", "webm", "video/webm", ("vp9", "vp8", "av1"), ("opus", "vorbis")),
    "avi": Container("avi", "avi", "video/x-msvideo", ("mpeg4", "h264"), ("mp3", "aac", "pcm")),
    "ogv": Container("ogg", "ogv", "video/ogg", ("theora", "vp8"), ("vorbis", "opus", "flac")),
}

VideoCodec = Literal["h264", "hevc", "vp9", "vp8", "av1", "mpeg4", "prores", "theora", "copy"]
AudioCodec = Literal["aac", "opus", "mp3", "vorbis", "flac", "pcm", "copy", "none"]


class ConvertVideoParams(VideoParams):
    format: Literal["mp4", "mov", "mkv", "webm", "avi", "ogv"] = "mp4"
    video_codec: VideoCodec | None = Field(
        default=None, description="default: the format's usual one"
    )
    audio_codec: AudioCodec | None = Field(
        default=None, description="default: the format's usual one"
    )
    speed: Literal["fast", "balanced", "quality"] = Field(
        default="fast", description="fast = x264 veryfast / VP9 realtime cpu-used 8"
    )
    crf: int | None = Field(default=None, ge=0, le=63)
    bitrate: Bitrate | None = None
    audio_bitrate: Bitrate | None = Field(default=None, description="default 128k (Opus 96k)")
    max_width: int | None = Field(default=None, ge=16, le=16384)
    max_height: int | None = Field(default=None, ge=16, le=16384)

    @model_validator(mode="after")
    def _codecs_fit_container(self) -> ConvertVideoParams:
        c = CONTAINERS[self.format]
        if self.video_codec not in (None, "copy") and self.video_codec not in c.video:
            raise ValueError(
                f"{self.format} cannot hold {self.video_codec} video; "
                f"use one of {', '.join(c.video)}"
            )
        if self.audio_codec not in (None, "copy", "none") and self.audio_codec not in c.audio:
            raise ValueError(
                f"{self.format} cannot hold {self.audio_codec} audio; "
                f"use one of {', '.join(c.audio)}"
            )
        if self.video_codec == "copy" and (self.max_width or self.max_height):
            raise ValueError("video_codec 'copy' cannot be resized (max_width/max_height)")
        return self


@register(
    "convert-video",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=ConvertVideoParams,
)
def convert_video(inp: TaskInput, params: ConvertVideoParams) -> dict[str, Any]:
    """Convert a video to another container/codec (mp4, webm, mov, mkv, avi, ogv)."""
    deadline = Deadline(params.timeout_s, inp.deadline)
    workdir = require_workdir(inp.workdir)
    c = CONTAINERS[params.format]
    if c.muxer not in muxers():
        raise ProcessorError(f"this ffmpeg has no {c.muxer} muxer")
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    vcodec = params.video_codec or c.video[0]
    acodec = params.audio_codec or c.audio[0]
    if not info.has_audio:
        acodec = "none"
    abitrate = params.audio_bitrate or (96_000 if acodec == "opus" else 128_000)
    out_name = f"converted.{c.ext}"
    out = workdir / out_name
    src = media_input(inp.path, params)
    video = src["v:0"]
    if vcodec != "copy":
        size = fit_size(info, params.max_width, params.max_height)
        video = video.chain(scale_filters(info, size))
    streams = [video] if acodec == "none" else [video, src["a:0"]]
    options: Options = video_encoder_options(
        vcodec, speed=params.speed, crf=params.crf, bitrate=params.bitrate, container=params.format
    )
    options |= audio_encoder_options(acodec, abitrate)
    options |= {"sn": None, "dn": None, **dict(c.extra), "f": c.muxer}
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
    return {
        "output": output_summary(result, out_name, c.mimetype),
        "format": params.format,
        "video_codec": vcodec,
        "audio_codec": None if acodec == "none" else acodec,
        "source": {
            k: v
            for k, v in {
                "format": info.format,
                "codec": info.video_codec,
                "audio_codec": info.audio_codec,
                "width": info.width,
                "height": info.height,
                "size": info.file_size,
            }.items()
            if v is not None
        },
        "elapsed_s": round(run.elapsed_s, 3),
    }
