"""The ``darkroom`` command line.

``up`` runs everything on embedded defaults; ``worker`` joins a configured cluster; ``process``
pushes files through the pipeline and prints what became of them.
"""

from __future__ import annotations

import json
import mimetypes
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from agents.settings import Settings


def _setup_logging(settings: Settings) -> None:
    from agents.logs import setup

    setup(settings.log_level, settings.log_json)


def _prepare_cluster(settings: Settings, bootstrap: str) -> None:
    from agents.kafka.topics import all_topics, ensure_topics
    from processors.registry import load_all

    ensure_topics(bootstrap, all_topics(settings, load_all()), settings.partitions,
                  settings.replication_factor)


def run_worker(settings: Settings, bootstrap: str) -> None:
    """Run one Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    from agents.composition import Runtime
    from agents.streams.app import create_app

    rt = Runtime.build(settings, bootstrap)
    app = create_app(rt)
    from agents.logs import setup

    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.on_setup_root_logger = lambda *_a, **_k: setup(  # type: ignore[method-assign]
        settings.log_level, settings.log_json)
    try:
        worker.execute_from_commandline()
    finally:
        rt.close()


@click.group()
def main() -> None:
    """Darkroom: upload post-processing on Kafka."""


@main.command()
@click.option("--api", "with_api", is_flag=True,
              help="also serve the HTTP upload API (a key is generated unless configured)")
def up(with_api: bool) -> None:
    """Embedded broker (unless DARKROOM_KAFKA_BOOTSTRAP is set) + all agents in this process."""
    from agents.kafka.broker import kafka_cluster

    settings = Settings()
    _setup_logging(settings)
    with kafka_cluster(settings) as bootstrap:
        _prepare_cluster(settings, bootstrap)
        api_proc = _start_api(settings, bootstrap) if with_api else None
        click.echo(f"Kafka bootstrap: {bootstrap}"
                   f"{'' if settings.kafka_bootstrap else ' (embedded tansu, memory storage)'}")
        click.echo(f"data dir:        {settings.data_dir.resolve()}")
        click.echo(f"objects:         {settings.storage_dir.resolve()}")
        click.echo(f"database:        {settings.sqlalchemy_url}")
        click.echo(f"post-processes:  {settings.postprocess_config}")
        os.environ["DARKROOM_KAFKA_BOOTSTRAP"] = bootstrap
        try:
            run_worker(settings, bootstrap)
        finally:
            if api_proc is not None:
                api_proc.terminate()
                api_proc.wait(15)


def _start_api(settings: Settings, bootstrap: str) -> subprocess.Popen[bytes]:
    """`darkroom api` as a child process of `up`; prints where it listens and a key."""
    import secrets

    from agents.api.app import hash_key

    env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": bootstrap}
    if not settings.api_key_hashes:
        key = "drk_" + secrets.token_urlsafe(24)
        env["DARKROOM_API_KEY_HASHES"] = json.dumps([hash_key(key)])
        click.echo(f"API key:         {key}  (generated for this run; set "
                   "DARKROOM_API_KEY_HASHES to keep your own)")
    click.echo(f"upload API:      http://{settings.api_host}:{settings.api_port}  "
               f"(docs at /docs)")
    return subprocess.Popen([sys.executable, "-m", "agents.cli", "api"], env=env)


@main.command()
def worker() -> None:
    """One worker joining the cluster named by DARKROOM_KAFKA_BOOTSTRAP."""
    settings = Settings()
    _setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (or use `darkroom up` for embedded)")
    _prepare_cluster(settings, settings.kafka_bootstrap)
    run_worker(settings, settings.kafka_bootstrap)


def _iter_files(paths: Sequence[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from sorted(f for f in path.rglob("*") if f.is_file()
                              and not f.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise click.BadParameter(f"no such file or folder: {p}")


def upload_files(settings: Settings, bootstrap: str, files: Sequence[Path], folder: str,
                 postprocess: Sequence[str], mode: str) -> list[str]:
    """Store each file and publish its UploadEvent; returns the asset ids."""
    from agents.kafka.producer import OutputProducer
    from processors.media.sniff import OCTET, sniff
    from schemas.records import UploadEvent, now_ms
    from sinks.objects.base import normalize_folder
    from sinks.objects.facade import build_storage

    storage = build_storage(settings)
    producer = OutputProducer(bootstrap)
    folder = normalize_folder(folder)
    ids = []
    for f in files:
        asset_id = uuid.uuid4().hex[:20]
        with open(f, "rb") as fh:
            ctype = sniff(fh.read(512))
        if ctype == OCTET:  # not a media type we know by its bytes: keep the name's guess
            ctype = mimetypes.guess_type(f.name)[0] or OCTET
        uri = storage.put_file(f, storage.original_key(asset_id, folder, f.name), ctype)
        ev = UploadEvent(
            asset_id=asset_id, uri=uri, filename=f.name, folder=folder,
            content_type=ctype,
            size_bytes=f.stat().st_size, uploaded_at=now_ms(),
            postprocess=list(postprocess), mode=mode,
        )
        producer.send(settings.topic("uploads"), asset_id, ev.to_bytes())
        ids.append(asset_id)
    producer.flush_sync()
    return ids


def _result_line(asset: Any) -> dict[str, Any]:
    return {
        "asset_id": asset.asset_id,
        "filename": asset.filename,
        "status": asset.status,
        "results": {
            name: {"status": r["status"], "data": r["data"], "error": r["error"]}
            for name, r in asset.results.items()
        },
        "notices": asset.notices,
        "refusals": asset.refusals,
    }


def _summary(data: dict[str, Any] | None, limit: int = 60) -> str:
    text = json.dumps(data, separators=(",", ":")) if data is not None else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--folder", default="/", help="upload folder path for the assets")
@click.option("--postprocess", "-p", multiple=True, help="also run this post-process (repeatable)")
@click.option("--mode", type=click.Choice(["async", "sync"]), default="async")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per asset line")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for results")
def process(paths: tuple[str, ...], folder: str, postprocess: tuple[str, ...], mode: str,
            as_json: bool, timeout: float) -> None:
    """Upload files/folders through the pipeline, wait, and print what became of them."""
    from agents.kafka.broker import kafka_cluster
    from sinks.store.metadata import MetadataStore

    settings = Settings()
    files = list(_iter_files(paths))
    if not files:
        raise click.UsageError("no files found")
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with kafka_cluster(settings) as bootstrap:
        _prepare_cluster(settings, bootstrap)
        env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": bootstrap}
        with open(logs / "worker.log", "ab") as log_file:
            worker_proc = subprocess.Popen(
                [sys.executable, "-m", "agents.cli", "worker"], env=env,
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            ids = upload_files(settings, bootstrap, files, folder, postprocess, mode)
            store = MetadataStore(settings.sqlalchemy_url)
            deadline = time.monotonic() + timeout
            assets: dict[str, Any] = {}
            while time.monotonic() < deadline:
                assets = store.get_assets(ids)
                if len(assets) == len(ids) and all(
                    a.status != "pending" for a in assets.values()
                ):
                    break
                if worker_proc.poll() is not None:
                    raise click.ClickException(
                        f"worker exited with {worker_proc.returncode}; see {logs / 'worker.log'}"
                    )
                time.sleep(0.2)
        finally:
            worker_proc.terminate()
            try:
                worker_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
    failed = False
    for aid, f in zip(ids, files, strict=True):
        asset = assets.get(aid)
        if asset is None or asset.status in ("pending", "failed", "partial", "refused"):
            failed = True
        if as_json:
            line = _result_line(asset) if asset else {"asset_id": aid, "filename": f.name,
                                                      "status": "lost", "results": {}}
            click.echo(json.dumps(line, sort_keys=True))
            continue
        status = asset.status if asset else "lost"
        click.echo(f"{aid}  {status:<9} {f}")
        for name, r in (asset.results.items() if asset else []):
            detail = _summary(r["data"]) if r["status"] == "ok" else r["error"]
            click.echo(f"    {name:<18} {r['status']:<6} {detail}")
        for n in asset.notices if asset else []:
            click.echo(f"    notice: {n}")
        for n in asset.refusals if asset else []:
            click.echo(f"    refused: {n}")
    if failed:
        sys.exit(1)


@main.command()
def api() -> None:
    """Serve the HTTP upload API (OpenAPI at /openapi.json) against DARKROOM_KAFKA_BOOTSTRAP."""
    import uvicorn

    from agents.api.app import create_api
    from agents.api.guards import server_options

    settings = Settings()
    _setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (the API joins a running cluster; "
                               "`darkroom up --api` runs everything embedded)")
    _prepare_cluster(settings, settings.kafka_bootstrap)
    app = create_api(settings, settings.kafka_bootstrap)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port,
                log_level="warning" if settings.log_level == "warn" else settings.log_level,
                **server_options(settings))


@main.command()
def apikey() -> None:
    """Create an API key: prints the key (give it to the client) and its hash (for settings)."""
    import secrets

    from agents.api.app import hash_key

    key = "drk_" + secrets.token_urlsafe(32)
    click.echo(f"key:  {key}")
    click.echo(f"hash: {hash_key(key)}")
    click.echo(f"add the hash to DARKROOM_API_KEY_HASHES, e.g. DARKROOM_API_KEY_HASHES="
               f"'[\"{hash_key(key)}\"]'")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--api", "api_url", envvar="DARKROOM_API_URL", default="http://127.0.0.1:8080",
              show_default=True, help="base URL of a running API")
@click.option("--key", envvar="DARKROOM_API_KEY", required=True, help="API key")
@click.option("--folder", default="/")
@click.option("--postprocess", "-p", multiple=True, help="post-process/task name (repeatable)")
@click.option("--sync", is_flag=True, help="wait for the sync post-processes of each upload")
@click.option("--tag", "tags", multiple=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON answer per line")
def upload(files: tuple[Path, ...], api_url: str, key: str, folder: str,
           postprocess: tuple[str, ...], sync: bool, tags: tuple[str, ...],
           as_json: bool) -> None:
    """Upload FILES to a running API; exits non-zero if any upload was refused or failed."""
    import httpx

    paths = list(_iter_files([str(f) for f in files]))
    failed = False
    answers = []
    with (
        httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=None) as client,
        click.progressbar(paths, label="uploading", file=sys.stderr,
                          hidden=as_json or len(paths) < 2) as bar,
    ):
        for path in bar:
            data: dict[str, Any] = {"folder": folder, "mode": "sync" if sync else "async",
                                    "postprocess": list(postprocess), "tags": list(tags)}
            with open(path, "rb") as fh:
                resp = client.post("/v1/assets", data=data, files={"file": (path.name, fh)})
            body = resp.json() if resp.headers.get("content-type", "").startswith(
                "application/json") else {"detail": resp.text}
            failed |= resp.status_code >= 400
            answers.append((path, resp.status_code, body))
    for path, code, body in answers:
        if as_json:
            click.echo(json.dumps({"file": str(path), "http_status": code, **body},
                                  sort_keys=True))
        else:
            what = body.get("status") or body.get("detail")
            click.echo(f"{code}  {body.get('asset_id', '-'):<20}  {what}  {path}")
            for n in body.get("notices", []):
                click.echo(f"      notice: {n}")
            for n in body.get("refusals", []):
                click.echo(f"      refused: {n}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("asset_id")
def asset(asset_id: str) -> None:
    """Print one asset's merged state as JSON."""
    from agents.api.app import public_delivery
    from sinks.store.metadata import MetadataStore

    store = MetadataStore(Settings().sqlalchemy_url)
    found = store.get_asset(asset_id)
    if found is None:
        raise click.ClickException(f"no asset {asset_id}")
    body = {**found.to_json(),
            "webhooks": [public_delivery(d) for d in store.deliveries_of(asset_id)]}
    click.echo(json.dumps(body, indent=2, sort_keys=True))


