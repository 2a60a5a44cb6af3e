"""A worker consumes the task and result topics of the tasks in use only, and follows new ones:
an upload naming a registered task no definition names (an implicit post-process) is routed,
the worker starts consuming that task's topics while it runs, and the asset completes."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.kafka.producer import OutputProducer
from schemas.records import UploadEvent, now_ms
from sinks.objects.local import LocalStorage
from tests.conftest import WorkerEnv, start_worker, stop_worker
from tests.integration.streams.test_pipeline import photo

pytestmark = pytest.mark.integration

PREFIX = "tasktopics"


@pytest.fixture(scope="module")
def narrow_worker(kafka_bootstrap: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerEnv]:
    base = tmp_path_factory.mktemp("tasktopics")
    config = base / "pp.yaml"
    config.write_text("postprocesses:\n  - {name: validate-image, task: validate-image}\n")
    wenv = start_worker(kafka_bootstrap, base, config=config, extra_env={
        "DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-tasktopics",
        "DARKROOM_TASK_FOLLOW_S": "0.5"})
    yield wenv
    stop_worker(wenv)


def upload(wenv: WorkerEnv, path: Path, postprocess: list[str]) -> str:
    ev = UploadEvent(asset_id=uuid.uuid4().hex[:16], uri=LocalStorage.uri_for(path),
                     filename=path.name, folder="/t", content_type="image/jpeg",
                     uploaded_at=now_ms(), postprocess=postprocess)
    p = OutputProducer(wenv.bootstrap)
    p.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    p.flush_sync()
    return ev.asset_id


def consumed(wenv: WorkerEnv) -> set[str]:
    """The task topics the worker says it added while running."""
    text = wenv.log.read_text(errors="replace") if wenv.log else ""
    return set(re.findall(rf"now consuming .*?{PREFIX}\.tasks\.([a-z-]+)", text))


def test_a_newly_used_task_is_consumed_while_the_worker_runs(narrow_worker: WorkerEnv) -> None:
    first = upload(narrow_worker, photo(narrow_worker.inbox / "a.jpg"), [])
    done = narrow_worker.wait_assets([first])[first]
    assert set(done.results) == {"validate-image"} and done.status == "complete"
    assert narrow_worker.store().used_tasks() == {"validate-image"}
    assert "dominant-colors" not in consumed(narrow_worker)  # not in use: not fetched

    # an upload asks for a registered task by name: it runs as an implicit post-process
    second = upload(narrow_worker, photo(narrow_worker.inbox / "b.jpg", seed=3),
                    ["dominant-colors"])
    asset = narrow_worker.wait_assets([second], timeout=120)[second]
    assert asset.results["dominant-colors"]["status"] == "ok", asset.results
    assert asset.status == "complete"
    assert "dominant-colors" in narrow_worker.store().used_tasks()
    deadline = time.monotonic() + 10
    while "dominant-colors" not in consumed(narrow_worker) and time.monotonic() < deadline:
        time.sleep(0.2)  # the log line is written when the agent starts
    assert "dominant-colors" in consumed(narrow_worker), narrow_worker.log_tail()
