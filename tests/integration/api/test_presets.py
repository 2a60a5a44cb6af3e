"""Post-process definitions and upload presets over HTTP, seen by every worker without a restart.

Two workers share one database and one object folder: the first runs the task agents and the
sink, the second the router only, so an upload planned with a new definition was planned by the
second worker and judged (its validation rules) by the first; both were started before the
definition existed. Two API replicas: one where any key may write, one where only an admin key
may; a definition written through one is used by an upload through the other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.api.app import hash_key
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import KEY, Api, _wait_done, jpeg

pytestmark = pytest.mark.integration

ADMIN = "admin-key-456"


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[WorkerEnv, WorkerEnv]]:
    base = tmp_path_factory.mktemp("presets")
    env = {"DARKROOM_TOPIC_PREFIX": "presettest", "DARKROOM_WORKER_ID": "darkroom-presettest",
           "DARKROOM_DATA_DIR": str(base / "shared"), "DARKROOM_MAX_IMAGE_PIXELS": "4000000",
           # no polling within the test: only the versions the events carry can make the
           # workers see a change (the ordering guarantee, not a timing)
           "DARKROOM_DEFINITIONS_POLL_MS": "3600000"}
    config = ROOT / "tests/fixtures/pp_api.yaml"
    tasks = start_worker(kafka_bootstrap, base / "w1", config=config,
                         extra_env={**env, "DARKROOM_AGENTS": '["tasks", "sink"]'})
    router = start_worker(kafka_bootstrap, base / "w2", config=config,
                          extra_env={**env, "DARKROOM_AGENTS": '["router"]'})
    yield tasks, router
    stop_worker(router)
    stop_worker(tasks)


@pytest.fixture(scope="module")
def apis(cluster: tuple[WorkerEnv, WorkerEnv]) -> Iterator[tuple[Api, Api]]:
    tasks, _router = cluster
    a = Api(tasks, "presets-a", start_s=120)
    b = Api(tasks, "presets-b", start_s=120, extra={
        "DARKROOM_API_KEY_HASHES": json.dumps([hash_key(KEY), hash_key(ADMIN)]),
        "DARKROOM_API_ADMIN_KEY_HASHES": json.dumps([hash_key(ADMIN)])})
    yield a, b
    a.stop()
    b.stop()


def _done(api: Api, asset_id: str, tasks: WorkerEnv, router: WorkerEnv) -> dict[str, Any]:
    for w in (tasks, router):
        assert w.proc is not None and w.proc.poll() is None, w.log_tail()
    return _wait_done(api, asset_id)


def test_a_definition_created_over_http_is_used_by_the_next_upload_on_the_other_workers(
        apis: tuple[Api, Api], cluster: tuple[WorkerEnv, WorkerEnv]) -> None:
    a, b = apis
    tasks, router = cluster
    # both workers are up and hold the YAML set before the definition exists
    first = a.upload(jpeg(320, 200), folder="/fresh/before")
    assert first.status_code == 202, first.text
    before = _done(a, first.json()["asset_id"], tasks, router)
    assert "fresh-hash" not in before["results"]

    definition = {"name": "fresh-hash", "task": "blurhash",
                  "params": {"x_components": 2, "y_components": 2},
                  "trigger": "folder path starts with '/fresh'",
                  "validation": ["width is smaller than 500 => notice"]}
    made = a.client.post("/v1/postprocesses", json=definition)
    assert made.status_code == 201, made.text
    assert made.json()["version"] == 1 and made.json()["source"] == "api"
    assert made.json()["definitions_version"] >= 1
    assert a.client.post("/v1/postprocesses", json=definition).status_code == 409
    got = b.client.get("/v1/postprocesses/FRESH-HASH")
    assert got.status_code == 200 and got.json()["definition"]["task"] == "blurhash"
    listed = b.client.get("/v1/postprocesses").json()
    assert {"name": "fresh-hash", "task": "blurhash", "enabled": True, "mode": "async",
            "source": "api"} in listed["items"]

    # through the other replica, planned by the router-only worker, judged by the tasks one
    up = b.upload(jpeg(320, 200), folder="/fresh/after")
    assert up.status_code == 202, up.text
    asset = _done(b, up.json()["asset_id"], tasks, router)
    result = asset["results"]["fresh-hash"]
    assert result["status"] == "ok", result
    assert [v["rule"] for v in result["verdicts"]] == ["width is smaller than 500"]

    # replaced (version 2): the next upload gets the new parameters and rules at once
    definition["validation"] = [{"rule": "width is smaller than 1000", "action": "notice",
                                 "message": "replaced rule held"}]
    put = a.client.put("/v1/postprocesses/fresh-hash", json=definition)
    assert put.status_code == 200 and put.json()["version"] == 2, put.text
    up = b.upload(jpeg(320, 200), folder="/fresh/replaced")
    asset = _done(b, up.json()["asset_id"], tasks, router)
    assert "replaced rule held" in asset["notices"], asset["notices"]

    # a stored definition overrides a YAML entry of the same name; deleting it restores it
    override = a.client.put("/v1/postprocesses/hash", json={
        "task": "blurhash", "trigger": "folder path starts with '/nowhere'"})
    assert override.status_code == 201, override.text
    up = b.upload(jpeg(320, 200), folder="/plain")
    assert "hash" not in _done(b, up.json()["asset_id"], tasks, router)["results"]
    assert a.client.delete("/v1/postprocesses/hash").status_code == 204
    assert a.client.delete("/v1/postprocesses/hash").status_code == 409  # YAML only now
    up = b.upload(jpeg(320, 200), folder="/plain")
    assert _done(b, up.json()["asset_id"], tasks, router)["results"]["hash"]["status"] == "ok"


def test_an_invalid_definition_answers_422_with_the_checkers_message(
        apis: tuple[Api, Api]) -> None:
    a, _ = apis
    cases: list[tuple[Any, str]] = [
        ({"name": "bad-1", "task": "blurhash", "trigger": "widht is larger than 5"},
         "trigger: unknown property 'widht'"),
        ({"name": "bad-2", "task": "no-such-task"}, "task: unknown task 'no-such-task'"),
        ({"name": "bad-3", "task": "blurhash", "params": {"x_components": 99}},
         "params.x_components"),
        ({"name": "bad-4", "task": "blurhash", "validation": ["width > 5 => refuse"]},
         "needs mode: sync"),
        ({"name": "bad 5", "task": "blurhash"}, "name: invalid name"),
        ({"name": "bad-6", "task": "blurhash", "colour": "red"}, "unknown key 'colour'"),
        (["not", "an", "object"], "JSON object"),
    ]
    for body, message in cases:
        r = a.client.post("/v1/postprocesses", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert message in detail and "line" not in detail, (body, detail)
    r = a.client.post("/v1/postprocesses", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    assert a.client.get("/v1/postprocesses/bad-1").status_code == 404
    assert a.client.put("/v1/postprocesses/never-made", json={"task": "blurhash"}
                        ).status_code == 404


def test_a_preset_applies_its_defaults_and_post_processes(
        apis: tuple[Api, Api], cluster: tuple[WorkerEnv, WorkerEnv], tmp_path: Path) -> None:
    a, b = apis
    tasks, router = cluster
    manual = {"name": "preset-colors", "task": "dominant-colors", "enabled": False,
              "mode": "sync"}
    assert a.client.post("/v1/postprocesses", json=manual).status_code == 201
    preset = {"name": "catalog", "postprocesses": ["preset-colors"], "folder": "/catalog/in",
              "tags": ["from-preset"], "context": {"source": "preset"}, "mode": "sync"}
    # writing needs the admin key on replica b; any key on replica a
    assert b.client.post("/v1/presets", json=preset).status_code == 403
    admin = httpx.Client(base_url=b.url, headers={"X-API-Key": ADMIN}, timeout=60)
    made = admin.post("/v1/presets", json=preset)
    assert made.status_code == 201 and made.json()["version"] == 1, made.text
    assert admin.post("/v1/presets", json=preset).status_code == 409
    for body, message in [
        ({"name": "p2", "postprocesses": ["nope"]}, "unknown post-process name: nope"),
        ({"name": "p2", "folder": "/a/../b"}, "folder"),
        ({"name": "p2", "mode": "later"}, "mode"),
    ]:
        r = admin.post("/v1/presets", json=body)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    admin.close()
    assert a.client.get("/v1/presets").json()["items"][0]["name"] == "catalog"

    r = a.upload(jpeg(320, 200), upload_preset="catalog", tags="own",
                 context="owner=ana")
    assert r.status_code == 201, r.text  # the preset made it sync
    asset = r.json()["asset"]
    assert asset["folder"] == "/catalog/in"
    assert asset["tags"] == ["from-preset", "own"]
    assert asset["context"] == {"source": "preset", "owner": "ana"}
    assert asset["results"]["preset-colors"]["status"] == "ok"
    # what the upload sets wins over the preset
    r = a.upload(jpeg(320, 200), upload_preset="catalog", folder="/mine", mode="async")
    assert r.status_code == 202, r.text
    asset = _done(a, r.json()["asset_id"], tasks, router)
    assert asset["folder"] == "/mine" and "preset-colors" in asset["results"]

    # the command line: what it is not told comes from the preset
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(320, 200))
    out = subprocess.run(
        [sys.executable, "-m", "agents.cli", "upload", str(photo), "--api", a.url,
         "--key", KEY, "--preset", "catalog", "--tag", "cli", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["http_status"] == 201 and answer["asset"]["folder"] == "/catalog/in"
    assert answer["asset"]["tags"] == ["from-preset", "cli"]

    # a preset in use keeps its post-processes; unknown presets are refused
    assert a.client.delete("/v1/postprocesses/preset-colors").status_code == 409
    r = a.upload(jpeg(32, 32), upload_preset="nope")
    assert r.status_code == 400 and "unknown upload_preset 'nope'" in r.json()["detail"]
    put = a.client.put("/v1/presets/catalog", json={**preset, "tags": ["v2"]})
    assert put.status_code == 200 and put.json()["version"] == 2
    assert a.client.delete("/v1/presets/catalog").status_code == 204
    assert a.client.get("/v1/presets/catalog").status_code == 404
