"""Commands about assets: ``process`` (files through the pipeline), ``upload`` (to a running
API) and ``asset`` (one asset's merged state)."""

from __future__ import annotations

import json
import mimetypes
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agents.cli.common import iter_files, prepare_cluster
from agents.composition import Runtime
from agents.settings import Settings

if TYPE_CHECKING:
    from agents.ingest import UploadFields


def upload_files(root: Runtime, files: list[Path], fields: UploadFields,
                 ) -> list[tuple[Path, str | None, str | None]]:
    """Ingest each file (:func:`agents.ingest.ingest`: the API's checks, placeholder and
    event); returns (file, asset id, None) per accepted file and (file, None, reason) per
    refused one."""
    from agents.ingest import IngestError, ingest

    out: list[tuple[Path, str | None, str | None]] = []
    for f in files:
        guess = mimetypes.guess_type(f.name)[0]  # only when the bytes say nothing
        try:
            done = ingest(root, f, f.name, fields, fallback_type=guess)
        except IngestError as exc:
            click.echo(f"not uploaded: {f}: {exc.detail}", err=True)
            out.append((f, None, exc.detail))
            continue
        out.append((f, done.asset_id, None))
    return out


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


def check_remote_names(client: Any, names: list[str]) -> None:
    """The API's own check of ``names`` (GET /v1/postprocesses), with the API's wording."""
    from agents.policy.postprocess import unknown_message

    resp = client.get("/v1/postprocesses")
    if resp.status_code != 200:
        raise click.ClickException(f"cannot list the API's post-processes: HTTP "
                                   f"{resp.status_code} {resp.text[:200]}")
    known = list(resp.json()["known"])
    folded = {k.casefold() for k in known}
    unknown = [n for item in names for n in (x.strip() for x in item.split(","))
               if n and n.casefold() not in folded]
    if unknown:
        raise click.UsageError(unknown_message(list(dict.fromkeys(unknown)), known))


def check_names(config: Any, names: list[str]) -> None:
    """Fail before anything is uploaded when a name asks for no post-process or task."""
    unknown = config.unknown_names(names)
    if unknown:
        raise click.UsageError(config.unknown_message(unknown))


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--folder", default="/", help="upload folder path for the assets")
@click.option("--postprocess", "-p", multiple=True, help="also run this post-process (repeatable)")
@click.option("--mode", type=click.Choice(["async", "sync"]), default="async")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per asset line")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for results")
def process(paths: tuple[str, ...], folder: str, postprocess: tuple[str, ...], mode: str,
            as_json: bool, timeout: float) -> None:
    """Upload files/folders through the pipeline, wait, and print what became of them."""
    from agents.ingest import UploadFields
    from agents.kafka.broker import kafka_cluster

    settings = Settings()
    files = list(iter_files(paths))
    if not files:
        raise click.UsageError("no files found")
    try:
        fields = UploadFields(folder=folder, postprocess=list(postprocess),
                              mode="sync" if mode == "sync" else "async").checked()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    # before anything is uploaded
    check_names(Runtime(settings).definitions.config, fields.postprocess)
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with kafka_cluster(settings) as bootstrap, Runtime.open(settings, bootstrap) as root:
        prepare_cluster(root)
        env = {**os.environ, "DARKROOM_KAFKA_BOOTSTRAP": bootstrap}
        with open(logs / "worker.log", "ab") as log_file:
            worker_proc = subprocess.Popen(
                [sys.executable, "-m", "agents.cli", "worker"], env=env,
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            uploaded = upload_files(root, files, fields)
            ids = [aid for _, aid, _ in uploaded if aid is not None]
            deadline = time.monotonic() + timeout
            assets: dict[str, Any] = {}
            while ids and time.monotonic() < deadline:
                assets = root.store.get_assets(ids)
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
    for f, aid, refused in uploaded:
        if aid is None:
            failed = True
            if as_json:
                click.echo(json.dumps({"asset_id": None, "filename": f.name, "status": "refused",
                                       "error": refused, "results": {}}, sort_keys=True))
            else:
                click.echo(f"{'-':<20}  {'refused':<9} {f}\n    error: {refused}")
            continue
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


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--api", "api_url", envvar="DARKROOM_API_URL", default="http://127.0.0.1:8080",
              show_default=True, help="base URL of a running API")
