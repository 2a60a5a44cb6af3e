"""Every path that refuses runs the same completion, applied by the sink (the single writer):
the object deleted (or quarantined), the other results closed as skipped, and exactly one
`asset.refused` webhook — for a sync upload refused by the timeout policy over HTTP, and for an
upload refused by a rule through `darkroom process`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from agents.kafka.broker import free_port
from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import Api
from tests.integration.streams.test_notifications import Receiver
from tests.integration.streams.test_poison_pipeline import wait_ready

pytestmark = pytest.mark.integration

PREFIX = "refz"


def objects(w: WorkerEnv) -> list[Path]:
    root = w.data_dir / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_sync_timeout_refusal_is_applied_by_the_sink_and_notified_once(
        kafka_bootstrap: str, tmp_path: Path, receiver: Receiver) -> None:
    # this worker runs no validate-image agent: every sync upload times out
    env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-refz",
           "DARKROOM_TASKS": '["blurhash", "dominant-colors"]',
           "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]', "DARKROOM_WEBHOOK_SECRET": "s"}
    port = free_port()
    w = start_worker(kafka_bootstrap, tmp_path, extra_env={**env, "DARKROOM_WEB_PORT": str(port)})
    w.extra["web"] = f"http://127.0.0.1:{port}"
    wait_ready(w)  # partitions assigned: the timeout below is the task's, not the join's
    api = Api(w, "refz-api", extra={"DARKROOM_SYNC_TIMEOUT_S": "2",
                                     "DARKROOM_SYNC_TIMEOUT_POLICY": "refuse"})
    try:
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (1, 2, 3)).save(buf, "JPEG")
        r = api.client.post("/v1/assets", files={"file": ("t.jpg", buf.getvalue())},
                            data={"mode": "sync", "notification_url": receiver.url + "/refz"})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["status"] == "refused"
        assert any("did not finish within 2s" in x for x in body["refusals"])
        aid = body["asset_id"]
        asset = w.wait_assets([aid], done=lambda a: a.uri == "")[aid]
        assert asset.status == "refused"
        assert all(v["status"] in ("ok", "skipped") for v in asset.results.values())
        assert objects(w) == []
        hooks = receiver.wait("/refz", 1)
        time.sleep(3)  # nothing more may come
        refused = [h for h in receiver.hits("/refz") if b'"asset.refused"' in h["body"]]
        assert len(refused) == 1 and len(receiver.hits("/refz")) == len(hooks) == 1
    finally:
        api.stop()
        stop_worker(w)


def test_a_rule_refusal_through_darkroom_process_leaves_no_object(tmp_path: Path) -> None:
    small = tmp_path / "small.jpg"
    Image.new("RGB", (100, 80), (9, 9, 9)).save(small)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(DARKROOM_DATA_DIR=str(tmp_path / "data"), DARKROOM_SESSION_TIMEOUT_S="6",
               DARKROOM_POSTPROCESS_CONFIG=str(ROOT / "tests/fixtures/pp_api.yaml"))
    out = subprocess.run([sys.executable, "-m", "agents.cli", "process", str(small), "--folder",
                          "/refuse", "--json"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 1, out.stderr  # refused counts as failed
    line = out.stdout.splitlines()[-1]
    assert '"status": "refused"' in line and "images must be at least 500 px wide" in line
    stored = [p for p in (tmp_path / "data" / "objects").rglob("*") if p.is_file()]
    assert stored == []