@main.group()
def webhooks() -> None:
    """Webhook deliveries."""


@webhooks.command("replay")
@click.option("--idle", default=3.0, show_default=True,
              help="stop after this many seconds without a new dead letter")
@click.option("--dry-run", is_flag=True, help="list what would be re-sent")
def webhooks_replay(idle: float, dry_run: bool) -> None:
    """Re-send the dead letters of darkroom.dlq.webhooks (each once: progress is committed)."""
    from agents.kafka.broker import kafka_cluster
    from agents.kafka.producer import OutputProducer
    from schemas.records import WebhookDelivery
    from sinks.store.metadata import MetadataStore

    settings = Settings()
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP to the cluster the workers use")
    store = MetadataStore(settings.sqlalchemy_url)
    with kafka_cluster(settings) as bootstrap:
        sent = skipped = 0
        producer = OutputProducer(bootstrap)
        for msg, letter in _read_dead_letters(settings, bootstrap, "webhooks", idle, dry_run):
            d = WebhookDelivery.from_bytes(letter.original)
            row = store.delivery(d.delivery_id)
            if row is not None and row["state"] in ("delivered", "refused"):
                skipped += 1
                continue
            click.echo(f"{'would re-send' if dry_run else 're-sent'} {d.asset_id} -> {d.url} "
                       f"(was: {letter.error})")
            if not dry_run:
                fresh = WebhookDelivery(**{**d.to_dict(), "attempt": 1, "due_at": 0})
                producer.send(settings.topic("webhooks"), d.asset_id, fresh.to_bytes())
                store.mark_delivery(d.delivery_id, "queued", 0, None, "replayed")
            sent += 1
            del msg
        producer.flush_sync()
    click.echo(f"{sent} dead letter(s) {'to re-send' if dry_run else 're-sent'}, "
               f"{skipped} already settled")


