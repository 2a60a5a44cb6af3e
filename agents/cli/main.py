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
    closes ``root`` at the end. First it joins the deployment's members (``agents.members``):
    a live worker of the same topic prefix on another database or object storage makes it
    refuse to start (exit status 1, the message names the fix)."""
    from faust.worker import Worker

    from agents.members import Membership, SplitRefused
    from agents.streams.app import create_app

    settings = root.settings
    members = Membership(root)
    try:
        try:
            members.join()
        except SplitRefused as exc:
            raise click.ClickException(str(exc)) from None
        app = create_app(root)
        worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
        worker.on_setup_root_logger = lambda *_a, **_k: setup_logging(  # type: ignore[method-assign]
            settings)
        worker.execute_from_commandline()
    finally:
        members.leave()  # the agents have stopped; the broker is still there to hear it
        root.close()


@click.group()
def main() -> None:
    """Darkroom: upload post-processing on Kafka."""


@main.command()
@click.option("--api", "with_api", is_flag=True,
              help="also serve the HTTP upload API (a key is generated unless configured)")
@click.option("--open", "open_console", is_flag=True,
              help="with --api: open the web console in a browser once the API answers")
def up(with_api: bool, open_console: bool) -> None:
    """Embedded broker (unless DARKROOM_KAFKA_BOOTSTRAP is set) + all agents in this process."""
    from agents.kafka.broker import kafka_cluster

    settings = Settings()
    setup_logging(settings)
    with kafka_cluster(settings) as bootstrap:
        root = Runtime.build(settings, bootstrap)
        prepare_cluster(root)
        api_proc = _start_api(settings, bootstrap, open_console) if with_api else None
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


def _start_api(settings: Settings, bootstrap: str,
               open_console: bool = False) -> subprocess.Popen[bytes]:
    """`darkroom api` as a child process of `up`; prints where it listens (the console at
    ``/``) and a key; ``open_console``: opens the console in a browser once it answers."""
    import secrets

    from agents.api.app import hash_key

    env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": bootstrap}
    if not settings.api_key_hashes:
        key = "drk_" + secrets.token_urlsafe(24)
        env["DARKROOM_API_KEY_HASHES"] = json.dumps([hash_key(key)])
        click.echo(f"API key:         {key}  (generated for this run; set "
                   "DARKROOM_API_KEY_HASHES to keep your own)")
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{host}:{settings.api_port}"
    click.echo(f"upload API:      {url}  (docs at {url}/docs)")
    if settings.api_console:
        click.echo(f"web console:     {url}/  (log in with the API key)")
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "api"], env=env)
    if open_console and settings.api_console:
        import threading

        threading.Thread(target=_open_when_up, args=(url,), daemon=True).start()
    return proc


def _open_when_up(url: str, timeout_s: float = 60.0) -> None:
    """Open the console in the default browser once ``/healthz`` answers."""
    import time
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                webbrowser.open(f"{url}/")
                return
        except OSError:
            time.sleep(0.5)


@main.command()
def worker() -> None:
    """One worker joining the cluster named by DARKROOM_KAFKA_BOOTSTRAP."""
    settings = Settings()
    setup_logging(settings)
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP (or use `darkroom up` for embedded)")
    root = Runtime.build(settings, settings.kafka_bootstrap)
    # a broker that lost its log under this worker: start afresh in place (agents.streams.sweeper)
    root.reexec_argv = [sys.executable, "-m", "agents.cli", "worker"]
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
