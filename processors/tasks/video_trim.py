"""``trim-video``: keep one or several time intervals (concatenated in the order given).

``mode: exact`` (default) re-encodes (H.264 + AAC MP4), so cuts land on the requested frames:
one interval is an input-side seek (``-ss``/``-to``, frame-accurate when decoding); several are
one decode of the covered range through ``trim``/``atrim`` + the ``concat`` filter (the graph is
built with ffmpeg-python; an interval given twice goes through ``split``/``asplit``).

``mode: fast`` copies the streams without re-encoding (~0.02 s): each part then starts at the
keyframe at or before its requested start, so it may begin earlier (reported per interval as
``actual_start``). Several parts are cut to a temporary folder and joined by the concat demuxer.

Times: numbers in ``unit`` (``s`` default, or ``ms``), or strings ``"1500ms"``, ``"1.5s"``,
``"01:02.5"``, ``"00:01:02.5"``; ``end: null`` means the end of the video.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from processors.media.ffmpeg import (
    Bitrate,
    Command,
    Deadline,
    Options,
    Stream,
    VideoInfo,
    VideoParams,
    audio_encoder_options,
    check_output,
    child_env,
    clean_on_error,
    distinct,
    ffprobe_binary,
    fit_size,
    graph_concat,
    graph_input,
    graph_output,
    inspect_video,
    media_input,
    output_summary,
    require_workdir,
    run_ffmpeg,
    scale_filters,
    scaled_progress,
    video_encoder_options,
)
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION = "1.0"
MAX_INTERVALS = 100

TimeValue = float | int | str
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")
_WITH_UNIT = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s)$")


def parse_time(value: TimeValue, unit: str) -> float:
    """Seconds from a number in ``unit`` or a string with a unit / a clock time."""
    if isinstance(value, bool):
        raise ValueError("a time must be a number or a string like '1500ms'")
    if isinstance(value, int | float):
        seconds = float(value) / (1000.0 if unit == "ms" else 1.0)
    else:
        text = value.strip().lower()
        m = _WITH_UNIT.match(text)
        c = _CLOCK.match(text)
        if m:
            seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
        elif c:
            seconds = int(c.group(1) or 0) * 3600 + int(c.group(2)) * 60 + float(c.group(3))
        else:
            try:
                seconds = float(text) / (1000.0 if unit == "ms" else 1.0)
            except ValueError:
                raise ValueError(
                    f"bad time {value!r}: use seconds, '1500ms', '1.5s' or 'HH:MM:SS.f'"
                ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"time {value!r} must be a finite number >= 0")
    return seconds


class TrimVideoParams(VideoParams):
    intervals: list[tuple[TimeValue, TimeValue | None]] = Field(
        min_length=1,
        max_length=MAX_INTERVALS,
        description="[[start, end], ...] kept, joined in this order; end null = to the end",
    )
    unit: Literal["s", "ms"] = "s"
    mode: Literal["exact", "fast"] = Field(
        default="exact",
        description="exact: re-encode, frame-accurate; fast: stream copy, cuts snap "
        "back to keyframes",
    )
    crf: int | None = Field(default=None, ge=0, le=51, description="exact mode: H.264 quality (20)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = (
        "veryfast"
    )
    audio_bitrate: Bitrate = 128_000

    @field_validator("intervals", mode="before")
    @classmethod
    def _one_interval(cls, v: Any) -> Any:
        # [start, end] alone is one interval
        if isinstance(v, list | tuple) and len(v) == 2 and not isinstance(v[0], list | tuple):
            return [v]
        return v


def _resolve(
    params: TrimVideoParams, duration: float, fps: float | None
) -> list[tuple[float, float]]:
    tol = max(1.0 / (fps or 25.0), 0.001)
    out: list[tuple[float, float]] = []
    for i, (raw_start, raw_end) in enumerate(params.intervals):
        try:
            start = parse_time(raw_start, params.unit)
            end = duration if raw_end is None else parse_time(raw_end, params.unit)
        except ValueError as exc:
            raise ProcessorError(f"interval {i}: {exc}") from None
        where = f"interval {i} [{start:g}s, {end:g}s]"
        if start >= duration:
            raise ProcessorError(f"{where} starts after the end of the video ({duration:.3f}s)")
        if end <= start:
            raise ProcessorError(f"{where}: the end must come after the start")
        if end > duration + tol:
            raise ProcessorError(f"{where} ends after the end of the video ({duration:.3f}s)")
        out.append((start, min(end, duration)))
    return out


def _keyframes_before(path: Path, starts: list[float], timeout: float) -> list[float]:
    """For each start, the keyframe a stream-copy cut really starts at (demux only).

    Hand-built: ffprobe with ``-read_intervals`` and a timeout, nothing ffmpeg-python builds."""
    found: list[float] = []
    for start in starts:
        cmd = [
            ffprobe_binary(),
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-read_intervals",
            f"{start:.6f}%+#1",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
            f"file:{path}",
        ]
        try:
            out = subprocess.run(
                cmd, capture_output=True, timeout=timeout, check=False, env=child_env()
            )
        except subprocess.TimeoutExpired:
            found.append(start)
            continue
        times = []
        for line in out.stdout.decode(errors="replace").splitlines():
            t, _, flags = line.partition(",")
            try:
                if "K" in flags:
                    times.append(float(t))
            except ValueError:
                continue
        found.append(min(times) if times and min(times) <= start + 1e-3 else start)
    return found


def _fast_container(info: VideoInfo) -> tuple[str, str, str]:
    """(muxer, extension, mimetype) able to hold the source's streams as they are."""
    if info.format_name.startswith("mov"):
        return "mp4", "mp4", "video/mp4"
    if info.video_codec in ("vp8", "vp9", "av1") and info.audio_codec in (None, "opus", "vorbis"):
        return "webm", "webm", "video/webm"
    return "matroska", "mkv", "video/x-matroska"


