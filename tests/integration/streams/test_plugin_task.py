"""A task is one module: an out-of-tree plugin, on the real broker, with no project file edited.

The test writes a plugin package into a temporary folder — one module whose single
``register(...)`` declares an info key, a tag, a result hook and an HTTP route, plus a
``*.dist-info`` folder whose ``entry_points.txt`` names the module in the ``darkroom.processors``
group — and puts the folder on the PYTHONPATH of a worker and an API process (this test process
never imports it). An upload that asks for the task by name (over HTTP, and over Kafka) runs it
without any YAML entry; the asset gets the info key and the tag, the hook's row and notice are
there, and the route answers over HTTP with the API key (401 without).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.kafka.producer import OutputProducer
from processors.registry import load_all
from schemas.records import AssetUpdate, UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import DEFAULT_CONFIG, ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import Api, jpeg

pytestmark = pytest.mark.integration

TASK = "plugin-measure"
PREFIX = "plugintest"

PLUGIN = '''\
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException

from processors.registry import (
    HookOutcome, InputSpec, ResultEvent, RouteContext, TaskInput, register,
)

def remember(event: ResultEvent) -> HookOutcome:
    """Result hook: the sink calls it after merging an ok result (again on a changed replay)."""
    with event.services.engine.begin() as conn:          # services: engine, data_dir, settings
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS plugin_measure_seen (asset_id VARCHAR"
                             "(200) PRIMARY KEY, postprocess VARCHAR(200), pixels INTEGER)"))
        conn.execute(sa.text("INSERT INTO plugin_measure_seen VALUES (:a, :p, :n) ON CONFLICT "
                             "(asset_id) DO UPDATE SET postprocess = :p, pixels = :n"),
                     {"a": event.asset_id, "p": event.postprocess, "n": event.data["pixels"]})
    return HookOutcome(notices=(f"{event.task} saw {event.data['pixels']} pixels",))

def routes(ctx: RouteContext) -> APIRouter:
    """Route factory: the API calls it once at start and mounts the router."""
    router = APIRouter(prefix="/v1/plugin", dependencies=list(ctx.auth))   # the API-key check

    @router.get("/{asset_id}")
    def seen(asset_id: str) -> dict[str, Any]:
        with ctx.services().engine.connect() as conn:
            row = conn.execute(sa.text("SELECT postprocess, pixels FROM plugin_measure_seen "
                                       "WHERE asset_id = :a"), {"a": asset_id}).first()
        if row is None:
            raise HTTPException(404, f"{asset_id} not measured")
        return {"asset_id": asset_id, "postprocess": row[0], "pixels": row[1]}

    return router

@register(
    "plugin-measure",
    version="1.0",
    input=InputSpec(kind="header"),         # or kind="image", max_side=512 / kind="file"
    info={"plugin_pixels": "pixels"},       # info key <- result field (or a callable(result))
    tags=lambda result: [f"plugin-{result['shape']}"],  # or a result field holding a list
    hooks=[remember],                       # callables or "package.module:attribute" strings
    routes=[routes],                        # idem
)
def measure(inp: TaskInput, params: Any) -> dict[str, Any]:
    """Pixel count and shape of the image."""
    w, h = int(inp.properties["width"]), int(inp.properties["height"])
    return {"pixels": w * h, "shape": "landscape" if w > h else "portrait"}   # JSON-able
'''


def write_plugin(root: Path) -> Path:
    """The plugin as pip would install it: the module and its dist-info with the entry point."""
    root.mkdir(parents=True)
    (root / "darkroom_plugin_measure.py").write_text(PLUGIN)
    info = root / "darkroom_plugin_measure-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: darkroom-plugin-measure\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[darkroom.processors]\nmeasure = darkroom_plugin_measure\n")
    return root


@pytest.fixture(scope="module")
def plugin_env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[WorkerEnv, Api]]:
    base = tmp_path_factory.mktemp("plugin")
    plugins = write_plugin(base / "site")
    path = os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)
    # the shipped configuration (no entry for the plugin); own topics and consumer group
    env = {"PYTHONPATH": path, "DARKROOM_TOPIC_PREFIX": PREFIX,
           "DARKROOM_WORKER_ID": "darkroom-plugintest"}
    wenv = start_worker(kafka_bootstrap, base, config=DEFAULT_CONFIG, extra_env=env)
    api = Api(wenv, "plugin-api")
    yield wenv, api
    api.stop()
    stop_worker(wenv)


def wait_done(api: Api, asset_id: str, timeout: float = 90) -> dict[str, Any]:
    """The asset once final and its plugin result's hook has run: the hook's notice is
    committed right after the merge that made the asset final, so a poll can fall between."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.client.get(f"/v1/assets/{asset_id}")
        got = r.json() if r.status_code == 200 else {}
        if got.get("status") not in (None, "pending") and (
                got["results"].get(TASK, {}).get("status") != "ok"
                or any(n.startswith(f"{TASK} saw") for n in got["notices"])):
            return dict(got)
        assert r.status_code in (200, 404), r.text  # 404: not routed yet (Kafka uploads)
        time.sleep(0.3)
    raise AssertionError(f"{asset_id} not done in {timeout}s: {r.text}")


