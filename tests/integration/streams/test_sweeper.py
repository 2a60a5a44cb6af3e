"""No asset waits forever: lost requests (started, never answered) are re-dispatched with their
original parameters, then given up once with an error; queued requests are never re-sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from agents.composition import Runtime
from agents.settings import Settings
from agents.streams.sweeper import sweep
from schemas.records import TaskRequest, TaskResult
from sinks.store.metadata import PlannedTask, UploadRecord, asset_tasks

pytestmark = pytest.mark.integration


def test_sweeper_redispatches_then_gives_up(kafka_bootstrap: str, tmp_path: Path,
                                            read_topic) -> None:  # type: ignore[no-untyped-def]
    from agents.kafka.topics import all_topics, ensure_topics
    from processors.registry import load_all

    settings = Settings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path, task_attempts=2,
                        task_timeout_s=0.001)
    ensure_topics(kafka_bootstrap, all_topics(settings, load_all()), 3, 1)
    rt = Runtime.build(settings, kafka_bootstrap)
    rt.store.register_uploads([UploadRecord(
        asset_id="swept-1", upload_key="k", uri="file:///x.jpg", filename="x.jpg", folder="/",
        content_type="image/jpeg", size_bytes=1, mode="async", notification_url=None,
        on_success=None, properties={"width": 4}, tags=[], context={}, uploaded_at=0,
        tasks=[PlannedTask("blurhash", "blurhash", "rid-1", "async",
                           params_json='{"components_x": 3}')])])
    with rt.store.engine.begin() as conn:  # queued for an hour: only waiting, never re-sent
        conn.execute(sa.update(asset_tasks).values(requested_at=0))
    assert sweep(rt) == 0
    with rt.store.engine.begin() as conn:  # started long ago and never answered: lost
        conn.execute(sa.update(asset_tasks).values(started_at=1))

    assert sweep(rt) == 1
    tasks = read_topic("darkroom.tasks.blurhash").read_until(
        lambda ms: any(m.key() == b"swept-1" for m in ms))
    req = next(TaskRequest.from_bytes(m.value()) for m in tasks if m.key() == b"swept-1")
    assert req.request_id == "rid-1" and req.attempt == 2 and req.width == 4
    assert req.params_json == '{"components_x": 3}'  # as dispatched, not today's config

    assert sweep(rt) == 0  # re-dispatched: queued again until started
    with rt.store.engine.begin() as conn:
        conn.execute(sa.update(asset_tasks).values(started_at=1))
    assert sweep(rt) == 1  # dispatches == attempts: give up with an error result
    assert sweep(rt) == 0  # the give-up is recorded once
    # (a worker sharing this broker may also answer the re-dispatched request: look for ours)
    def timeouts(ms: list) -> list[TaskResult]:  # type: ignore[type-arg]
        found = [TaskResult.from_bytes(m.value()) for m in ms if m.key() == b"swept-1"]
        return [r for r in found if r.error_kind == "timeout"]

    results = read_topic("darkroom.results.blurhash").read_until(lambda ms: bool(timeouts(ms)))
    res = timeouts(results)[0]
    assert res.status == "error" and "no result after 2 dispatches" in (res.error or "")
    rt.close()