@register(
    "trim-video",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=TrimVideoParams,
)
def trim_video(inp: TaskInput, params: TrimVideoParams) -> dict[str, Any]:
    """Cut one or several intervals out of a video (exact re-encode or fast keyframe copy)."""
    deadline = Deadline(params.timeout_s, inp.deadline)
    workdir = require_workdir(inp.workdir)
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    intervals = _resolve(params, info.duration, info.fps)
    total = sum(b - a for a, b in intervals)
    with clean_on_error(workdir):
        if params.mode == "exact":
            result = _exact(inp, params, info, intervals, workdir, deadline)
        else:
            result = _fast(inp, params, info, intervals, workdir, deadline)
    result.update(mode=params.mode, duration=round(total, 6))
    return result


def _exact(
    inp: TaskInput,
    params: TrimVideoParams,
    info: VideoInfo,
    intervals: list[tuple[float, float]],
    workdir: Path,
    deadline: Deadline,
) -> dict[str, Any]:
    assert inp.path is not None
    lo = min(a for a, _ in intervals)
    hi = max(b for _, b in intervals)
    audio = info.has_audio
    vf = scale_filters(info, fit_size(info))
    src = media_input(inp.path, params, start=lo, end=hi)
    if len(intervals) == 1:
        streams = [src["v:0"].chain(vf), *([src["a:0"]] if audio else [])]
    else:
        cuts = [{"start": f"{a - lo:.6f}", "end": f"{b - lo:.6f}"} for a, b in intervals]
        videos = distinct(
            [src["v:0"].filter("trim", **c).filter("setpts", "PTS-STARTPTS") for c in cuts]
        )
        segments: list[list[Stream]] = [[v] for v in videos]
        if audio:
            audios = distinct(
                [src["a:0"].filter("atrim", **c).filter("asetpts", "PTS-STARTPTS") for c in cuts],
                audio=True,
            )
            segments = [[v, a] for v, a in zip(videos, audios, strict=True)]
        joined = graph_concat(segments, audio=audio)
        streams = [joined[0].chain(vf), *joined[1:]]
    options = video_encoder_options(
        "h264",
        crf=params.crf if params.crf is not None else 20,
        preset=params.preset,
        container="mp4",
    )
    options |= audio_encoder_options("aac", params.audio_bitrate) if audio else {"an": None}
    options |= {"sn": None, "dn": None, "movflags": "+faststart", "f": "mp4"}
    out_name = "trimmed.mp4"
    command = graph_output(streams, workdir / out_name, options)
    total = sum(b - a for a, b in intervals)
    run = run_ffmpeg(
        command,
        duration_s=total,
        progress=inp.progress,
        timeout_s=deadline.remaining(),
        deadline=deadline,
    )
    out = check_output(workdir / out_name, total, info, stderr_tail=run.stderr_tail)
    return {
        "output": output_summary(out, out_name, "video/mp4"),
        "intervals": [{"start": round(a, 6), "end": round(b, 6)} for a, b in intervals],
        "elapsed_s": round(run.elapsed_s, 3),
    }