def check_plugin_effects(api: Api, got: dict[str, Any], pixels: int, shape: str,
                         own_tags: list[str]) -> None:
    asset_id = got["asset_id"]
    assert got["status"] == "complete", got["results"]
    assert got["unknown_postprocesses"] == []
    result = got["results"][TASK]
    assert result["status"] == "ok" and result["data"] == {"pixels": pixels, "shape": shape}
    assert {"validate-image", "blurhash", "dominant-colors"} <= set(got["results"])
    # info key and tag, as declared; the tag after the upload's own
    assert got["info"]["plugin_pixels"] == pixels
    assert got["info"]["width"] * got["info"]["height"] == pixels
    assert got["tags"] == [*own_tags, f"plugin-{shape}"]
    # the hook: its notice on the asset, its row behind the plugin's route
    assert f"{TASK} saw {pixels} pixels" in got["notices"]
    r = api.client.get(f"/v1/plugin/{asset_id}")
    assert r.status_code == 200, r.text
    assert r.json() == {"asset_id": asset_id, "postprocess": TASK, "pixels": pixels}
    anonymous = httpx.get(f"{api.url}/v1/plugin/{asset_id}", timeout=30)
    assert anonymous.status_code == 401, anonymous.text


def test_the_plugin_is_outside_this_process_and_in_the_readme() -> None:
    assert TASK not in load_all()
    # README "Adding a task" shows exactly the module this test installs
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Adding a task"):]
    start = section.index("```python\n") + len("```python\n")
    assert section[start:section.index("```\n", start)] == PLUGIN


def test_a_plugin_task_asked_for_by_name_over_http(plugin_env: tuple[WorkerEnv, Api],
                                                   read_topic: Any) -> None:
    _, api = plugin_env
    r = api.upload(jpeg(320, 200), folder="/plugin", tags="mine", postprocess=TASK)
    assert r.status_code == 202, r.text
    asset_id = r.json()["asset_id"]
    got = wait_done(api, asset_id)
    check_plugin_effects(api, got, 320 * 200, "landscape", ["mine"])
    # the sink's own AssetUpdates carry the declared info and tag too
    reader = read_topic(f"{PREFIX}.assets")

    def final(ms: list[Any]) -> list[AssetUpdate]:
        return [u for m in ms if m.key() == asset_id.encode()
                and (u := AssetUpdate.from_bytes(m.value())).status == "complete"]

    last = final(reader.read_until(lambda ms: bool(final(ms))))[-1]
    assert json.loads(last.info_json)["plugin_pixels"] == 320 * 200
    assert "plugin-landscape" in last.tags
    # the route is part of the API: documented, behind the key, 404 for what it never saw
    assert "/v1/plugin/{asset_id}" in api.client.get("/openapi.json").json()["paths"]
    assert api.client.get("/v1/plugin/never-uploaded").status_code == 404


def test_a_plugin_task_asked_for_by_name_over_kafka(plugin_env: tuple[WorkerEnv, Api]) -> None:
    wenv, api = plugin_env
    path = wenv.inbox / "tall.jpg"
    path.write_bytes(jpeg(90, 160))
    ev = UploadEvent(asset_id=uuid.uuid4().hex[:16], uri=LocalStorage.uri_for(path),
                     filename=path.name, folder="/plugin", content_type="image/jpeg",
                     uploaded_at=now_ms(), postprocess=[TASK.upper()], tags=["k"])
    producer = OutputProducer(wenv.bootstrap)
    producer.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    producer.flush_sync()
    got = wait_done(api, ev.asset_id)
    check_plugin_effects(api, got, 90 * 160, "portrait", ["k"])
