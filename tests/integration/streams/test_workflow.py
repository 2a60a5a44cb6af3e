"""Workflow logic on a real worker: the synthetic NSFW positive triggers `after: nsfw` →
`quarantine` (the object moves under quarantine/, the asset's uri follows), `add-tags` and a
signed `notify` webhook; a clean photo skips them with the reason; a replay of `nsfw`
re-evaluates them without acting twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from sinks.webhooks import verify_signature
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_notifications import Receiver
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "wflow"
POSITIVE = ROOT / "tests" / "data" / "vectors" / "nsfw" / "synthetic-positive.png"
CONFIG = """\
postprocesses:
  - name: nsfw
    task: nsfw
  - name: thumbnail              # reads the original: the quarantine waits for it
    task: thumbnail
  - name: quarantine-nsfw
    task: quarantine
    after: nsfw
    when: "NSFW is larger than 0.7"
    params: {reason: "nsfw score over 0.7"}
  - name: tag-nsfw
    task: add-tags
    after: nsfw
    when: "NSFW is larger than 0.7"
    params: {tags: [needs-review]}
  - name: tell-moderators
    task: notify
    after: quarantine-nsfw
    params: {url: "RECEIVER/moderation", event: asset.quarantined}
"""
SECRET = "wf-secret"


@pytest.fixture(scope="module")
def wworker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory,
            receiver: Receiver) -> Iterator[WorkerEnv]:
    base = tmp_path_factory.mktemp("wflow")
    config = base / "pp.yaml"
    config.write_text(CONFIG.replace("RECEIVER", receiver.url))
    w = start_worker(kafka_bootstrap, base, config=config,
                     extra_env={"DARKROOM_TOPIC_PREFIX": PREFIX,
                                "DARKROOM_WORKER_ID": "darkroom-wflow",
                                "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]',
                                "DARKROOM_WEBHOOK_SECRET": SECRET,
                                "DARKROOM_TASKS": '["nsfw", "thumbnail", "quarantine", "add-tags",'
                                                   ' "notify"]'})
    yield w
    stop_worker(w)


def send(w: WorkerEnv, src: Path, **kw: object) -> UploadEvent:
    """An upload whose original lies in the worker's storage (where it may be moved)."""
    aid = f"wf-{uuid.uuid4().hex[:8]}"
    storage = LocalStorage(w.data_dir / "objects")
    uri = storage.put_file(src, f"originals/{aid}/{src.name}")
    ev = UploadEvent(**{"asset_id": aid, "uri": uri, "filename": src.name,
                        "content_type": "image/png" if src.suffix == ".png" else "image/jpeg",
                        "size_bytes": src.stat().st_size, "uploaded_at": now_ms(), **kw})
    p = OutputProducer(w.bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    return ev


def wait_hook(receiver: Receiver, asset_id: str, timeout: float = 60) -> list[dict[str, object]]:
    """Every /moderation request so far, once one about ``asset_id`` came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = receiver.hits("/moderation")
        if any(json.loads(h["body"])["asset_id"] == asset_id for h in hits):
            return hits
        time.sleep(0.1)
    raise AssertionError(f"no webhook about {asset_id}")


def test_nsfw_positive_is_quarantined_and_a_clean_photo_is_not(
        wworker: WorkerEnv, receiver: Receiver, tmp_path: Path) -> None:
    positive = tmp_path / "positive.png"
    shutil.copy(POSITIVE, positive)
    clean = photo(tmp_path / "clean.jpg", seed=2)
    bad, good = send(wworker, positive), send(wworker, clean)
    got = wworker.wait_assets([bad.asset_id, good.asset_id], timeout=180)
    a, b = got[bad.asset_id], got[good.asset_id]

    assert a.status == "complete", a.results
    assert a.results["nsfw"]["data"]["nsfw"] > 0.7
    assert a.results["quarantine-nsfw"]["status"] == "ok"
    assert a.results["thumbnail"]["status"] == "ok"  # it ran before the original moved
    assert a.results["tag-nsfw"]["status"] == "ok"
    assert "needs-review" in a.tags
    storage = LocalStorage(wworker.data_dir / "objects")
    assert storage.key_of(a.uri) == f"quarantine/originals/{bad.asset_id}/positive.png"
    assert (wworker.data_dir / "objects" / "quarantine" / "originals" / bad.asset_id
            / "positive.png").is_file()
    assert not (wworker.data_dir / "objects" / "originals" / bad.asset_id).exists()
    assert any("moved to quarantine" in n for n in a.notices)
    assert a.results["tell-moderators"]["status"] == "ok"  # after quarantine-nsfw (a chain)
    (hook,) = receiver.wait("/moderation", 1)
    assert verify_signature(hook["body"], hook["headers"], SECRET)
    body = json.loads(hook["body"])
    assert body["event"] == "asset.quarantined" and body["asset_id"] == bad.asset_id

    assert b.status == "complete", b.results
    assert b.results["nsfw"]["data"]["nsfw"] < 0.7
    assert b.results["tell-moderators"]["status"] == "skipped"  # its upstream was skipped
    for name in ("quarantine-nsfw", "tag-nsfw"):
        assert b.results[name]["status"] == "skipped"
        assert b.results[name]["error_kind"] == "condition"
        assert "did not hold" in b.results[name]["error"]
    assert storage.key_of(b.uri) == f"originals/{good.asset_id}/clean.jpg"
    assert "needs-review" not in b.tags

    # a replay of the upstream re-evaluates its dependents: nothing acts twice
    for ev, asset in ((bad, a), (good, b)):
        p = OutputProducer(wworker.bootstrap)
        replay = UploadEvent(**{**ev.to_dict(), "uri": asset.uri, "replay": True,
                                "postprocess": [], "replay_tasks": ["nsfw"]})
        p.send(f"{PREFIX}.uploads", ev.asset_id, replay.to_bytes())
        p.flush_sync()
    marker = send(wworker, clean)  # routed after the replays (same partition order not needed:
    wworker.wait_assets([marker.asset_id], timeout=120)  # the store is read below)
    again = wworker.wait_assets([bad.asset_id, good.asset_id], timeout=60)
    assert again[bad.asset_id].uri == a.uri
    assert sum("moved to quarantine" in n for n in again[bad.asset_id].notices) == 1
    assert again[bad.asset_id].tags.count("needs-review") == 1
    assert again[good.asset_id].results["quarantine-nsfw"]["status"] == "skipped"
    time.sleep(2)  # a second webhook, if one were sent, would have arrived by now
    assert len(receiver.hits("/moderation")) == 1


LATE = """\
  - name: late-tag
    task: add-tags
    after: nsfw
    when: "NSFW is larger than 0.7"
    params: {tags: [late]}
"""


def test_a_dependent_added_later_runs_on_replay_and_nothing_acts_twice(
        wworker: WorkerEnv, receiver: Receiver, tmp_path: Path) -> None:
    """`darkroom replay --task late-tag` (a dependent) replays its upstream, whose result
    decides the new dependent on old assets; what already ran does not run again."""
    positive = tmp_path / "positive.png"
    shutil.copy(POSITIVE, positive)
    bad, good = send(wworker, positive), send(wworker, photo(tmp_path / "c.jpg", seed=4))
    wworker.wait_assets([bad.asset_id, good.asset_id], timeout=180)
    hooks = len(wait_hook(receiver, bad.asset_id))
    config = Path(wworker.env["DARKROOM_POSTPROCESS_CONFIG"])
    config.write_text(config.read_text() + LATE)
    stop_worker(wworker)
    w = start_worker(wworker.bootstrap, config.parent, config=config, extra_env={
        k: v for k, v in wworker.env.items() if k.startswith("DARKROOM_")
        and k not in ("DARKROOM_TASKS", "DARKROOM_POSTPROCESS_CONFIG")})
    wworker.proc = w.proc  # the module fixture stops this one
    out = subprocess.run([sys.executable, "-m", "agents.cli", "replay", "--asset", bad.asset_id,
                          "--asset", good.asset_id, "--task", "late-tag"], env=w.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = w.wait_assets([bad.asset_id, good.asset_id], timeout=180, done=lambda a: a.status
                        != "pending" and a.results.get("late-tag", {}).get("status")
                        in ("ok", "skipped"))
    a, b = got[bad.asset_id], got[good.asset_id]
    assert a.results["late-tag"]["status"] == "ok" and a.tags.count("late") == 1
    assert b.results["late-tag"]["status"] == "skipped" and "late" not in b.tags
    assert a.status == b.status == "complete"
    # quarantine, tags and the webhook of the first run were not repeated
    assert sum("moved to quarantine" in n for n in a.notices) == 1
    assert a.tags.count("needs-review") == 1
    assert LocalStorage(w.data_dir / "objects").key_of(a.uri).startswith("quarantine/")
    assert len(receiver.hits("/moderation")) == hooks