def _fast(
    inp: TaskInput,
    params: TrimVideoParams,
    info: VideoInfo,
    intervals: list[tuple[float, float]],
    workdir: Path,
    deadline: Deadline,
) -> dict[str, Any]:
    assert inp.path is not None
    source = inp.path
    muxer, ext, mimetype = _fast_container(info)
    out_name = f"trimmed.{ext}"
    out_path = workdir / out_name
    copy: Options = {"c": "copy", "avoid_negative_ts": "make_zero", "sn": None, "dn": None}
    if muxer == "mp4":
        copy["movflags"] = "+faststart"
    copy["f"] = muxer

    def remux(src: Stream, target: Path) -> Command:
        streams = [src["v:0"], *([src["a:0"]] if info.has_audio else [])]
        return graph_output(streams, target, copy)

    def cut(a: float, b: float, target: Path) -> Command:
        return remux(media_input(source, params, start=a, end=b), target)

    actual = _keyframes_before(source, [a for a, _ in intervals], min(20.0, deadline.remaining()))
    elapsed = 0.0
    total = sum(b - a for a, b in intervals)
    n = len(intervals)
    if n == 1:
        a, b = intervals[0]
        run = run_ffmpeg(
            cut(a, b, out_path),
            duration_s=total,
            progress=inp.progress,
            timeout_s=deadline.remaining(),
            deadline=deadline,
        )
        elapsed = run.elapsed_s
    else:
        with tempfile.TemporaryDirectory(prefix="darkroom-trim-") as tmp:
            listing: list[str] = []
            for i, (a, b) in enumerate(intervals):
                part = Path(tmp) / f"part{i:03d}.{ext}"
                run = run_ffmpeg(
                    cut(a, b, part),
                    duration_s=b - a,
                    progress=scaled_progress(inp.progress, 90 * i / n, 90 * (i + 1) / n),
                    timeout_s=deadline.remaining(),
                    deadline=deadline,
                )
                elapsed += run.elapsed_s
                listing.append(f"file '{part.as_posix()}'")
            concat_list = Path(tmp) / "parts.txt"
            concat_list.write_text("\n".join(listing) + "\n")
            # our own list of our own parts: the concat demuxer, local files only
            joined = graph_input(
                str(concat_list), {"f": "concat", "safe": "0", "protocol_whitelist": "file"}
            )
            run = run_ffmpeg(
                remux(joined, out_path),
                duration_s=None,
                progress=scaled_progress(inp.progress, 90, 100),
                timeout_s=deadline.remaining(),
                deadline=deadline,
            )
            elapsed += run.elapsed_s
    out = check_output(out_path, total, info, stderr_tail=run.stderr_tail)
    return {
        "output": output_summary(out, out_name, mimetype),
        "intervals": [
            {"start": round(a, 6), "end": round(b, 6), "actual_start": round(k, 6)}
            for (a, b), k in zip(intervals, actual, strict=True)
        ],
        "note": "fast mode copies streams: each part starts at the keyframe at or before its "
        "start (actual_start), so it can be longer than asked",
        "elapsed_s": round(elapsed, 3),
    }