def _read_dead_letters(settings: Settings, bootstrap: str, name: str, idle: float,
                       dry_run: bool) -> Iterator[tuple[Any, Any]]:
    """Dead letters of ``darkroom.dlq.<name>`` not yet replayed (a committed consumer group),
    until none came for ``idle`` seconds (end offsets are not trusted: tansu gets them wrong)."""
    from confluent_kafka import Consumer

    from schemas.records import DeadLetter

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"darkroom-replay-{name}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": int(settings.session_timeout_s * 1000), "log_level": 3,
    })
    assigned: list[bool] = []
    consumer.subscribe([settings.topic("dlq", name)],
                       on_assign=lambda _c, _parts: assigned.append(True))
    start, last = time.monotonic(), None
    try:
        while True:
            now = time.monotonic()
            if last is None:  # the idle clock starts once the group join gave us partitions
                if assigned:
                    last = now
                elif now - start > 60:
                    break
            elif now - last >= idle:
                break
            for msg in consumer.consume(100, timeout=0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                last = time.monotonic()
                yield msg, DeadLetter.from_bytes(value)
                if not dry_run:
                    consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()


def _cluster_settings() -> Settings:
    settings = Settings()
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP to the cluster the workers use")
    return settings


@main.command()
@click.option("--from", "from_", help="uploads written at/after this time (ISO 8601 or epoch)")
@click.option("--to", help="uploads written at/before this time")
@click.option("--from-offset", multiple=True, help="PARTITION:OFFSET of darkroom.uploads")
@click.option("--asset", "assets", multiple=True, help="asset id (repeatable)")
@click.option("--folder", help="folder prefix")
@click.option("--task", "tasks", multiple=True, help="only these post-processes/tasks")
@click.option("--missing", help="assets that never got a result for this post-process/task")
@click.option("--dry-run", is_flag=True, help="print what would run")
@click.option("--max-rate", type=float, help="events per second at most")
@click.option("--name", help="replay name (resume key); default: derived from the selectors")
@click.option("--restart", is_flag=True, help="ignore saved progress of this replay")
def replay(from_: str | None, to: str | None, from_offset: tuple[str, ...],
           assets: tuple[str, ...], folder: str | None, tasks: tuple[str, ...],
           missing: str | None, dry_run: bool, max_rate: float | None, name: str | None,
           restart: bool) -> None:
    """Re-run post-processing for chosen uploads (resumable; results overwrite idempotently)."""
    from agents.replay import Selector, parse_time, run_replay
    from sinks.objects.base import normalize_folder
    from sinks.store.metadata import MetadataStore

    settings = _cluster_settings()
    offsets = {}
    for item in from_offset:
        part, _, off = item.partition(":")
        if not part.isdigit() or not off.isdigit():
            raise click.BadParameter(f"--from-offset {item!r}: expected PARTITION:OFFSET")
        offsets[int(part)] = int(off)
    sel = Selector(assets=list(assets), folder=normalize_folder(folder) if folder else None,
                   tasks=list(tasks), missing=missing,
                   from_ms=parse_time(from_) if from_ else None,
                   to_ms=parse_time(to) if to else None, from_offsets=offsets)
    store = MetadataStore(settings.sqlalchemy_url)
    started = time.monotonic()
    last_print = [0.0]

    def progress(ev: Any, n: int) -> None:
        if dry_run:
            click.echo(f"would replay {ev.asset_id} {ev.folder}/{ev.filename} "
                       f"tasks={ev.replay_tasks or 'all'}")
            return
        now = time.monotonic()
        if now - last_print[0] >= 1.0:
            last_print[0] = now
            rate = n / max(now - started, 1e-6)
            click.echo(f"\rreplayed {n} ({rate:.1f}/s)", nl=False, err=True)

    try:
        replay_name, sent = run_replay(settings, settings.kafka_bootstrap or "", store, sel,
                                       name=name, dry_run=dry_run, max_rate=max_rate,
                                       restart=restart, on_event=progress)
    except KeyboardInterrupt as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(130)
    rate = sent / max(time.monotonic() - started, 1e-6)
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"\n{replay_name}: {verb} {sent} upload(s) ({rate:.1f}/s)", err=not dry_run)