@click.option("--key", envvar="DARKROOM_API_KEY", required=True, help="API key")
@click.option("--folder", default="/")
@click.option("--postprocess", "-p", multiple=True, help="post-process/task name (repeatable)")
@click.option("--sync", is_flag=True, help="wait for the sync post-processes of each upload")
@click.option("--tag", "tags", multiple=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON answer per line")
@click.option("--preset", default=None, help="an upload preset of /v1/presets (its folder and "
              "mode apply unless --folder / --sync are given)")
def upload(files: tuple[Path, ...], api_url: str, key: str, folder: str,
           postprocess: tuple[str, ...], sync: bool, tags: tuple[str, ...],
           as_json: bool, preset: str | None) -> None:
    """Upload FILES to a running API; exits non-zero if any upload was refused or failed."""
    import httpx

    paths = list(iter_files([str(f) for f in files]))
    failed = False
    answers = []
    with (
        httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=None) as client,
        click.progressbar(paths, label="uploading", file=sys.stderr,
                          hidden=as_json or len(paths) < 2) as bar,
    ):
        if postprocess:
            check_remote_names(client, list(postprocess))  # before anything is uploaded
        for path in bar:
            data: dict[str, Any] = {"folder": folder, "mode": "sync" if sync else "async",
                                    "postprocess": list(postprocess), "tags": list(tags)}
            if preset:  # what is not given comes from the preset
                data = {"upload_preset": preset, **{k: v for k, v in data.items() if v and (
                    k not in ("folder", "mode") or v not in ("/", "async"))}}
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


@click.command()
@click.argument("asset_id")
def asset(asset_id: str) -> None:
    """Print one asset's merged state as JSON."""
    from agents.api.app import public_delivery

    with Runtime.open(Settings()) as root:
        found = root.store.get_asset(asset_id)
        if found is None:
            raise click.ClickException(f"no asset {asset_id}")
        body = {**found.to_json(),
                "webhooks": [public_delivery(d) for d in root.store.deliveries_of(asset_id)]}
    click.echo(json.dumps(body, indent=2, sort_keys=True))


@click.group()
def assets() -> None:
    """An asset's lifecycle: delete, patch, reprocess (applied by the workers' sink)."""


def _known(root: Runtime, asset_id: str) -> Any:
    from sinks.store.lifecycle import tombstone

    found = root.store.get_asset(asset_id)
    if found is None:
        gone = tombstone(root.store, asset_id) is not None
        raise click.ClickException(f"asset {asset_id} was deleted" if gone
                                   else f"no asset {asset_id}")
    return found


@assets.command("delete")
@click.argument("asset_id")
def delete_cmd(asset_id: str) -> None:
    """Delete ASSET_ID: original, derived objects, index entries, store rows; one
    asset.deleted webhook. Prints the command id."""
    from agents.streams.lifecycle import publish_command

    with Runtime.open(Settings()) as root:
        _known(root, asset_id)
        click.echo(publish_command(root, asset_id, "delete", {}, "cli"))


@assets.command("patch")
@click.argument("asset_id")
@click.option("--tags", help="comma-separated; replaces the asset's tags ('' clears them)")
@click.option("--context", "context_text", help="key=value|key2=value2 or a JSON object; "
              "replaces the asset's context")
@click.option("--metadata", "metadata_json", help="a JSON object; replaces the metadata")
def patch_cmd(asset_id: str, tags: str | None, context_text: str | None,
              metadata_json: str | None) -> None:
    """Replace tags, context and/or metadata of ASSET_ID (each given one wholly)."""
    from agents.ingest import parse_context, split_list
    from agents.streams.lifecycle import patch_changes, publish_command

    body: dict[str, Any] = {}
    try:
        if tags is not None:
            body["tags"] = split_list([tags]) if tags else []
        if context_text is not None:
            body["context"] = parse_context(context_text) if context_text else {}
        if metadata_json is not None:
            body["metadata"] = json.loads(metadata_json)
        changes = patch_changes(body)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not changes:
        raise click.UsageError("nothing to patch: give --tags, --context and/or --metadata")
    with Runtime.open(Settings()) as root:
        _known(root, asset_id)
        click.echo(publish_command(root, asset_id, "patch", changes, "cli"))


@assets.command("reprocess")
@click.argument("asset_id")
@click.option("--postprocess", "-p", multiple=True, help="rerun only this one (repeatable)")
def reprocess_cmd(asset_id: str, postprocess: tuple[str, ...]) -> None:
    """Run post-processes of ASSET_ID again as new requests (default: all that apply)."""
    from agents.streams.lifecycle import publish_reprocess, reprocess_problem

    names = list(dict.fromkeys(postprocess))
    with Runtime.open(Settings()) as root:
        found = _known(root, asset_id)
        problem = reprocess_problem(root, found, names)
        if problem is not None:
            raise click.ClickException(problem[1])
        click.echo(publish_reprocess(root, found, names))


COMMANDS = (process, upload, asset, assets)
