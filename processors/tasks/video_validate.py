"""``validate-video``: the probed video properties, offered to validation rules.

One ffprobe call reads the headers (no decode) and a second one demuxes the last two seconds the
header promises, to catch a truncated upload; non-indexed containers are checked too (an AVI's data
must reach the frame count its header declares; an MPEG-TS must end on a whole transport packet
and its last second must decode), see :func:`processors.media.ffmpeg.check_complete`.

The result carries width, height (display size, rotation applied), file size, bitrate, duration,
video and audio codec, frame rate and container format, plus folder and content type from the
upload, so that rules such as
"video bitrate (bps) is smaller than 800000 => Refuse" or "video duration (s) is larger than 60"
can refuse an upload before any expensive video task runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from processors.media.ffmpeg import PROBE_TIMEOUT_S, check_complete, check_limits, probe
from processors.registry import (
    InputSpec,
    ProcessorError,
    RuleProperty,
    TaskInput,
    register,
    result_field,
)

VERSION = "1.0"

#: Copied from the upload's properties when present.
OPTIONAL_FIELDS = ("folder", "content_type", "filename")


class ValidateVideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check_truncation: bool = Field(
        default=True,
        description=(
            "also demux the last seconds to detect a truncated file (~10 ms; MPEG-TS: decodes "
            "the last second too)"
        ),
    )
    timeout_s: float = Field(default=PROBE_TIMEOUT_S, gt=0, le=600, description="per ffprobe call")


RULE_PROPERTIES: dict[str, RuleProperty] = {
    "width": RuleProperty(
        "number",
        result_field("width"),
        aliases=("width", "video width", "image/video width", "frame width"),
    ),
    "height": RuleProperty(
        "number",
        result_field("height"),
        aliases=("height", "video height", "image/video height", "frame height"),
    ),
    "file_size": RuleProperty(
        "number",
        result_field("file_size"),
        aliases=("file size", "video file size", "filesize", "size"),
    ),
    "bitrate": RuleProperty(
        "number",
        result_field("bitrate"),
        aliases=("bitrate", "video bitrate", "bit rate"),
    ),
    "duration": RuleProperty(
        "number",
        result_field("duration"),
        aliases=("duration", "video duration", "length"),
    ),
    "folder": RuleProperty(
        "string",
        result_field("folder"),
        aliases=("folder", "folder path", "upload folder", "upload folder path"),
    ),
    "codec": RuleProperty(
        "string",
        result_field("codec"),
        aliases=("codec", "video codec"),
    ),
    "audio_codec": RuleProperty(
        "string",
        result_field("audio_codec"),
        aliases=("audio codec",),
    ),
    "fps": RuleProperty(
        "number",
        result_field("fps"),
        aliases=("fps", "frame rate", "video frame rate"),
    ),
    "format": RuleProperty(
        "string",
        result_field("format"),
        aliases=("format", "video format", "container"),
    ),
}


@register(
    "validate-video",
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=ValidateVideoParams,
    rule_properties=RULE_PROPERTIES,
)
def validate_video(inp: TaskInput, params: ValidateVideoParams) -> dict[str, Any]:
    """Report a video's size, bitrate, duration, codecs and frame rate for validation rules.

    Raises a permanent ``ProcessorError`` for an empty, truncated or corrupt file, a still image,
    an audio-only file or a zero-length video: no retry changes those. Very large resolutions
    are reported (rules decide), not refused.
    """
    if inp.path is None:
        raise ProcessorError("validate-video got no input file")
    info = probe(inp.path, params.timeout_s)
    huge = 1 << 62
    check_limits(info, max_side=huge, max_pixels=huge)
    if params.check_truncation:
        check_complete(info, params.timeout_s)
    result: dict[str, Any] = {
        "width": info.width,
        "height": info.height,
        "file_size": info.file_size,
        "bitrate": info.bitrate,
        "duration": round(info.duration, 3) if info.duration is not None else None,
        "codec": info.video_codec,
        "audio_codec": info.audio_codec,
        "has_audio": info.has_audio,
        "fps": round(info.fps, 3) if info.fps else None,
        "format": info.format,
        "rotation": info.rotation,
    }
    for name in OPTIONAL_FIELDS:
        if inp.properties.get(name) is not None:
            result[name] = inp.properties[name]
    return {k: v for k, v in result.items() if v is not None}
