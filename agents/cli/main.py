"""The ``darkroom`` command line: the group, and the commands that run services.

``up`` runs everything on embedded defaults; ``worker`` joins a configured cluster; ``api``
serves the HTTP upload API; ``apikey`` makes a key. The other commands live by concern:
:mod:`agents.cli.assets` (``process``, ``upload``, ``asset``), :mod:`agents.cli.ops` (``dlq``,
``replay``, ``status``, ``webhooks``), :mod:`agents.cli.config` (``config``). Every command gets
its services from one composition root (:class:`agents.composition.Runtime`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from agents.cli.common import prepare_cluster, setup_logging
from agents.composition import Runtime
from agents.settings import Settings


def run_worker(root: Runtime) -> None:
    """Run one Faust worker with ``root`` in this process until it is stopped (SIGINT/SIGTERM);
    closes ``root`` at the end."""
    from faust.worker import Worker

    from agents.streams.app import create_app

    settings = root.settings
    try:
        app = create_app(root)
        worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
        worker.on_setup_root_logger = lambda *_a, **_k: setup_logging(  # type: ignore[method-assign]
            settings)
        worker.execute_from_commandline()
    finally:
        root.close()


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
    setup_logging(settings)
    with kafka_cluster(settings) as bootstrap:
        root = Runtime.build(settings, bootstrap)
        prepare_cluster(root)
        api_proc = _start_api(settings, bootstrap) if with_api else None
        click.echo(f"Kafka bootstrap: {bootstrap}"
                   f"{'' if settings.kafka_bootstrap else ' (embedded tansu, memory storage)'}")
        click.echo(f"data dir:        {settings.data_dir.resolve()}")
        click.echo(f"objects:         {settings.storage_dir.resolve()}")
        click.echo(f"database:        {settings.sqlalchemy_url}")
        click.echo(f"post-processes:  {settings.postprocess_config}")
        os.environ["DARKROOM_KAFKA_BOOTSTRAP"] = bootstrap
        try:
            run_worker(root)
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
    setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (or use `darkroom up` for embedded)")
    root = Runtime.build(settings, settings.kafka_bootstrap)
    prepare_cluster(root)
    run_worker(root)


@main.command()
def api() -> None:
    """Serve the HTTP upload API (OpenAPI at /openapi.json) against DARKROOM_KAFKA_BOOTSTRAP."""
    import uvicorn

    from agents.api.app import api_runtime, create_api
    from agents.api.guards import server_options

    settings = Settings()
    setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (the API joins a running cluster; "
                               "`darkroom up --api` runs everything embedded)")
    root = api_runtime(settings, settings.kafka_bootstrap)
    prepare_cluster(root)
    app = create_api(settings, settings.kafka_bootstrap, root=root)
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


def _register() -> None:
    from agents.cli import assets, config, ops

    for command in (*assets.COMMANDS, *ops.COMMANDS, *config.COMMANDS):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
