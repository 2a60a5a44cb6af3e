"""The runtime under load: scaling out, and head of line behind a long task.

    uv run python benchmarks/load.py [--only scale|hol] [--images 200] [--hol-images 100]
                                     [--clip-s 60] [--threads 1]

(a) **scale**: assets/s on CPU-bound tasks (count-faces + nsfw on photos made from
scikit-image's pictures) for 1 and for 2 worker processes on the same embedded broker and one
PostgreSQL database (``DARKROOM_BENCH_POSTGRES_URL``, default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres; the benchmark creates a database of its
own and drops it), sharing one data dir (object folder). Each worker runs ``--threads`` cpu-lane
threads (1: one core's worth each, so 2 workers on 2 cores can double). Prints both rates and
the ratio (goal >= 1.8x on 2 cores).

(b) **hol** (head of line): ``--hol-images`` small JPEGs (validate-image, blurhash,
dominant-colors) uploaded in one burst, on one worker with the default lanes; once alone, once
right behind an HLS transcode (720p + 360p) of a ``--clip-s`` s 720p testsrc clip that is
running. Prints the p95 completion latency of the images (upload -> asset complete) in both, the
ratio (goal <= 1.5x), that no image task timed out, and whether the images finished while the
transcode still ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.kafka.broker import EmbeddedBroker  # noqa: E402
from agents.kafka.producer import OutputProducer  # noqa: E402
from agents.kafka.topics import all_topics, ensure_topics  # noqa: E402
from agents.settings import Settings  # noqa: E402
from processors.registry import load_all  # noqa: E402
from schemas.records import UploadEvent, now_ms  # noqa: E402
from sinks.objects.local import LocalStorage  # noqa: E402
from sinks.store.metadata import MetadataStore  # noqa: E402

PG_URL = os.environ.get("DARKROOM_BENCH_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

SCALE_CONFIG = """
postprocesses:
  - {name: count-faces, task: count-faces, trigger: "format contains JPEG"}
  - {name: nsfw, task: nsfw, trigger: "format contains JPEG"}
"""

HOL_CONFIG = """
postprocesses:
  - {name: validate-image, task: validate-image, mode: sync, trigger: "format contains JPEG"}
  - {name: blurhash, task: blurhash, trigger: "format contains JPEG"}
  - {name: dominant-colors, task: dominant-colors, trigger: "format contains JPEG"}
  - name: hls
    task: transcode-video
    enabled: false
    params:
      formats: [hls]
      renditions: [{height: 720, bitrate: 2500k}, {height: 360, bitrate: 800k}]
"""


# ------------------------------------------------------------------------------ the inputs
def photos(folder: Path, n: int, side: int = 640, seed: int = 0) -> list[Path]:
    """``n`` distinct JPEGs: random crops, flips and scales of scikit-image's pictures."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
               data.immunohistochemistry(), np.stack([data.camera()] * 3, axis=-1)]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw]))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        path = folder / f"p{seed}-{i:04d}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def small_jpegs(folder: Path, n: int, seed: int) -> list[Path]:
    return photos(folder, n, side=320, seed=seed)


def testsrc_clip(path: Path, seconds: int) -> Path:
    from processors.media.ffmpeg import ffmpeg_binary

    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=1280x720:rate=25:duration={seconds}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True, timeout=600)
    return path


