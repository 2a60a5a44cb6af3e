"""Head of line, on the real broker: small images uploaded right behind a long task (an HLS
transcode) are not held up by it — it runs on the long lane, they on the cpu lane — so every
image completes while the transcode is still running, and none times out.

An ordering assertion, not a timing one. The cpu lane has one thread here: with one shared pool
(before the lanes) the transcode held it and every image waited for the transcode's end.
(``benchmarks/load.py --only hol`` measures the same with 100 images and a 60 s clip.)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import ROOT, start_worker, stop_worker
from tests.integration.cli.test_up_and_probe import ffmpeg_binary
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "holtest"
ENV = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-holtest",
       "DARKROOM_PROCESSOR_THREADS": "1", "DARKROOM_LONG_TASK_CONCURRENCY": "1",
       "DARKROOM_TASK_TIMEOUT_S": "120"}


def clip(path: Path, seconds: int) -> Path:
    import subprocess

    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=1280x720:rate=25:duration={seconds}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True, timeout=120)
    return path


def send(bootstrap: str, ev: UploadEvent) -> None:
    p = OutputProducer(bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()


@pytest.mark.slow
def test_images_behind_a_transcode_finish_while_it_runs(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    w = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("hol"),
                     config=ROOT / "tests/fixtures/pp_head_of_line.yaml", extra_env=ENV)
    try:
        video = clip(w.inbox / "long.mp4", 20)
        vid = UploadEvent(asset_id=f"hol-video-{uuid.uuid4().hex[:6]}",
                          uri=LocalStorage.uri_for(video), filename=video.name,
                          content_type="video/mp4", uploaded_at=now_ms(), postprocess=["hls"])
        send(kafka_bootstrap, vid)
        store = w.store()
        deadline = time.monotonic() + 120
        while True:  # the transcode is running (it reported progress)
            a = store.get_asset(vid.asset_id)
            hls = a.results.get("hls") if a is not None else None
            if hls is not None and hls["status"] == "pending" and hls["progress"] is not None:
                break
            assert hls is None or hls["status"] == "pending", hls
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.1)
        images = []
        for i in range(20):
            path = photo(w.inbox / f"img{i}.jpg", (320, 240), seed=i)
            ev = UploadEvent(asset_id=f"hol-img{i}-{uuid.uuid4().hex[:6]}",
                             uri=LocalStorage.uri_for(path), filename=path.name,
                             content_type="image/jpeg", uploaded_at=now_ms())
            send(kafka_bootstrap, ev)
            images.append(ev.asset_id)
        done = w.wait_assets(images, timeout=120)
        # every image is complete, and the transcode is still running
        transcode = store.get_asset(vid.asset_id)
        assert transcode is not None and transcode.results["hls"]["status"] == "pending", \
            transcode.results["hls"] if transcode else None
        for asset in done.values():
            assert asset.status == "complete", asset.results
            assert set(asset.results) == {"validate-image", "blurhash", "dominant-colors"}
            assert not any(r.get("error_kind") == "timeout" for r in asset.results.values())
        # and the transcode itself completes
        final = w.wait_assets([vid.asset_id], timeout=240)[vid.asset_id]
        assert final.results["hls"]["status"] == "ok", final.results["hls"]
    finally:
        stop_worker(w)
