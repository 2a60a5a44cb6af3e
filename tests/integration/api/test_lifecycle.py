"""Asset lifecycle over real HTTP: DELETE, PATCH and reprocess against a real worker, the real
broker and a real webhook receiver; what a delete leaves is checked in the files and rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from agents.kafka.producer import OutputProducer
from schemas.records import AssetCommand, AssetUpdate, TaskResult, now_ms
from sinks.webhooks import verify_signature
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import KEY, Api, _skimage_jpeg, jpeg
from tests.integration.streams.test_notifications import Receiver

pytestmark = pytest.mark.integration

PREFIX = "lifetest"
SECRET = "whsec-lifecycle"


@pytest.fixture(scope="module")
def life_worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[WorkerEnv]:
    env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-lifetest",
           "DARKROOM_WEBHOOK_SECRET": SECRET, "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]',
           "DARKROOM_MAX_IMAGE_PIXELS": "4000000"}
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("life"),
                        config=ROOT / "tests/fixtures/pp_lifecycle.yaml", extra_env=env)
    yield wenv
    stop_worker(wenv)


@pytest.fixture(scope="module")
def api(life_worker: WorkerEnv) -> Iterator[Api]:
    a = Api(life_worker, "life-a")
    yield a
    a.stop()


def wait_done(a: Api, asset_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = a.client.get(f"/v1/assets/{asset_id}")
        if r.status_code == 200 and r.json()["status"] != "pending":
            return dict(r.json())
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def wait_for(pred: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def rows_of(engine: sa.Engine, asset_id: str) -> dict[str, int]:
    """Rows naming the asset in every table of the database that has an asset_id column."""
    out = {}
    insp = sa.inspect(engine)
    with engine.connect() as conn:
        for table in insp.get_table_names():
            cols = {c["name"] for c in insp.get_columns(table)}
            if "asset_id" in cols:
                n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE asset_id = :a"),
                                 {"a": asset_id}).scalar_one()
                if n:
                    out[table] = int(n)
    return out


def files_of(wenv: WorkerEnv, asset_id: str) -> list[Path]:
    root = wenv.data_dir / "objects"
    return [p for p in root.rglob("*") if p.is_file() and asset_id in str(p)]


def log_has(wenv: WorkerEnv, text: str) -> bool:
    return wenv.log is not None and text in wenv.log.read_text(errors="replace")


def test_delete_leaves_nothing_of_the_asset(api: Api, life_worker: WorkerEnv,
                                            receiver: Receiver) -> None:
    r = api.upload(_skimage_jpeg("astronaut"), name="me.jpg", folder="/full/del",
                   notification_url=receiver.url + "/hook",
                   eager_notification_url=receiver.url + "/eager")
    assert r.status_code == 202, r.text
    aid = r.json()["asset_id"]
    got = wait_done(api, aid)
    assert got["status"] == "complete", got
    store = life_worker.store()
    engine = store.engine
    # before: everything is there (the index hooks run right after the merge)

    def indexed() -> bool:
        with engine.connect() as conn:
            faces = conn.execute(sa.text("SELECT COUNT(*) FROM faces WHERE asset_id = :a"),
                                 {"a": aid}).scalar_one()
            vectors = conn.execute(sa.text(
                "SELECT COUNT(*) FROM image_similarity WHERE asset_id = :a AND embedding IS "
                "NOT NULL"), {"a": aid}).scalar_one()
        return bool(faces >= 1 and vectors == 1)

    wait_for(indexed, "face and similarity index entries")
    before = files_of(life_worker, aid)
    assert any("/derived/" in str(p) for p in before) and any("/originals/" in str(p)
                                                              for p in before), before
    # the eager renditions were notified once, signed
    eager = receiver.wait("/eager", 1)
    body = json.loads(eager[0]["body"])
    assert body["event"] == "eager.completed" and body["asset_id"] == aid
    assert [x["name"] for x in body["asset"]["renditions"]] == ["thumb", "small"]
    assert verify_signature(eager[0]["body"], eager[0]["headers"], SECRET)
    receiver.wait("/hook", 1)  # asset.completed

    deleted = api.client.delete(f"/v1/assets/{aid}")
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["command"] == "delete" and deleted.json()["command_id"]
    wait_for(lambda: api.client.get(f"/v1/assets/{aid}").status_code == 404, "GET 404")
    assert "was deleted" in api.client.get(f"/v1/assets/{aid}").json()["detail"]

    # storage: neither the original nor a derived object
    assert files_of(life_worker, aid) == []
    # store: only the tombstone and the asset.deleted notice's delivery rows name it
    left = rows_of(engine, aid)
    with engine.connect() as conn:
        live = conn.execute(sa.text(
            "SELECT COUNT(*) FROM image_similarity WHERE asset_id = :a AND (embedding IS NOT "
            "NULL OR phash IS NOT NULL)"), {"a": aid}).scalar_one()
        events = [r[0] for r in conn.execute(sa.text(
            "SELECT event FROM deliveries WHERE asset_id = :a"), {"a": aid})]
    assert live == 0, "no vector or hash of the asset stays in the similarity index"
    assert "faces" not in left, left
    assert set(left) <= {"deleted_assets", "deliveries", "image_similarity"}, left
    assert set(events) == {"asset.deleted"}, events
    cache = life_worker.data_dir / "index" / "similarity.cache.npz"
    assert cache.exists(), "the worker's index cache file"
    with np.load(cache, allow_pickle=False) as z:
        assert aid not in {str(a) for a in z["assets"]}
        assert not np.asarray(z["vecs"]).any(), "no vector bytes of the asset stay in it"
    # the webhook: once, signed, status deleted
    hooks = [h for h in receiver.wait("/hook", 2)
             if json.loads(h["body"])["event"] == "asset.deleted"]
    assert len(hooks) == 1 and verify_signature(hooks[0]["body"], hooks[0]["headers"], SECRET)
    assert json.loads(hooks[0]["body"])["asset"]["status"] == "deleted"

    # a second delete: 404; a replayed command and a late result change nothing
    assert api.client.delete(f"/v1/assets/{aid}").status_code == 404
    p = OutputProducer(life_worker.bootstrap)
    replayed = AssetCommand(asset_id=aid, command="delete", command_id="delete:replayed",
                            issued_at=now_ms())
    p.send(f"{PREFIX}.commands", aid, replayed.to_bytes())
    late = TaskResult(request_id="0" * 32, asset_id=aid, task="blurhash", postprocess="hash",
                      status="ok", data_json=json.dumps({"blurhash": "LEHV6nWB2yk8"}),
                      finished_at=now_ms())
    p.send(f"{PREFIX}.results.blurhash", aid, late.to_bytes())
    p.flush_sync()
    wait_for(lambda: log_has(life_worker, f"delete of {aid}: already deleted"), "replay seen")
    wait_for(lambda: log_has(life_worker, f"result {aid}/hash for a deleted asset dropped"),
             "late result seen")
    assert api.client.get(f"/v1/assets/{aid}").status_code == 404
    assert files_of(life_worker, aid) == []
    assert set(rows_of(engine, aid)) <= {"deleted_assets", "deliveries", "image_similarity"}
    assert len([h for h in receiver.hits("/hook")
                if json.loads(h["body"])["event"] == "asset.deleted"]) == 1
    assert len(receiver.hits("/eager")) == 1


def test_delete_publishes_a_deleted_update(api: Api, life_worker: WorkerEnv,
                                           read_topic: Any) -> None:
    aid = api.upload(jpeg(64, 48), folder="/plain").json()["asset_id"]
    v = wait_done(api, aid)["version"]
    assert api.client.delete(f"/v1/assets/{aid}").status_code == 202
    reader = read_topic(f"{PREFIX}.assets")

    def deleted(msgs: list[Any]) -> bool:
        return any(m.key() == aid.encode() and AssetUpdate.from_bytes(m.value()).status
                   == "deleted" for m in msgs)

    msgs = reader.read_until(deleted, timeout=90)
    ups = [AssetUpdate.from_bytes(m.value()) for m in msgs if m.key() == aid.encode()]
    gone = [u for u in ups if u.status == "deleted"]
    assert len(gone) == 1 and gone[0].version == v + 1
    assert gone[0].tags == [] and gone[0].results_json == "{}" and gone[0].uri == ""


def test_patch_replaces_fields_and_moves_the_version_once(api: Api) -> None:
    aid = api.upload(jpeg(64, 48), folder="/plain", tags="a,b",
                     context="k=v|x=y").json()["asset_id"]
    v0 = wait_done(api, aid)["version"]

    def state() -> dict[str, Any]:
        return dict(api.client.get(f"/v1/assets/{aid}").json())

    r = api.client.patch(f"/v1/assets/{aid}", json={"tags": ["c"]})
    assert r.status_code == 202 and r.json()["command"] == "patch", r.text
    got = wait_for(lambda: (s := state())["tags"] == ["c"] and s, "tags patched")
    assert got["version"] == v0 + 1
    assert got["context"] == {"k": "v", "x": "y"}, "an absent field stays"
    # the same patch again changes nothing; the next one shows the version moved only once
    assert api.client.patch(f"/v1/assets/{aid}", json={"tags": ["c"]}).status_code == 202
    r = api.client.patch(f"/v1/assets/{aid}",
                         json={"context": {"only": "this"}, "metadata": {"rating": 4,
                                                                         "sku": "A-1"}})
    assert r.status_code == 202, r.text
    got = wait_for(lambda: (s := state())["context"] == {"only": "this"} and s, "context")
    assert got["version"] == v0 + 2, "the identical patch moved nothing"
    assert got["metadata"] == {"rating": 4, "sku": "A-1"} and got["tags"] == ["c"]


@pytest.mark.parametrize("body", [
    {"tags": "not-a-list"}, {"colour": "red"}, {"tags": ["x" * 300]},
    {"tags": [f"t{i}" for i in range(101)]}, {"context": {"k": 1}},
    {"metadata": {"nested": {"a": {"b": 1}}}}, {}, [1, 2],
])
def test_invalid_patch_is_422(api: Api, body: Any) -> None:
    aid = api.upload(jpeg(32, 32), folder="/plain").json()["asset_id"]
    r = api.client.patch(f"/v1/assets/{aid}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_unknown_asset_is_404_and_no_key_is_401(api: Api) -> None:
    c = api.client
    assert c.delete("/v1/assets/nope-123").status_code == 404
    assert c.patch("/v1/assets/nope-123", json={"tags": ["a"]}).status_code == 404
    assert c.post("/v1/assets/nope-123/reprocess", json={}).status_code == 404
    import httpx

    with httpx.Client(base_url=api.url, timeout=30) as anon:
        assert anon.delete("/v1/assets/nope-123").status_code == 401
        assert anon.patch("/v1/assets/nope-123", json={"tags": ["a"]}).status_code == 401
        assert anon.post("/v1/assets/nope-123/reprocess", json={}).status_code == 401
    with httpx.Client(base_url=api.url, timeout=30, headers={"X-API-Key": KEY + "x"}) as bad:
        assert bad.delete("/v1/assets/nope-123").status_code == 401


def test_reprocess_reruns_the_chosen_post_process(api: Api, life_worker: WorkerEnv) -> None:
    aid = api.upload(jpeg(80, 60, (10, 120, 200)), folder="/plain").json()["asset_id"]
    v0 = wait_done(api, aid)["version"]
    store = life_worker.store()

    def request_of() -> tuple[str, str]:
        with store.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT request_id, status FROM asset_tasks WHERE "
                                       "asset_id = :a AND postprocess = 'hash'"),
                               {"a": aid}).one()
        return str(row[0]), str(row[1])

    old, _ = request_of()
    assert api.client.post(f"/v1/assets/{aid}/reprocess",
                           json={"postprocesses": ["no-such"]}).status_code == 422
    assert api.client.post(f"/v1/assets/{aid}/reprocess",
                           json={"postprocesses": "hash"}).status_code == 422
    r = api.client.post(f"/v1/assets/{aid}/reprocess", json={"postprocesses": ["hash"]})
    assert r.status_code == 202, r.text
    assert r.json()["postprocesses"] == ["hash"]
    new = wait_for(lambda: (q := request_of())[0] != old and q[1] == "ok" and q, "rerun")
    assert new[0] != old
    got = wait_done(api, aid)
    got = wait_for(lambda: (s := api.client.get(f"/v1/assets/{aid}").json())["version"] > v0
                   and s["status"] == "complete" and s, "new version")
    assert got["results"]["hash"]["status"] == "ok"


def test_cli_patch_reprocess_and_delete(api: Api, life_worker: WorkerEnv) -> None:
    import subprocess
    import sys

    aid = api.upload(jpeg(64, 48), folder="/plain").json()["asset_id"]
    v0 = wait_done(api, aid)["version"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agents.cli", "assets", *args],
                              env=life_worker.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    done = cli("patch", aid, "--tags", "x,y", "--metadata", '{"rating": 5}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("patch:")
    got = wait_for(lambda: (s := api.client.get(f"/v1/assets/{aid}").json())["tags"]
                   == ["x", "y"] and s, "CLI patch applied")
    assert got["metadata"] == {"rating": 5} and got["version"] == v0 + 1
    assert cli("patch", aid).returncode != 0  # nothing to patch
    assert cli("reprocess", aid, "-p", "no-such").returncode != 0
    done = cli("delete", aid)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: api.client.get(f"/v1/assets/{aid}").status_code == 404, "CLI delete")
    again = cli("delete", aid)
    assert again.returncode != 0 and "was deleted" in again.stderr


def test_reprocess_command_on_the_commands_topic(api: Api, life_worker: WorkerEnv) -> None:
    aid = api.upload(jpeg(70, 50, (200, 200, 10)), folder="/plain").json()["asset_id"]
    v0 = wait_done(api, aid)["version"]
    store = life_worker.store()

    def request_of() -> str:
        with store.engine.connect() as conn:
            return str(conn.execute(sa.text(
                "SELECT request_id FROM asset_tasks WHERE asset_id = :a AND postprocess = "
                "'hash' AND status = 'ok'"), {"a": aid}).scalar() or "")

    old = request_of()
    cmd = AssetCommand(asset_id=aid, command="reprocess", command_id="reprocess:topic-1",
                       issued_at=now_ms(), payload=json.dumps({"postprocesses": ["hash"]}))
    p = OutputProducer(life_worker.bootstrap)
    for _ in range(2):  # the second is a replay: applied once
        p.send(f"{PREFIX}.commands", aid, cmd.to_bytes())
    p.flush_sync()
    new = wait_for(lambda: (r := request_of()) not in ("", old) and r, "rerun via command")
    got = wait_for(lambda: (s := api.client.get(f"/v1/assets/{aid}").json())["version"] > v0
                   and s["status"] == "complete" and s, "new version")
    assert got["results"]["hash"]["status"] == "ok"
    with store.engine.connect() as conn:
        applied = conn.execute(sa.text("SELECT COUNT(*) FROM applied_commands WHERE "
                                       "asset_id = :a"), {"a": aid}).scalar_one()
    assert applied == 1 and request_of() == new


@pytest.mark.parametrize("target", [
    "/v1/assets/%00", "/v1/assets/..%2F..%2Fetc%2Fpasswd", "/v1/assets/" + "i" * 10240,
    "/v1/assets/%ff%fe", "/v1/assets/'%20OR%201=1--",
])
def test_odd_ids_and_bodies_never_make_a_server_error(api: Api, target: str) -> None:
    c = api.client
    for r in (c.delete(target), c.patch(target, json={"tags": ["a"]}),
              c.post(target + "/reprocess", json={})):
        assert r.status_code in (400, 404, 414, 422, 431), (target[:40], r.status_code, r.text)
    aid = api.upload(jpeg(16, 16), folder="/plain").json()["asset_id"]
    for body in (b"\xff\xfe", b"[" * 5000, b'{"tags": NaN}', b'{"tags": ["a"]' + b" " * 70000,
                 b"null"):
        r = c.patch(f"/v1/assets/{aid}", content=body,
                    headers={"Content-Type": "application/json"})
        assert r.status_code in (413, 422), (body[:20], r.status_code, r.text)
