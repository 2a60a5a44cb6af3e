"""Moderation end to end: a real worker, the real API over HTTP, webhooks to a local receiver.

An upload with ``moderation=manual`` waits in the queue with its on_success held back; a
reviewer's approval (applied by the sink) runs it and sends ``asset.moderated``; a rejection
deletes the objects. A ``moderate`` rule on the NSFW score holds the synthetic positive and not a
clean photo; a sync upload held by such a rule is answered 202 with ``moderation: pending``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from agents.api.guards import hash_key
from tests.conftest import ROOT, TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import KEY, Api, _skimage_jpeg, stored_objects
from tests.integration.streams.test_notifications import Receiver

pytestmark = pytest.mark.integration

POSITIVE = (ROOT / "tests/data/vectors/nsfw/synthetic-positive.png").read_bytes()
TAG_SCRIPT = "current_asset.update({tags: e.upload_info.tags.concat(['approved-run'])})"


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerEnv]:
    base = tmp_path_factory.mktemp("moderation")
    env = {"DARKROOM_TOPIC_PREFIX": "modtest", "DARKROOM_WORKER_ID": "darkroom-modtest",
           "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]', "DARKROOM_WEBHOOK_SECRET": "s"}
    w = start_worker(kafka_bootstrap, base, config=ROOT / "tests/fixtures/pp_moderation.yaml",
                     extra_env=env)
    yield w
    stop_worker(w)


@pytest.fixture(scope="module")
def api(worker: WorkerEnv) -> Iterator[Api]:
    a = Api(worker, "mod-api",
            extra={"DARKROOM_API_KEY_HASHES": json.dumps([f"alice:{hash_key(KEY)}"])})
    yield a
    a.stop()


def jpeg(color: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), color).save(buf, "JPEG")
    return buf.getvalue()


def wait_json(api: Api, aid: str, done: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = api.client.get(f"/v1/assets/{aid}")
        if r.status_code == 200:
            body = r.json()
            if done(body):
                return body
        time.sleep(0.2)
    raise AssertionError(f"asset {aid} not done: {body}")


def moderation_of(body: dict[str, Any]) -> str | None:
    m = body.get("moderation")
    return None if m is None else str(m["status"])


def queue_ids(api: Api, **params: Any) -> list[str]:
    r = api.client.get("/v1/moderation", params=params)
    assert r.status_code == 200, r.text
    return [a["asset_id"] for a in r.json()["items"]]


def test_manual_approval_runs_on_success_and_notifies(api: Api, receiver: Receiver) -> None:
    r = api.upload(jpeg(), folder="/review/a", moderation="manual", tags="up",
                   on_success=TAG_SCRIPT, notification_url=receiver.url + "/approve")
    assert r.status_code == 202, r.text
    assert r.json()["moderation"] == "pending"
    aid = r.json()["asset_id"]
    held = wait_json(api, aid, lambda b: b["status"] == "complete")
    assert moderation_of(held) == "pending"
    assert held["on_success"] is None and "approved-run" not in held["tags"]  # held back
    assert aid in queue_ids(api, folder="/review")
    assert aid not in queue_ids(api, folder="/elsewhere")

    r = api.client.post(f"/v1/assets/{aid}/moderation",
                        json={"status": "approved", "note": "looks fine"})
    assert r.status_code == 202, r.text
    assert r.json()["decided_by"] == "alice"
    done = wait_json(api, aid, lambda b: moderation_of(b) == "approved"
                     and b["on_success"] is not None)
    assert "approved-run" in done["tags"]  # on_success ran after the approval, once
    m = done["moderation"]
    assert m["decided_by"] == "alice" and m["note"] == "looks fine"
    assert [h["status"] for h in m["history"]] == ["approved"] and m["history"][0]["at"] > 0
    hooks = receiver.wait("/approve", 3)
    events = [json.loads(h["body"])["event"] for h in hooks]
    assert events.count("asset.moderated") == 1, events
    assert aid not in queue_ids(api)
    assert aid in queue_ids(api, status="approved")
    # the same decision again is refused; nothing moves
    version = done["version"]
    again = api.client.post(f"/v1/assets/{aid}/moderation", json={"status": "approved"})
    assert again.status_code == 409
    time.sleep(2)
    assert api.client.get(f"/v1/assets/{aid}").json()["version"] == version
    assert [json.loads(h["body"])["event"] for h in receiver.hits("/approve")].count(
        "asset.moderated") == 1


def test_rejection_deletes_the_objects(api: Api, worker: WorkerEnv,
                                       receiver: Receiver) -> None:
    r = api.upload(jpeg((200, 10, 10)), name="bad.jpg", moderation="manual",
                   on_success=TAG_SCRIPT, notification_url=receiver.url + "/reject")
    aid = r.json()["asset_id"]
    wait_json(api, aid, lambda b: b["status"] == "complete")
    assert any(aid in str(p) for p in stored_objects(worker))
    r = api.client.post(f"/v1/assets/{aid}/moderation", json={"status": "rejected",
                                                              "note": "spam"})
    assert r.status_code == 202, r.text
    done = wait_json(api, aid, lambda b: moderation_of(b) == "rejected")
    assert done["uri"] == "" and not any(aid in str(p) for p in stored_objects(worker))
    assert done["on_success"] is None and "approved-run" not in done["tags"]
    hooks = receiver.wait("/reject", 2)
    assert "asset.moderated" in [json.loads(h["body"])["event"] for h in hooks]
    # a rejection is final
    assert api.client.post(f"/v1/assets/{aid}/moderation",
                           json={"status": "approved"}).status_code == 409


def test_decisions_are_validated(api: Api) -> None:
    aid = api.upload(jpeg(), moderation="manual").json()["asset_id"]
    assert api.client.post(f"/v1/assets/{aid}/moderation",
                           json={"status": "maybe"}).status_code == 422
    assert api.client.post(f"/v1/assets/{aid}/moderation",
                           json={"status": "approved", "extra": 1}).status_code == 422
    assert api.client.post("/v1/assets/nope/moderation",
                           json={"status": "approved"}).status_code == 404
    assert api.upload(jpeg(), moderation="nsfw").status_code == 400  # no such post-process
    assert api.upload(jpeg(), moderation="validate-image").status_code == 400  # no moderate rule
    anon = api.client.post(f"/v1/assets/{aid}/moderation", json={"status": "approved"},
                           headers={"X-API-Key": "wrong"})
    assert anon.status_code == 401
    assert api.client.get("/v1/moderation", headers={"X-API-Key": "wrong"}).status_code == 401
    assert api.client.get("/v1/moderation", params={"cursor": "x"}).status_code == 400


def test_a_moderate_rule_holds_the_nsfw_positive_and_not_a_clean_photo(api: Api) -> None:
    positive = api.upload(POSITIVE, name="p.png", postprocess="nsfw-review").json()["asset_id"]
    clean = api.upload(_skimage_jpeg("coffee"), name="c.jpg",
                       postprocess="nsfw-review").json()["asset_id"]
    pos = wait_json(api, positive, lambda b: b["status"] == "complete")
    cln = wait_json(api, clean, lambda b: b["status"] == "complete")
    assert moderation_of(pos) == "pending"
    assert pos["moderation"]["reasons"] and not pos["notices"]
    assert moderation_of(cln) is None
    pending = queue_ids(api, limit=200)
    assert positive in pending and clean not in pending


def test_moderation_by_a_post_process_approves_what_passes(api: Api) -> None:
    clean = api.upload(_skimage_jpeg("coffee"), name="c2.jpg",
                       moderation="nsfw-review").json()["asset_id"]
    body = wait_json(api, clean, lambda b: b["status"] == "complete")
    assert "nsfw-review" in body["results"]  # the deciding post-process ran
    assert moderation_of(body) == "approved"
    assert body["moderation"]["decided_by"] == "postprocess:nsfw-review"


def test_a_sync_upload_held_by_a_rule_is_answered_202(api: Api) -> None:
    r = api.upload(POSITIVE, name="s.png", mode="sync", postprocess="nsfw-gate")
    assert r.status_code == 202, r.text
    assert r.json()["moderation"] == "pending"
    clean = api.upload(_skimage_jpeg("coffee"), name="s.jpg", mode="sync",
                       postprocess="nsfw-gate")
    assert clean.status_code == 201, clean.text
    assert clean.json()["moderation"] is None


def test_queue_pages_oldest_first(api: Api) -> None:
    ids = [api.upload(jpeg((i, i, i)), folder="/paged", moderation="manual").json()["asset_id"]
           for i in range(5)]
    for aid in ids:
        wait_json(api, aid, lambda b: b["status"] == "complete")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"folder": "/paged", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/moderation", params=params).json()
        seen += [a["asset_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


@pytest.mark.parametrize(("name", "fields", "words"), [
    ("bad-status", {"payload": '{"status": "maybe"}'}, ("status",)),
    ("not-an-object", {"payload": "[1, 2]"}, ("payload",)),
    ("not-json", {"payload": "{nope"}, ("payload",)),
    ("no-command-id", {"payload": '{"status": "approved"}', "command_id": ""}, ("command_id",)),
    ("unknown-kind", {"command": "explode"}, ("command",)),
])
def test_hostile_moderation_commands_are_dead_lettered(
        api: Api, worker: WorkerEnv, name: str, fields: dict[str, str],
        words: tuple[str, ...]) -> None:
    from schemas.records import AssetCommand, DeadLetter, now_ms
    from tests.integration.streams.test_poison_pipeline import _at, produce

    aid = api.upload(jpeg(), moderation="manual").json()["asset_id"]
    wait_json(api, aid, lambda b: b["status"] == "complete")
    base = {"asset_id": aid, "command": "moderation", "message": "x", "issued_by": "mallory",
            "issued_at": now_ms(), "command_id": f"hostile-{name}"}
    cmd = AssetCommand(**{**base, **fields})  # type: ignore[arg-type]
    sent = produce(worker.bootstrap, "modtest.commands", aid.encode(), cmd.to_bytes())
    reader = TopicReader(worker.bootstrap, "modtest.dlq.results")
    try:
        msgs = reader.read_until(lambda ms: any(_at(m, sent) for m in ms), 60)
        dl = next(DeadLetter.from_bytes(m.value()) for m in msgs if _at(m, sent))
    finally:
        reader.close()
    assert any(w in dl.error.lower() for w in words), dl.error
    body = api.client.get(f"/v1/assets/{aid}").json()
    assert body["moderation"]["status"] == "pending" and body["moderation"]["history"] == []
    # the sink goes on: a real decision after it is applied
    assert api.client.post(f"/v1/assets/{aid}/moderation",
                           json={"status": "approved"}).status_code == 202
    wait_json(api, aid, lambda b: moderation_of(b) == "approved")
