"""The ``darkroom`` command line.

``up`` runs everything on embedded defaults; ``worker`` joins a configured cluster; ``process``
pushes files through the pipeline and prints what became of them.
"""

from __future__ import annotations

import json
import logging
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
    level = {"warn": logging.WARNING}.get(settings.log_level, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _prepare_cluster(settings: Settings, bootstrap: str) -> None:
    from agents.broker import all_topics, ensure_topics
    from processors.registry import load_all

    ensure_topics(bootstrap, all_topics(settings, load_all()), settings.partitions,
                  settings.replication_factor)


def run_worker(settings: Settings, bootstrap: str) -> None:
    """Run one Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    from agents.app import create_app
    from agents.runtime import Runtime

    rt = Runtime.build(settings, bootstrap)
    app = create_app(rt)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
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
    from agents.broker import kafka_cluster

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

    from agents.api import hash_key

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
    from agents.broker import OutputProducer
    from agents.records import UploadEvent, now_ms
    from agents.sniff import OCTET, sniff
    from agents.storage import build_storage, normalize_folder

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
    from agents.broker import kafka_cluster
    from sinks.store import MetadataStore

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

    from agents.api import create_api

    settings = Settings()
    _setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (the API joins a running cluster; "
                               "`darkroom up --api` runs everything embedded)")
    _prepare_cluster(settings, settings.kafka_bootstrap)
    app = create_api(settings, settings.kafka_bootstrap)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port,
                log_level="warning" if settings.log_level == "warn" else settings.log_level)


@main.command()
def apikey() -> None:
    """Create an API key: prints the key (give it to the client) and its hash (for settings)."""
    import secrets

    from agents.api import hash_key

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
    from agents.api import public_delivery
    from sinks.store import MetadataStore

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
    from agents.broker import OutputProducer, kafka_cluster
    from agents.records import WebhookDelivery
    from sinks.store import MetadataStore

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

    from agents.records import DeadLetter

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


@main.group()
def config() -> None:
    """Post-process configuration."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
def config_check(file: Path | None) -> None:
    """Load FILE (default: DARKROOM_POSTPROCESS_CONFIG) and report every mistake."""
    from agents.postprocess import ConfigError, load_config

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
