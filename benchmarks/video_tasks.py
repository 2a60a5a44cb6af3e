"""Wall time of each video task on generated clips (testsrc2 + sine, H.264/AAC, GOP 1 s).

    uv run python benchmarks/video_tasks.py [--reps 3] [--size 640x360] [--seconds 10]

Each run is the processor's whole job as the agent runs it: probe + truncation check + ffmpeg +
output probe. Medians of --reps runs; the first (cold) run is dropped. The NSFW model is loaded
before timing video-sfw.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processors import registry  # noqa: E402
from processors.media.ffmpeg import ffmpeg_binary  # noqa: E402
from processors.registry import TaskInput  # noqa: E402

MODULES = [
    "video_validate",
    "video_compress",
    "video_convert",
    "video_trim",
    "video_transcode",
    "video_sfw",
]

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("validate-video", "probe + tail check", {}),
    ("compress-video", "240p crf 28 veryfast", {"max_height": 240, "crf": 28}),
    ("compress-video", "800k, same size", {"bitrate": "800k"}),
    ("convert-video", "webm VP9 realtime + Opus", {"format": "webm"}),
    ("convert-video", "webm VP9 good cpu-used 4", {"format": "webm", "speed": "balanced"}),
    ("convert-video", "mov H.264 + AAC", {"format": "mov"}),
    (
        "convert-video",
        "mkv remux (copy)",
        {"format": "mkv", "video_codec": "copy", "audio_codec": "copy"},
    ),
    ("trim-video", "exact, 1 interval", {"intervals": [2, 6]}),
    ("trim-video", "exact, 3 intervals", {"intervals": [[1, 2], [4, 5.5], [7, 9]]}),
    ("trim-video", "fast copy, 1 interval", {"intervals": [2, 6], "mode": "fast"}),
    (
        "trim-video",
        "fast copy, 3 intervals",
        {"intervals": [[1, 2], [4, 5.5], [7, 9]], "mode": "fast"},
    ),
    (
        "transcode-video",
        "HLS 360p+240p",
        {"renditions": [{"height": 360, "bitrate": "800k"}, {"height": 240, "bitrate": "400k"}]},
    ),
    (
        "transcode-video",
        "HLS 3 rungs 360/240/144",
        {
            "renditions": [
                {"height": 360, "bitrate": "800k"},
                {"height": 240, "bitrate": "400k"},
                {"height": 144, "bitrate": "200k"},
            ]
        },
    ),
    (
        "transcode-video",
        "DASH+HLS 360p+240p",
        {
            "formats": ["dash", "hls"],
            "renditions": [{"height": 360, "bitrate": "800k"}, {"height": 240, "bitrate": "400k"}],
        },
    ),
    ("video-sfw", "1 fps", {"details": True}),
    ("video-sfw", "2 fps", {"fps": 2, "details": True}),
]


def make_clip(path: Path, size: str, seconds: float) -> None:
    subprocess.run(
        [
            ffmpeg_binary(),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
        timeout=120,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    for mod in MODULES:
        importlib.import_module(f"processors.{mod}")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.size, args.seconds)
        try:
            from PIL import Image

            from processors.tasks.nsfw import score_images

            score_images([Image.new("RGB", (64, 64))])  # load the model once
        except Exception as exc:  # noqa: BLE001 - report and go on without video-sfw
            print(f"(video-sfw skipped: {exc})")
        print(
            f"clip: {args.size}, {args.seconds:g} s, {clip.stat().st_size} B, "
            f"ffmpeg {ffmpeg_binary()}"
        )
        print(f"{'task':16} {'case':28} {'median s':>9} {'min s':>7}")
        for task, label, params in CASES:
            proc = registry.get(task)
            parsed = proc.parse_params(params)
            times: list[float] = []
            for _ in range(args.reps + 1):
                work = Path(tmp) / "work"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                started = time.perf_counter()
                try:
                    proc.run(TaskInput(properties={}, path=clip, workdir=work), parsed)
                except Exception as exc:  # noqa: BLE001
                    print(f"{task:16} {label:28} failed: {exc}")
                    break
                times.append(time.perf_counter() - started)
            if len(times) > 1:
                warm = times[1:]
                print(f"{task:16} {label:28} {statistics.median(warm):9.3f} {min(warm):7.3f}")


if __name__ == "__main__":
    main()
