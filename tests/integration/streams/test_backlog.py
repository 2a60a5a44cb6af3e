"""A backlog is only waiting: with a 2 s task timeout and hundreds of requests queued, the
sweeper re-sends none of them and no timeout result is written (so none can replace an ``ok``).

To make the queue look old, the test ages every queued row by an hour mid-run: a sweeper that
measured age from the dispatch time (as it once did) would re-send them all."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import start_worker, stop_worker
from tests.integration.streams.test_faults import done_count, pictures, send_uploads, wait_done

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FULL = os.environ.get("DARKROOM_TEST_SCALE") == "full"


@pytest.mark.slow
def test_a_backlog_is_never_redispatched_nor_timed_out(kafka_bootstrap: str,
                                                       tmp_path: Path) -> None:
    n = 500 if FULL else 200
    prefix = f"backlog{uuid.uuid4().hex[:4]}"
    env = {"DARKROOM_TOPIC_PREFIX": prefix, "DARKROOM_TASK_TIMEOUT_S": "2",
           "DARKROOM_AGENT_CONCURRENCY": "1"}
    w = start_worker(kafka_bootstrap, tmp_path, config=FIXTURES / "pp_backlog.yaml",
                     extra_env=env)
    store = w.store()
    try:
        ids = send_uploads(kafka_bootstrap, prefix, pictures(w.inbox), n)
        deadline = time.monotonic() + 120
        while True:  # routed: the requests are queued on the task topic
            with store.engine.connect() as conn:
                rows = conn.execute(sa.text("select count(*) from asset_tasks")).scalar_one()
            if rows >= n // 2:
                break
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.2)
        assert done_count(store, ids) < n  # (still a backlog)
        with store.engine.begin() as conn:  # queued an hour ago, as far as the sweeper can see
            aged = conn.execute(sa.text(
                "update asset_tasks set requested_at = requested_at - 3600000 "
                "where status = 'pending' and started_at is null")).rowcount
        assert aged > 0
        wait_done(store, ids, [w], timeout=600 if FULL else 300)
        with store.engine.connect() as conn:
            stats = conn.execute(sa.text(
                "select count(*), sum(case when dispatches > 1 then 1 else 0 end), "
                "sum(case when status = 'ok' then 1 else 0 end) from asset_tasks")).one()
        assert tuple(stats) == (n, 0, n), stats  # every request once, every result ok
        assert "re-dispatched" not in w.log.read_text(errors="replace")
    finally:
        stop_worker(w)
        store.close()
