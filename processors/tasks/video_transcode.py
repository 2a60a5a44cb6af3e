"""``transcode-video``: adaptive streaming (HLS and/or DASH) with a ladder of renditions.

One ffmpeg command (built with ffmpeg-python, see :func:`ladder_command`) decodes the source once
and feeds every rendition through a ``split`` filter (``[0:v:0]split=N[..]``, then ``scale=W:H``
and ``setsar=1`` per rendition), encoding H.264 + AAC with keyframes forced on segment boundaries
so that all renditions switch cleanly:

* ``formats: [hls]`` -> ``hls/master.m3u8`` + ``hls/<360p>/index.m3u8`` and segments (fMP4 by
  default, MPEG-TS on request), through the hls muxer's ``-var_stream_map``;
* ``formats: [dash]`` -> ``dash/manifest.mpd`` (one video adaptation set, one audio set);
* both -> ``stream/manifest.mpd`` and ``stream/master.m3u8`` sharing the same fMP4 (CMAF)
  segments, still one encode (the dash muxer's ``hls_playlist``).

Rungs taller than the source are dropped (never upscaled); the result says which and why. DASH
renditions keep the source's display aspect ratio exactly (``setdar``), as the dash muxer
requires one aspect ratio per adaptation set.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.media.ffmpeg import (
    Bitrate,
    Command,
    Deadline,
    Filter,
    Options,
    VideoInfo,
    VideoParams,
    clean_on_error,
    even,
    graph_output,
    inspect_video,
    media_input,
    muxers,
    require_encoder,
    require_workdir,
    run_ffmpeg,
    width_for_height,
)
from processors.registry import InputSpec, ProcessorError, TaskInput, register

VERSION = "1.0"


class Rendition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    height: int = Field(ge=32, le=8192)
    bitrate: Bitrate
    audio_bitrate: Bitrate | None = None


DEFAULT_LADDER = [
    Rendition(height=1080, bitrate=5_000_000),
    Rendition(height=720, bitrate=2_800_000),
    Rendition(height=480, bitrate=1_400_000),
    Rendition(height=360, bitrate=800_000),
]


class TranscodeVideoParams(VideoParams):
    renditions: list[Rendition] = Field(
        default_factory=lambda: list(DEFAULT_LADDER),
        min_length=1,
        max_length=10,
        description="[{height, bitrate[, audio_bitrate]}], tallest first or any order",
    )
    formats: list[Literal["hls", "dash"]] = Field(default=["hls"], min_length=1, max_length=2)
    segment_duration: float = Field(default=4.0, ge=1.0, le=30.0)
    hls_segment_type: Literal["fmp4", "mpegts"] = "fmp4"
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = (
        "veryfast"
    )
    audio_bitrate: Bitrate = 128_000

    @field_validator("renditions")
    @classmethod
    def _unique_heights(cls, v: list[Rendition]) -> list[Rendition]:
        heights = [even(r.height) for r in v]
        if len(set(heights)) != len(heights):
            raise ValueError("two renditions have the same height")
        return v

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=v.index)


def _ladder(
    info: VideoInfo, wanted: list[Rendition]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assert info.height
    src_h = info.height
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for r in sorted(wanted, key=lambda r: -r.height):
        h = even(r.height)
        if h > src_h:
            dropped.append(
                {
                    "height": r.height,
                    "bitrate": r.bitrate,
                    "reason": f"taller than the source ({src_h} px): no upscaling",
                }
            )
            continue
        kept.append({"height": h, "bitrate": r.bitrate, "audio_bitrate": r.audio_bitrate})
    if not kept:
        # every rung is taller than the source: one rendition at the source size instead
        lowest = min(wanted, key=lambda r: r.height)
        h = even(src_h) if even(src_h) <= src_h else src_h - 1
        kept.append(
            {
                "height": h,
                "bitrate": lowest.bitrate,
                "audio_bitrate": lowest.audio_bitrate,
                "note": "every requested rung is taller than the source: "
                "encoded at the source height",
            }
        )
    for rung in kept:
        rung["width"] = width_for_height(info, rung["height"])
        rung["name"] = f"{rung['height']}p"
    return kept, dropped


def _display_aspect(info: VideoInfo) -> Fraction:
    return info.display_aspect.limit_denominator(10_000)


def ladder_command(
    path: Path,
    params: TranscodeVideoParams,
    info: VideoInfo,
    ladder: list[dict[str, Any]],
    out_dir: Path,
) -> Command:
    """The one ffmpeg command of a transcode, built with ffmpeg-python: ``split`` the decoded
    video into one ``scale`` (+ ``setsar=1``, or ``setdar`` for DASH) per rung, H.264 with
    keyframes on segment boundaries, AAC (one copy per HLS variant, one set for DASH), and the
    hls or dash muxer writing under ``out_dir``."""
    use_dash = "dash" in params.formats
    both = use_dash and "hls" in params.formats
    audio = info.has_audio
    seg = params.segment_duration
    dar = _display_aspect(info)
    src = media_input(path, params)
    aspect = (
        Filter("setdar", (f"{dar.numerator}/{dar.denominator}",))
        if use_dash
        else Filter("setsar", (1,))
    )
    videos = [
        branch.chain([Filter("scale", (r["width"], r["height"])), aspect])
        for branch, r in zip(src["v:0"].split(len(ladder)), ladder, strict=True)
    ]
    audio_maps = (1 if use_dash else len(ladder)) if audio else 0
    gop = str(max(1, round((info.fps or 25.0) * seg)))
    opts: Options = {
        "c:v": "libx264",
        "preset": params.preset,
        "pix_fmt": "yuv420p",
        "g": gop,
        "keyint_min": gop,
        "sc_threshold": "0",
        "force_key_frames": f"expr:gte(t,n_forced*{seg:g})",
    }
    for i, r in enumerate(ladder):
        b = int(r["bitrate"])
        opts |= {
            f"b:v:{i}": str(b),
            f"maxrate:v:{i}": str(int(b * 1.2)),
            f"bufsize:v:{i}": str(b * 2),
        }
    if audio:
        opts |= {"c:a": "aac", "ac": "2"}
        for j in range(audio_maps):
            opts[f"b:a:{j}"] = str(int(ladder[j].get("audio_bitrate") or params.audio_bitrate))
    opts |= {"sn": None, "dn": None}
    streams = [*videos, *[src["a:0"]] * audio_maps]
    if use_dash:
        opts |= {
            "f": "dash",
            "seg_duration": f"{seg:g}",
            "use_template": "1",
            "use_timeline": "1",
            "adaptation_sets": "id=0,streams=v" + (" id=1,streams=a" if audio else ""),
            "init_seg_name": "init-$RepresentationID$.$ext$",
            "media_seg_name": "chunk-$RepresentationID$-$Number%05d$.$ext$",
        }
        if both:
            opts |= {"hls_playlist": "1", "hls_master_name": "master.m3u8"}
        return graph_output(streams, out_dir / "manifest.mpd", opts)
    ext = "m4s" if params.hls_segment_type == "fmp4" else "ts"
    opts |= {
        "f": "hls",
        "hls_time": f"{seg:g}",
        "hls_playlist_type": "vod",
        "hls_segment_type": params.hls_segment_type,
        "hls_segment_filename": str(out_dir / "%v" / f"seg_%05d.{ext}"),
        "master_pl_name": "master.m3u8",
        "var_stream_map": " ".join(
            f"v:{i}" + (f",a:{i}" if audio else "") + f",name:{r['name']}"
            for i, r in enumerate(ladder)
        ),
    }
    if params.hls_segment_type == "fmp4":
        opts["hls_fmp4_init_filename"] = "init.mp4"
    return graph_output(streams, out_dir / "%v" / "index.m3u8", opts)


@register(
    "transcode-video",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("video",),
    input=InputSpec(kind="file"),
    params=TranscodeVideoParams,
)
def transcode_video(inp: TaskInput, params: TranscodeVideoParams) -> dict[str, Any]:
    """Transcode to HLS and/or DASH with several renditions in one decode pass."""
    deadline = Deadline(params.timeout_s, inp.deadline)
    workdir = require_workdir(inp.workdir)
    for fmt in params.formats:
        if fmt not in muxers():
            raise ProcessorError(f"this ffmpeg has no {fmt} muxer")
    require_encoder("libx264")
    require_encoder("aac")
    info = inspect_video(inp.path, params, deadline)
    assert inp.path is not None and info.duration is not None
    ladder, dropped = _ladder(info, params.renditions)
    use_dash = "dash" in params.formats
    both = use_dash and "hls" in params.formats
    folder = "stream" if both else ("dash" if use_dash else "hls")
    out_dir = workdir / folder
    audio = info.has_audio
    seg = params.segment_duration
    command = ladder_command(inp.path, params, info, ladder, out_dir)
    result: dict[str, Any] = {}
    if use_dash:
        result["dash"] = {"manifest": f"{folder}/manifest.mpd"}
        if both:
            result["hls"] = {"master": f"{folder}/master.m3u8"}
    else:
        result["hls"] = {
            "master": f"{folder}/master.m3u8",
            "playlists": [f"{folder}/{r['name']}/index.m3u8" for r in ladder],
        }
    with clean_on_error(workdir):
        out_dir.mkdir(parents=True, exist_ok=True)
        run = run_ffmpeg(
            command,
            duration_s=info.duration,
            progress=inp.progress,
            timeout_s=deadline.remaining(),
            deadline=deadline,
        )
        for rel in [v for d in result.values() for k, v in d.items() if k != "playlists"]:
            if not (workdir / rel).is_file():
                raise ProcessorError(f"ffmpeg wrote no {rel}")
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    renditions = []
    for r in ladder:
        item = {
            "name": r["name"],
            "width": r["width"],
            "height": r["height"],
            "resolution": f"{r['width']}x{r['height']}",
            "bitrate": r["bitrate"],
        }
        if audio:
            item["audio_bitrate"] = int(r.get("audio_bitrate") or params.audio_bitrate)
        if "note" in r:
            item["note"] = r["note"]
        renditions.append(item)
    result.update(
        renditions=renditions,
        dropped=dropped,
        segment_duration=seg,
        audio=audio,
        duration=info.duration,
        files=len(files),
        size=sum(p.stat().st_size for p in files),
        elapsed_s=round(run.elapsed_s, 3),
    )
    if use_dash:
        dar = _display_aspect(info)
        result["aspect_ratio"] = f"{dar.numerator}:{dar.denominator}"
    return result