# ------------------------------------------------------------------------------ a deployment
class Deployment:
    """``workers`` worker processes on one prefix, one database, one data dir."""

    def __init__(self, bootstrap: str, base: Path, config: str, workers: int,
                 database_url: str | None, partitions: int, extra: dict[str, str]) -> None:
        self.bootstrap, self.base = bootstrap, base
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.data = base / "data"
        self.inbox = base / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        (base / "pp.yaml").write_text(config)
        self.database_url = database_url or f"sqlite:///{(self.data / 'darkroom.db').resolve()}"
        self.env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": bootstrap,
                    "DARKROOM_DATA_DIR": str(self.data),
                    "DARKROOM_DATABASE_URL": self.database_url,
                    "DARKROOM_POSTPROCESS_CONFIG": str(base / "pp.yaml"),
                    "DARKROOM_FILE_ROOTS": json.dumps([str(self.inbox)]),
                    "DARKROOM_TOPIC_PREFIX": self.prefix, "DARKROOM_WORKER_ID": self.prefix,
                    "DARKROOM_PARTITIONS": str(partitions), "DARKROOM_SESSION_TIMEOUT_S": "6",
                    "DARKROOM_LOG_LEVEL": "info", **extra}
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=self.prefix)
        ensure_topics(bootstrap, all_topics(settings, load_all()), partitions, 1)
        self.logs = [base / f"worker{i}.log" for i in range(workers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for log in self.logs:  # one at a time: each joins the group before the next
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "agents.cli", "worker"], env=self.env, cwd=ROOT,
                    stdout=out, stderr=subprocess.STDOUT))
            self.wait_log(log, "joined deployment")
        self.store = MetadataStore(self.database_url)
        self.producer = OutputProducer(bootstrap)

    def wait_log(self, log: Path, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in (log.read_text(errors="replace") if log.exists() else ""):
            if any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"a worker exited; see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{text!r} not in {log} after {timeout}s")
            time.sleep(0.2)

    def settle(self) -> None:
        """Every worker has its partitions (the last one's join ended the last rebalance)."""
        self.wait_log(self.logs[-1], "Worker ready")
        time.sleep(3)

    def upload(self, paths: list[Path], postprocess: list[str] | None = None,
               content_type: str = "image/jpeg") -> dict[str, float]:
        """Produce one upload per file (a burst); asset id -> wall time it was sent."""
        sent = {}
        for path in paths:
            ev = UploadEvent(asset_id=f"{path.stem}-{uuid.uuid4().hex[:8]}",
                             uri=LocalStorage.uri_for(path), filename=path.name,
                             content_type=content_type, uploaded_at=now_ms(),
                             postprocess=postprocess or [])
            self.producer.send(self.env["DARKROOM_TOPIC_PREFIX"] + ".uploads", ev.asset_id,
                               ev.to_bytes())
            sent[ev.asset_id] = time.time()
        self.producer.flush_sync()
        return sent

    def wait(self, ids: list[str], timeout: float = 900, poll: float = 0.05
             ) -> tuple[dict[str, float], dict[str, Any]]:
        """Asset id -> wall time it was first seen final; and the final assets."""
        seen: dict[str, float] = {}
        assets: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(ids) - len(seen)} assets not done after {timeout}s")
            now = time.time()
            for aid, a in self.store.get_assets([i for i in ids if i not in seen]).items():
                if a.status != "pending":
                    seen[aid], assets[aid] = now, a
            time.sleep(poll)
        return seen, assets

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.store.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------ (a) scale
def scale(bootstrap: str, tmp: Path, images: int, threads: int) -> dict[str, Any]:
    import sqlalchemy as sa

    name = f"darkroom_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    rates: dict[int, float] = {}
    try:
        for workers in (1, 2):
            base = tmp / f"scale{workers}"
            dep = Deployment(bootstrap, base, SCALE_CONFIG, workers, url, partitions=4,
                             extra={"DARKROOM_PROCESSOR_THREADS": str(threads)})
            try:
                dep.settle()
                warm = photos(dep.inbox / "warm", 8 * workers, seed=99)
                dep.wait(list(dep.upload(warm)))  # models loaded in every worker
                files = photos(dep.inbox / "load", images, seed=workers)
                t0 = time.time()
                done, assets = dep.wait(list(dep.upload(files)))
                elapsed = max(done.values()) - t0
                bad = [a.asset_id for a in assets.values() if a.status != "complete"]
                if bad:
                    raise SystemExit(f"{len(bad)} assets not complete, e.g. {bad[0]}")
                rates[workers] = images / elapsed
                per_task = {name: statistics.mean(float(a.results[name]["duration_ms"] or 0)
                                                  for a in assets.values())
                            for name in ("count-faces", "nsfw")}
                print(f"  {workers} worker(s) x {threads} cpu thread(s): {images} assets in "
                      f"{elapsed:.1f} s = {rates[workers]:.2f} assets/s (task time per asset: "
                      + ", ".join(f"{k} {v:.0f} ms" for k, v in per_task.items()) + ")",
                      flush=True)
            finally:
                dep.close()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
    ratio = rates[2] / rates[1]
    print(f"scale: 1 worker {rates[1]:.2f} assets/s, 2 workers {rates[2]:.2f} assets/s -> "
          f"{ratio:.2f}x (goal >= 1.8x on 2 cores; {os.cpu_count()} cores here)", flush=True)
    return {"images": images, "threads_per_worker": threads, "rate_1": round(rates[1], 3),
            "rate_2": round(rates[2], 3), "ratio": round(ratio, 3)}