@main.group()
def dlq() -> None:
    """Dead letters per task (darkroom.dlq.<task>): list, show, requeue, purge."""


def _dead_letters(settings: Settings, name: str) -> list[tuple[int, int, Any]]:
    """Every dead letter of darkroom.dlq.<name> (read to the end by idleness, never by end
    offsets), with its partition and offset."""
    import uuid as _uuid

    from confluent_kafka import Consumer, TopicPartition

    from schemas.records import DeadLetter

    topic = settings.topic("dlq", name)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"dlq-{_uuid.uuid4()}", "enable.auto.commit": False,
                         "log_level": 3})
    out = []
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise click.ClickException(f"no topic {topic}")
        consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        last = time.monotonic()
        while time.monotonic() - last < 2.0:
            for msg in consumer.consume(500, timeout=0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                last = time.monotonic()
                try:
                    letter = DeadLetter.from_bytes(value)
                except ValueError as exc:  # anyone can write to a dlq topic too
                    click.echo(f"skipping {msg.partition()}:{msg.offset()}: {exc}", err=True)
                    continue
                out.append((int(msg.partition() or 0), int(msg.offset() or 0), letter))
    finally:
        consumer.close()
    return sorted(out, key=lambda t: (t[0], t[1]))


def _original_of(settings: Settings, dl: Any) -> bytes | None:
    """The original value of a dead letter: embedded, or (too large to embed) read back from
    its source topic at the recorded position and checked against its SHA-256. None for a
    tombstone or an original no longer in the log."""
    import hashlib

    from confluent_kafka import Consumer, TopicPartition

    if dl.original_kind == "embedded":
        return bytes(dl.original)
    if dl.original_kind != "omitted" or dl.source_offset < 0:
        return None
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"dlq-fetch-{uuid.uuid4()}", "enable.auto.commit": False,
                         "fetch.message.max.bytes": 64 << 20, "log_level": 3})
    try:
        consumer.assign([TopicPartition(dl.source_topic, dl.source_partition, dl.source_offset)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if msg.offset() != dl.source_offset:
                return None  # compacted or deleted meanwhile
            value = msg.value() or b""
            return value if hashlib.sha256(value).hexdigest() == dl.original_sha256 else None
    finally:
        consumer.close()
    return None


def _letter_ref(ref: str) -> tuple[int, int]:
    part, _, off = ref.partition(":")
    if not part.isdigit() or not off.isdigit():
        raise click.BadParameter(f"{ref!r}: expected PARTITION:OFFSET (see `darkroom dlq list`)")
    return int(part), int(off)


@dlq.command("list")
@click.argument("task")
@click.option("--all", "show_all", is_flag=True, help="include requeued and purged ones")
def dlq_list(task: str, show_all: bool) -> None:
    """Dead letters of TASK ('uploads' and 'webhooks' work too)."""
    from sinks.store.metadata import MetadataStore

    settings = _cluster_settings()
    marks = MetadataStore(settings.sqlalchemy_url).dlq_marks(settings.topic("dlq", task))
    shown = 0
    for part, off, dl in _dead_letters(settings, task):
        mark = marks.get((part, off))
        if mark and not show_all:
            continue
        shown += 1
        click.echo(f"{part}:{off}  {dl.asset_id or '-':<20} attempts={dl.attempts} "
                   f"{dl.error_kind:<9} {mark or ''} {dl.error[:100]}")
    click.echo(f"{shown} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("task")
@click.argument("ref")
def dlq_show(task: str, ref: str) -> None:
    """One dead letter (PARTITION:OFFSET) with its original message decoded."""
    import schemas

    settings = _cluster_settings()
    want = _letter_ref(ref)
    for part, off, dl in _dead_letters(settings, task):
        if (part, off) == want:
            original: Any
            raw = _original_of(settings, dl) or b""
            kind = schemas.schema_name_of(raw)
            try:
                original = schemas.decode(kind, raw) if kind else raw.hex()[:200]
            except schemas.SchemaError:
                original = raw.hex()[:200]
            body = {**dl.to_dict(), "original": original, "original_schema": kind,
                    "original_key": dl.original_key.decode(errors="replace")
                    if dl.original_key else None}
            click.echo(json.dumps(body, indent=2, default=str, sort_keys=True))
            return
    raise click.ClickException(f"no dead letter {ref} in {settings.topic('dlq', task)}")


@dlq.command("requeue")
@click.argument("task")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="every dead letter not yet requeued/purged")
def dlq_requeue(task: str, refs: tuple[str, ...], every: bool) -> None:
    """Send dead letters back through the normal path (their source topic)."""
    from agents.kafka.producer import OutputProducer
    from sinks.store.metadata import MetadataStore

    settings = _cluster_settings()
    if not refs and not every:
        raise click.UsageError("name dead letters (PARTITION:OFFSET) or use --all")
    topic = settings.topic("dlq", task)
    store = MetadataStore(settings.sqlalchemy_url)
    marks = store.dlq_marks(topic)
    wanted = {_letter_ref(r) for r in refs}
    producer = OutputProducer(settings.kafka_bootstrap or "")
    n = 0
    for part, off, dl in _dead_letters(settings, task):
        if (wanted and (part, off) not in wanted) or (every and (part, off) in marks):
            continue
        original = _original_of(settings, dl)
        if original is None:
            click.echo(f"skipped {part}:{off}: its original ({dl.original_kind}) cannot be "
                       "requeued", err=True)
            continue
        producer.send(dl.source_topic, dl.original_key, original)
        producer.flush_sync()
        store.mark_dead_letter(topic, part, off, "requeued")
        n += 1
        click.echo(f"requeued {part}:{off} ({dl.asset_id}) -> {dl.source_topic}")
    click.echo(f"{n} dead letter(s) requeued", err=True)


@dlq.command("purge")
@click.argument("task")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True)
def dlq_purge(task: str, refs: tuple[str, ...], every: bool) -> None:
    """Mark dead letters as handled (hidden from `list`; the log itself is append-only)."""
    from sinks.store.metadata import MetadataStore

    settings = _cluster_settings()
    if not refs and not every:
        raise click.UsageError("name dead letters (PARTITION:OFFSET) or use --all")
    topic = settings.topic("dlq", task)
    store = MetadataStore(settings.sqlalchemy_url)
    wanted = {_letter_ref(r) for r in refs}
    n = 0
    for part, off, _dl in _dead_letters(settings, task):
        if wanted and (part, off) not in wanted:
            continue
        store.mark_dead_letter(topic, part, off, "purged")
        n += 1
    click.echo(f"{n} dead letter(s) purged")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--window", default=60.0, show_default=True, help="seconds for the rate")
def status(as_json: bool, window: float) -> None:
    """Per task: pending, in flight, done, failed, dead letters, rate (from the store and the
    consumer group's committed offsets; never from end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    from processors.registry import load_all
    from schemas.records import now_ms
    from sinks.store.metadata import MetadataStore

    settings = _cluster_settings()
    store = MetadataStore(settings.sqlalchemy_url)
    stats = store.task_stats(now_ms() - int(window * 1000))
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": settings.worker_id, "enable.auto.commit": False,
                         "log_level": 3})
    rows = []
    try:
        for task in sorted(load_all()):
            topic = settings.topic("tasks", task)
            md = consumer.list_topics(topic, timeout=10).topics.get(topic)
            committed = 0
            if md is not None and md.error is None:
                tps = [TopicPartition(topic, p) for p in md.partitions]
                committed = sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
            s = stats.get(task, {"pending": 0, "in_flight": 0, "done": 0, "failed": 0,
                                 "recent": 0})
            rows.append({"task": task, "pending": s["pending"], "in_flight": s["in_flight"],
                         "done": s["done"], "failed": s["failed"], "dead_letters": s["failed"],
                         "rate_per_s": round(s["recent"] / window, 2),
                         "committed_requests": committed})
    finally:
        consumer.close()
    # stalls are refreshed by the stuck worker at least every 30 s while it retries
    stalled = store.stalls(now_ms() - 120_000)
    if as_json:
        click.echo(json.dumps({"tasks": rows, "stalled": stalled}, sort_keys=True))
        return
    cols = ["task", "pending", "in_flight", "done", "failed", "dead_letters", "rate_per_s",
            "committed_requests"]
    click.echo("  ".join(f"{c:>12}" if c != "task" else f"{c:<18}" for c in cols))
    for r in rows:
        click.echo("  ".join(f"{r[c]!s:>12}" if c != "task" else f"{r[c]:<18}" for c in cols))
    for st in stalled:
        click.echo(f"STALLED {st['worker']} {st['agent']} on {st['topic']}[{st['partition']}]@"
                   f"{st['offset']}: {st['attempts']} attempts, last error: {st['error']}")


@main.group()
def config() -> None:
    """Post-process configuration."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
def config_check(file: Path | None) -> None:
    """Load FILE (default: DARKROOM_POSTPROCESS_CONFIG) and report every mistake."""
    from agents.policy.postprocess import ConfigError, load_config

    path = file or Settings().postprocess_config
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"{path}: OK, {len(cfg.postprocesses)} post-processes")
    for pp in cfg.postprocesses:
        click.echo(f"  {pp.name:<20} task={pp.task:<16} mode={pp.mode:<5} "
                   f"{'automatic' if pp.enabled else 'manual-only'}")


if __name__ == "__main__":
    main()
