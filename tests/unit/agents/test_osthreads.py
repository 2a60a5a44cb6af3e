"""OS thread names: what top -H and the pipeline benchmark's CPU breakdown see."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from agents.composition import Runtime
from agents.osthreads import name_os_thread, os_thread_name
from agents.settings import Settings
from agents.streams.lanes import WorkLane
from processors.registry import Deadline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="OS thread names are read from /proc (Linux)")


def test_a_thread_names_itself_and_long_names_keep_their_end() -> None:
    seen: list[str | None] = []

    def run() -> None:
        name_os_thread("dr-test")
        seen.append(os_thread_name())
        name_os_thread()  # its Python name, "darkroom-" shortened so the number stays
        seen.append(os_thread_name())

    t = threading.Thread(target=run, name="darkroom-light-12")
    t.start()
    t.join()
    assert seen == ["dr-test", "dr-light-12"]
    assert os_thread_name() != "dr-test"  # only the calling thread changed


def test_lane_and_pool_threads_carry_their_names(tmp_path: Path) -> None:
    lane = WorkLane("cpu", 1)

    def job(_deadline: Deadline) -> str | None:
        return os_thread_name()

    assert asyncio.run(lane.run(job, timeout_s=5)) == "dr-cpu-0"
    lane.close()
    rt = Runtime(Settings(data_dir=tmp_path))
    try:
        assert rt.io_pool.submit(os_thread_name).result() == "dr-io_0"
        assert rt.webhook_pool.submit(os_thread_name).result() == "dr-webhook_0"
    finally:
        rt.close()
