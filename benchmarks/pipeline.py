"""Pipeline overhead: what an asset costs through a worker against its tasks' own work.

    uv run python benchmarks/pipeline.py [--images 120] [--runs 3] [--db sqlite,postgres]
    uv run python benchmarks/pipeline.py --workers 2 --tasks count-faces,nsfw [--images 80]
    uv run python benchmarks/pipeline.py --idle 60

(a) **loop**: the same files in this process, one after the other: probe the header,
    validate-image, then blurhash and dominant-colors served by one fresh ``DecodeCache``
    (one shared draft decode at ``preview_side``), as a worker does them; CPU time per image.
(b) **pipeline**: one ``darkroom worker`` (router, task agents, sink) on an embedded broker of
    its own, with SQLite and with PostgreSQL (``DARKROOM_BENCH_POSTGRES_URL``, default
    postgresql+psycopg://postgres@127.0.0.1:5432/postgres; a database of its own is created and
    dropped). The raw Avro uploads are produced in one burst; CPU per asset is the user + system
    time of the worker and the broker processes (and of their children) from ``/proc/<pid>/stat``
    between the burst and the last asset being final. Prints both, the ratio (goal <= 1.3) and
    assets/s; with ``--runs N`` the min/median/max of N runs.
(c) ``--workers 2 --tasks count-faces,nsfw``: assets/s of 1 and of 2 workers (1 cpu-lane thread
    each) on one broker and one PostgreSQL database (goal >= 1.8x on 2 free cores).
(d) ``--idle S``: an idle worker (topics made, partitions assigned, nothing to do) and its broker,
    CPU over S seconds as % of one core (goal <= 2 % each).

CPU figures are less affected than wall time by other load on the machine; assets/s is not.
(b) also prints the worker's CPU per asset by thread (the OS names the worker gives its threads,
``agents/osthreads.py``): the event loop, Faust's consumer thread, the lanes, the I/O pool,
librdkafka's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.kafka.broker import EmbeddedBroker  # noqa: E402
from agents.settings import Settings  # noqa: E402
from benchmarks.load import PG_URL, Deployment, photos  # noqa: E402
from processors import registry  # noqa: E402
from processors.media import imaging  # noqa: E402
from processors.media.decode_cache import DecodeCache  # noqa: E402
from processors.registry import TaskInput  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_TASKS = ("validate-image", "blurhash", "dominant-colors")


def config(tasks: list[str], sync: Sequence[str] = ()) -> str:
    """The post-processes: one per task, async unless named in ``sync`` (``--sync
    validate-image`` declares it as the shipped default configuration does)."""
    lines = ["postprocesses:"]
    for t in tasks:
        mode = "sync" if t in sync else "async"
        lines.append(f'  - {{name: {t}, task: {t}, mode: {mode}, trigger: "format contains JPEG"}}')
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ CPU from /proc
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, own + waited-for children's CPU seconds) of ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[1] = ppid; utime, stime, cutime, cstime are fields 14-17 of the line (11-14 here)
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / TICK


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and all their live descendants (waited-for ones are counted in
    their parent's cutime/cstime)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    total, seen, todo = 0.0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(child for child, (ppid, _) in table.items() if ppid == pid)
    return total


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per kind of thread of ``pids``, by the threads' OS names (the worker names
    its own: ``agents.osthreads``; librdkafka's are ``rdk:*``; the event loop is the main
    thread): ``dr-cpu-0`` and ``dr-cpu-1`` count as ``dr-cpu``."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = raw[raw.rindex(")") + 2:].split()
            kind = ("main (event loop)" if tid == str(pid)
                    else comm.rstrip("0123456789").rstrip("-_"))
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_delta(before: dict[str, float], after: dict[str, float], total_s: float,
                 n: int) -> dict[str, float]:
    """ms of CPU per asset per kind of thread; ``ended threads`` is the rest of ``total_s``
    (the processes' total, children included, minus their live threads'): threads that ended
    meanwhile, and child processes such as ffmpeg."""
    out = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1000 / n for k in after}
    out["ended threads"] = total_s * 1000 / n - sum(out.values())
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])
            if abs(v) >= 0.05}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch_counts(port: int | None) -> dict[str, float]:
    """The worker's fetch counters from its /metrics (``agents.metrics``: FETCHES,
    FETCH_PARTITIONS); empty without a web port."""
    if port is None:
        return {}
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "darkroom_fetch_requests_total":
                out[sample.labels["outcome"]] = sample.value
            elif sample.name == "darkroom_fetch_partitions_total":
                out["partitions"] = sample.value
    return out


def fetch_delta(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Fetches per asset, the share that came back empty, partitions named per fetch."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("records", "empty", "partitions")}
    fetches = d["records"] + d["empty"]
    if not fetches:
        return {}
    return {"fetches_per_asset": round(fetches / n, 2),
            "empty_share": round(d["empty"] / fetches, 2),
            "partitions_per_fetch": round(d["partitions"] / fetches, 1)}


# ------------------------------------------------------------------------------ (a) the loop
def bare_loop(files: list[Path], preview_side: int) -> float:
    """CPU ms per image of the default image tasks in this process, one shared decode each."""
    procs = registry.load_all()
    validate, bh, dc = (procs[n] for n in DEFAULT_TASKS)
    params = {p.name: p.parse_params(None) for p in (validate, bh, dc)}

    def one(path: Path) -> None:
        props: dict[str, object] = dict(imaging.probe_header(path))
        props["file_size"] = path.stat().st_size
        validate.run(TaskInput(properties=props), params[validate.name])
        cache = DecodeCache(preview_side=preview_side)
        for proc in (bh, dc):
            img = cache.get(str(path), lambda: path, proc.input.max_side, proc.input.mode,
                            proc.input.resample)
            proc.run(TaskInput(properties=props, image=img), params[proc.name])

    one(files[0])  # warm-up
    start = time.process_time()
    for path in files:
        one(path)
    return (time.process_time() - start) * 1000.0 / len(files)


# ------------------------------------------------------------------------------ databases
@contextmanager
def postgres_database() -> Iterator[str]:
    import sqlalchemy as sa

    name = f"darkroom_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


@contextmanager
def database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
    else:
        with postgres_database() as url:
            yield url


# ------------------------------------------------------------------------------ (b) pipeline
def through_workers(files_for: Callable[[Path, int], list[Path]], tasks: list[str], db: str,
                    workers: int, extra: dict[str, str], tmp: Path,
                    partitions: int = 3, sync: Sequence[str] = ()) -> dict[str, Any]:
    """One burst of uploads through ``workers`` workers on a broker of their own."""
    base = tmp / f"run-{uuid.uuid4().hex[:6]}"
    port = free_port() if workers == 1 else None  # one worker: its /metrics tell its fetches
    if port is not None:
        extra = {**extra, "DARKROOM_WEB_PORT": str(port)}
    with EmbeddedBroker(log_path=base / "tansu.log") as broker, database(db) as url:
        assert broker.proc is not None
        dep = Deployment(broker.bootstrap, base, config(tasks, sync), workers, url,
                         partitions=partitions, extra=extra)
        try:
            dep.settle()
            dep.wait(list(dep.upload(files_for(dep.inbox / "warm", 1))))  # models, caches
            files = files_for(dep.inbox / "load", 0)
            pids = [broker.proc.pid]
            wpids = [p.pid for p in dep.procs]
            f0 = fetch_counts(port)
            w0, b0, th0 = cpu_seconds(wpids), cpu_seconds(pids), thread_cpu(wpids)
            t0 = time.time()
            done, assets = dep.wait(list(dep.upload(files)), poll=0.1)
            elapsed = max(done.values()) - t0
            w1, b1, th1 = cpu_seconds(wpids), cpu_seconds(pids), thread_cpu(wpids)
            f1 = fetch_counts(port)
            bad = [a.asset_id for a in assets.values() if a.status != "complete"]
            if bad:
                raise SystemExit(f"{len(bad)} assets not complete, e.g. {bad[0]}: "
                                 f"{assets[bad[0]].to_json()}")
        finally:
            dep.close()
    n = len(files)
    return {"worker_ms": (w1 - w0) * 1000 / n, "broker_ms": (b1 - b0) * 1000 / n,
            "assets_per_s": n / elapsed, "threads_ms": thread_delta(th0, th1, w1 - w0, n),
            "fetches": fetch_delta(f0, f1, n)}


def summary(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return "/".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values),
                                                max(values)))


def overhead(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    side = args.side
    files = photos(tmp / "files", args.images, side=side, seed=1)
    preview = Settings().preview_side
    extra = {"DARKROOM_LOG_LEVEL": "info", **args.extra}
    loop = [bare_loop(files, preview) for _ in range(args.runs)]
    print(f"loop: {len(files)} JPEGs ~{side}px long side, default image tasks, one shared "
          f"{preview}px decode: {summary(loop)} ms CPU per image (min/median/max of "
          f"{args.runs}); {1000 / statistics.median(loop):.0f} images/s on one core", flush=True)
    out: dict[str, Any] = {"images": len(files), "side": side, "loop_ms": loop}
    loop_ms = statistics.median(loop)

    def files_for(folder: Path, warm: int) -> list[Path]:
        if warm:
            return photos(folder, 6, side=side, seed=99)
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for f in files:  # the same bytes, under the worker's file root
            link = folder / f.name
            link.write_bytes(f.read_bytes())
            links.append(link)
        return links

    for db in args.db.split(","):
        runs = [through_workers(files_for, list(DEFAULT_TASKS), db, 1, extra, tmp,
                                args.partitions, args.sync) for _ in range(args.runs)]
        total = [r["worker_ms"] + r["broker_ms"] for r in runs]
        ratio = [t / loop_ms for t in total]
        print(f"pipeline ({db}): worker {summary([r['worker_ms'] for r in runs])} ms + broker "
              f"{summary([r['broker_ms'] for r in runs])} ms = {summary(total)} ms CPU per asset"
              f" -> ratio {'/'.join(f'{x:.2f}' for x in sorted(ratio))}x (goal <= 1.3x); "
              f"{summary([r['assets_per_s'] for r in runs])} assets/s", flush=True)
        kinds = sorted({k for r in runs for k in r["threads_ms"]},
                       key=lambda k: -statistics.median(r["threads_ms"].get(k, 0.0) for r in runs))
        print("  worker CPU per asset by thread (ms): " + ", ".join(
            f"{k} {summary([r['threads_ms'].get(k, 0.0) for r in runs])}" for k in kinds),
            flush=True)
        if all(r["fetches"] for r in runs):
            print("  the worker's fetches: " + ", ".join(
                f"{k.replace('_', ' ')} {summary([r['fetches'][k] for r in runs], 2)}"
                for k in ("fetches_per_asset", "empty_share", "partitions_per_fetch")),
                flush=True)
        out[db] = runs
    return out


def scaling(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    tasks = args.tasks.split(",")
    files = photos(tmp / "files", args.images, side=args.side, seed=2)

    def files_for(folder: Path, warm: int) -> list[Path]:
        if warm:
            return photos(folder, 8, side=args.side, seed=98)
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            (folder / f.name).write_bytes(f.read_bytes())
        return [folder / f.name for f in files]

    extra = {"DARKROOM_LOG_LEVEL": "info", "DARKROOM_PROCESSOR_THREADS": "1", **args.extra}
    rates: dict[int, list[float]] = {1: [], args.workers: []}
    for _ in range(args.runs):
        for w in sorted(rates):
            r = through_workers(files_for, tasks, "postgres", w, extra, tmp, args.partitions)
            rates[w].append(r["assets_per_s"])
            print(f"  {w} worker(s): {r['assets_per_s']:.2f} assets/s, worker "
                  f"{r['worker_ms']:.0f} + broker {r['broker_ms']:.0f} ms CPU per asset",
                  flush=True)
    ratio = [b / a for a, b in zip(rates[1], rates[args.workers], strict=True)]
    print(f"scale ({','.join(tasks)}): 1 worker {summary(rates[1])} assets/s, {args.workers} "
          f"workers {summary(rates[args.workers])} -> {summary(ratio)}x (min/median/max; goal "
          f">= 1.8x on 2 free cores; {os.cpu_count()} cores here)", flush=True)
    return {"tasks": tasks, "rates": rates, "ratio": ratio}


def idle(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base = tmp / "idle"
    with EmbeddedBroker(log_path=base / "tansu.log") as broker:
        assert broker.proc is not None
        dep = Deployment(broker.bootstrap, base, config(list(DEFAULT_TASKS)), 1, None,
                         partitions=args.partitions,
                         extra={"DARKROOM_LOG_LEVEL": "info", **args.extra})
        try:
            dep.settle()
            dep.wait(list(dep.upload(photos(dep.inbox / "warm", 3, seed=97))))
            time.sleep(5)
            wpids, bpids = [p.pid for p in dep.procs], [broker.proc.pid]
            w0, b0, t0 = cpu_seconds(wpids), cpu_seconds(bpids), time.monotonic()
            time.sleep(args.idle)
            w1, b1, t1 = cpu_seconds(wpids), cpu_seconds(bpids), time.monotonic()
        finally:
            dep.close()
    w, b = 100 * (w1 - w0) / (t1 - t0), 100 * (b1 - b0) / (t1 - t0)
    print(f"idle over {t1 - t0:.0f} s: worker {w:.1f} % of a core, broker {b:.1f} % "
          f"(goal <= 2 % each)", flush=True)
    return {"seconds": t1 - t0, "worker_pct": w, "broker_pct": b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--side", type=int, default=1200, help="long side of the JPEGs (1200: ~1 MP)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--workers", type=int, default=1, help="> 1: the scaling mode")
    ap.add_argument("--tasks", default="count-faces,nsfw", help="tasks of the scaling mode")
    ap.add_argument("--partitions", type=int, default=3,
                    help="partitions per topic (3: in the scaling mode split 2:1 over 2 workers)")
    ap.add_argument("--idle", type=float, default=0, help="> 0: the idle mode, seconds")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a DARKROOM_* setting for the workers (repeatable)")
    ap.add_argument("--sync", default="", metavar="TASKS",
                    help="tasks declared mode: sync (the shipped default: validate-image)")
    args = ap.parse_args()
    args.extra = dict(e.split("=", 1) for e in args.env)
    args.sync = [t for t in args.sync.split(",") if t]
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-pipeline-"))
    if args.idle > 0:
        out = idle(args, tmp)
    elif args.workers > 1:
        out = scaling(args, tmp)
    else:
        out = overhead(args, tmp)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
