"""Exact versions and an at-least-once assets topic, on the real broker: a version per observable
change, the final state published once, a replay that adds one result moves the version once,
and a worker killed between a merge's commit and its send leaves no version missing from
`darkroom.assets`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.kafka.producer import OutputProducer
from schemas.records import AssetUpdate, UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "vers"
ENV = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-vers",
       "DARKROOM_TASK_TIMEOUT_S": "10", "DARKROOM_OUTBOX_RESEND_AFTER_S": "1"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vers")


@pytest.fixture(scope="module")
def vworker(kafka_bootstrap: str, base: Path) -> Iterator[WorkerEnv]:
    w = start_worker(kafka_bootstrap, base, extra_env=ENV)
    yield w
    stop_worker(w)


def send(w: WorkerEnv, ev: UploadEvent) -> None:
    p = OutputProducer(w.bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()


def event(w: WorkerEnv, **kw: Any) -> UploadEvent:
    path = photo(w.inbox / f"v-{uuid.uuid4().hex[:6]}.jpg", seed=3)
    return UploadEvent(**{"asset_id": f"v-{uuid.uuid4().hex[:8]}",
                          "uri": LocalStorage.uri_for(path), "filename": path.name,
                          "content_type": "image/jpeg", "uploaded_at": now_ms(), **kw})


def updates_of(w: WorkerEnv, asset_id: str, until_version: int) -> list[AssetUpdate]:
    reader = TopicReader(w.bootstrap, f"{PREFIX}.assets")
    try:
        msgs = reader.read_until(lambda ms: any(
            m.key() == asset_id.encode() and AssetUpdate.from_bytes(m.value()).version
            >= until_version for m in ms))
        return [AssetUpdate.from_bytes(m.value()) for m in msgs if m.key() == asset_id.encode()]
    finally:
        reader.close()


def test_a_completed_upload_emits_each_version_once_and_its_final_state_once(
        vworker: WorkerEnv) -> None:
    ev = event(vworker)
    send(vworker, ev)
    asset = vworker.wait_assets([ev.asset_id])[ev.asset_id]
    got = updates_of(vworker, ev.asset_id, asset.version)
    versions = [u.version for u in got]
    assert versions == list(range(1, asset.version + 1)), versions  # each once, in order
    finals = [u for u in got if u.status == "complete"]
    assert len(finals) == 1 and finals[0].version == asset.version


def test_a_replay_that_adds_one_result_moves_the_version_once(vworker: WorkerEnv) -> None:
    ev = event(vworker)
    send(vworker, ev)
    before = vworker.wait_assets([ev.asset_id])[ev.asset_id]
    replay = UploadEvent(**{**ev.to_dict(), "replay": True, "postprocess": ["nsfw"],
                            "replay_tasks": ["nsfw"]})
    send(vworker, replay)
    after = vworker.wait_assets([ev.asset_id], done=lambda a: "nsfw" in a.results)[ev.asset_id]
    assert after.version == before.version + 1
    got = updates_of(vworker, ev.asset_id, after.version)
    assert [u.version for u in got].count(after.version) == 1
    assert [u.version for u in got] == list(range(1, after.version + 1))


def test_a_worker_killed_between_commit_and_send_leaves_no_version_missing(
        kafka_bootstrap: str, vworker: WorkerEnv, tmp_path: Path) -> None:
    """The outbox: the update of a committed version is sent by the sweeper if its writer died
    before sending it (the fault point exits like kill -9 right after the merge's commit)."""
    stop_worker(vworker)  # one worker at a time on this prefix for this test
    faulty = start_worker(kafka_bootstrap, vworker.data_dir.parent,
                          extra_env={**ENV, "DARKROOM_FAULT_POINT": "after-merge-commit"})
    ev = event(faulty)
    send(faulty, ev)
    assert faulty.proc is not None
    assert faulty.proc.wait(timeout=90) == 137  # died right after its first merge commit
    store = faulty.store()
    died_at = store.get_asset(ev.asset_id)
    assert died_at is not None and died_at.version >= 2
    healed = start_worker(kafka_bootstrap, vworker.data_dir.parent, extra_env=ENV)
    vworker.proc = healed.proc  # the module fixture stops this one
    done = healed.wait_assets([ev.asset_id], timeout=120)[ev.asset_id]
    want = set(range(1, done.version + 1))
    reader = TopicReader(healed.bootstrap, f"{PREFIX}.assets")
    try:  # the sweeper sends the orphaned version once the dead worker's lease has expired
        msgs = reader.read_until(lambda ms: want <= {
            AssetUpdate.from_bytes(m.value()).version for m in ms
            if m.key() == ev.asset_id.encode()}, timeout=90)
    finally:
        reader.close()
    got = {AssetUpdate.from_bytes(m.value()).version for m in msgs
           if m.key() == ev.asset_id.encode()}
    assert got == want
    assert healed.store().stale_updates(older_than_ms=now_ms() + 1) == []  # all acknowledged
