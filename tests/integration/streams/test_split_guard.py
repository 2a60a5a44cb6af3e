"""No silent split, on the real broker: a second worker with its own SQLite database (its own
data dir) joining a running one is refused with a message naming the fix; a worker sharing the
database (and object folder) joins."""

from __future__ import annotations

import time

import pytest

from tests.conftest import WorkerEnv, start_worker, stop_worker

pytestmark = pytest.mark.integration

PREFIX = "splitguard"
ENV = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-splitguard",
       "DARKROOM_HEARTBEAT_S": "1"}


def _wait_log(w: WorkerEnv, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = w.log.read_text(errors="replace") if w.log and w.log.exists() else ""
        if text in log:
            return log
        if w.proc is not None and w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.log_tail()}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the log after {timeout}s:\n{w.log_tail()}")


@pytest.mark.slow
def test_a_second_database_is_refused_and_a_shared_one_joins(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    first = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("sg-a"), extra_env=ENV)
    others: list[WorkerEnv] = []
    try:
        _wait_log(first, "joined deployment 'splitguard' (0 other live workers")
        # its own data dir: its own SQLite file and object folder
        split = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("sg-b"), extra_env=ENV)
        others.append(split)
        assert split.proc is not None
        rc = split.proc.wait(timeout=90)
        log = split.log.read_text(errors="replace") if split.log else ""
        assert rc != 0, log[-3000:]
        assert "refusing to join deployment 'splitguard'" in log, log[-3000:]
        assert str(first.data_dir.resolve() / "darkroom.db") in log  # names the other database
        assert "DARKROOM_DATABASE_URL" in log and "PostgreSQL" in log and "S3" in log
        assert "Traceback" not in log  # a message, not a crash
        # sharing the first one's data dir: the same database and object folder
        shared = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("sg-c"),
                              extra_env={**ENV, "DARKROOM_DATA_DIR": str(first.data_dir)})
        others.append(shared)
        _wait_log(shared, "joined deployment 'splitguard' (1 other live workers")
        time.sleep(2)
        assert shared.proc is not None and shared.proc.poll() is None, shared.log_tail()
        assert first.proc is not None and first.proc.poll() is None
    finally:
        for w in [*others, first]:
            stop_worker(w)
    # the refused worker's `joining` was followed by `left` (it never blocks the workers that
    # start after it), and the others said `left` when they stopped
    states = _states(kafka_bootstrap)
    assert sorted(len(v) > 2 for v in states.values()) == [False, True, True], states
    assert all(v[-1] == "left" and v.count("left") == 1 for v in states.values()), states
    assert [v for v in states.values() if "member" not in v] == [["joining", "left"]]


def _states(bootstrap: str) -> dict[str, list[str]]:
    from agents.kafka.reading import read_assigned
    from agents.members import Heartbeat

    out: dict[str, list[str]] = {}
    for m in read_assigned(bootstrap, f"{PREFIX}.members", idle_s=1.0):
        hb = Heartbeat.from_bytes(m.value())
        if hb is not None:
            out.setdefault(hb.nonce, []).append(hb.state)
    return out