# ------------------------------------------------------------------------------ (b) hol
def head_of_line(bootstrap: str, tmp: Path, images: int, clip_s: int,
                 extra: dict[str, str]) -> dict[str, Any]:
    dep = Deployment(bootstrap, tmp / "hol", HOL_CONFIG, 1, None, partitions=3, extra=extra)
    try:
        clip = testsrc_clip(dep.inbox / "clip.mp4", clip_s)
        dep.settle()
        dep.wait(list(dep.upload(small_jpegs(dep.inbox / "warm", 10, seed=98))))

        def burst(seed: int) -> tuple[list[float], dict[str, Any]]:
            sent = dep.upload(small_jpegs(dep.inbox / f"burst{seed}", images, seed=seed))
            done, assets = dep.wait(list(sent))
            return [done[a] - sent[a] for a in sent], assets

        alone, _ = burst(1)
        (video,) = dep.upload([clip], postprocess=["hls"], content_type="video/mp4")
        t_video = time.time()
        while True:  # the transcode runs (it reported progress)
            a = dep.store.get_asset(video)
            hls = a.results.get("hls") if a is not None else None
            if hls is not None and hls["status"] == "pending" and hls["progress"] is not None:
                break
            if hls is not None and hls["status"] != "pending":
                raise SystemExit(f"the transcode ended before the burst: {hls}")
            time.sleep(0.05)
        behind, assets = burst(2)
        still_running = dep.store.get_asset(video).results["hls"]["status"] == "pending"  # type: ignore[union-attr]
        timeouts = sum(1 for a in assets.values() for r in a.results.values()
                       if r.get("error_kind") == "timeout")
        incomplete = sum(1 for a in assets.values() if a.status != "complete")
        done, final = dep.wait([video], timeout=1800)
        transcode_s = done[video] - t_video
        hls_status = final[video].results["hls"]["status"]
    finally:
        dep.close()
    p95a, p95b = pct(alone, .95), pct(behind, .95)
    ratio = p95b / p95a
    print(f"head of line: {images} images, p95 latency alone {p95a:.2f} s (p50 "
          f"{statistics.median(alone):.2f}), behind a running {clip_s} s 720p HLS transcode "
          f"{p95b:.2f} s (p50 {statistics.median(behind):.2f}) -> {ratio:.2f}x (goal <= 1.5x); "
          f"image tasks timed out: {timeouts}; not complete: {incomplete}; transcode still "
          f"running when the images were done: {still_running}; transcode {hls_status} after "
          f"{transcode_s:.1f} s", flush=True)
    return {"images": images, "clip_s": clip_s, "p95_alone_s": round(p95a, 3),
            "p95_behind_s": round(p95b, 3), "p50_alone_s": round(statistics.median(alone), 3),
            "p50_behind_s": round(statistics.median(behind), 3), "ratio": round(ratio, 3),
            "image_task_timeouts": timeouts, "images_not_complete": incomplete,
            "transcode_running_after_images": still_running, "transcode_s": round(transcode_s, 1),
            "transcode_status": hls_status, **({"env": extra} if extra else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["scale", "hol"])
    ap.add_argument("--images", type=int, default=200, help="assets per scale run")
    ap.add_argument("--threads", type=int, default=1, help="cpu-lane threads per worker (scale)")
    ap.add_argument("--hol-images", type=int, default=100)
    ap.add_argument("--clip-s", type=int, default=60)
    ap.add_argument("--long-nice", type=int, default=None,
                    help="DARKROOM_LONG_TASK_NICE for the hol run (default: the setting's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-load-"))
    out: dict[str, Any] = {}
    with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
        if args.only in (None, "scale"):
            out["scale"] = scale(broker.bootstrap, tmp, args.images, args.threads)
        if args.only in (None, "hol"):
            extra = {} if args.long_nice is None else {
                "DARKROOM_LONG_TASK_NICE": str(args.long_nice)}
            out["head_of_line"] = head_of_line(broker.bootstrap, tmp, args.hol_images,
                                               args.clip_s, extra)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
