"""Work lanes: run-time-only timeouts, stopping what can be stopped, slots of overdue jobs kept,
sync requests first, and the lanes each task declares."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from agents.streams.lanes import ASYNC, SYNC, WorkLane
from agents.streams.poison import Health
from processors.registry import Deadline, TaskTimeout, load_all


def _sleeper(seconds: float, log: list[tuple[str, float, float]] | None = None,
             name: str = "") -> Any:
    def fn(deadline: Deadline) -> str:
        t0 = time.monotonic()
        time.sleep(seconds)  # uninterruptible: ignores the deadline
        if log is not None:
            log.append((name, t0, time.monotonic()))
        return name or "done"
    return fn


def test_the_timeout_counts_run_time_not_the_wait_for_a_thread() -> None:
    lane = WorkLane("t", 1)

    async def main() -> tuple[str, str]:
        first = asyncio.create_task(lane.run(_sleeper(0.6), timeout_s=5))
        await asyncio.sleep(0.05)
        # queued 0.55 s behind the first, runs 0.2 s: within 0.4 s of run time
        second = await lane.run(_sleeper(0.2, name="second"), timeout_s=0.4)
        return await first, second

    assert asyncio.run(main()) == ("done", "second")
    lane.close()


def test_a_timed_out_job_keeps_its_thread_until_it_really_ends() -> None:
    lane = WorkLane("t", 1)
    log: list[tuple[str, float, float]] = []

    async def main() -> dict[str, int]:
        with pytest.raises(TimeoutError, match=r"timed out after 0\.2s"):
            await lane.run(_sleeper(1.0, log, "stuck"), timeout_s=0.2)
        seen = lane.stats()
        await lane.run(_sleeper(0.01, log, "next"), timeout_s=5)
        return seen

    stats = asyncio.run(main())
    assert stats["overdue"] == 1 and stats["busy"] == 1
    (_, _, stuck_end), (_, next_start, _) = log
    assert next_start >= stuck_end  # never two at once on a lane of one thread
    assert lane.stats()["overdue"] == 0
    lane.close()


def test_a_timed_out_job_that_checks_its_deadline_stops() -> None:
    lane = WorkLane("t", 1)
    ended = threading.Event()

    def cooperative(deadline: Deadline) -> None:
        try:
            while True:
                deadline.check()
                time.sleep(0.01)
        finally:
            ended.set()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await lane.run(cooperative, timeout_s=0.2)

    asyncio.run(main())
    assert ended.wait(1.0)
    assert _idle_within(lane, 2.0)
    lane.close()


def _idle_within(lane: WorkLane, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while lane.stats()["busy"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return lane.stats()["busy"] == 0


def test_a_deadline_raises_task_timeout_and_nests() -> None:
    outer = Deadline(0.2)
    inner = Deadline(60, within=outer)
    assert inner.end == outer.end and 0 < inner.remaining() <= 0.2
    outer.cancel("timed out after 0.2s")
    with pytest.raises(TaskTimeout, match=r"timed out after 0\.2s") as info:
        inner.check()
    assert info.value.permanent is False and inner.wait(5) is True
    forever = Deadline()
    forever.check()
    assert forever.remaining() == float("inf") and forever.wait(0.01) is False


def test_sync_requests_go_first() -> None:
    lane = WorkLane("t", 1)
    order: list[str] = []

    def job(name: str) -> Any:
        def fn(deadline: Deadline) -> None:
            order.append(name)
            time.sleep(0.02)
        return fn

    async def main() -> None:
        blocker = asyncio.create_task(lane.run(_sleeper(0.3)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(lane.run(job(f"async{i}"), priority=ASYNC))
                   for i in range(3)]
        await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(lane.run(job("sync"), priority=SYNC)))
        await asyncio.gather(blocker, *waiting)

    asyncio.run(main())
    assert order == ["sync", "async0", "async1", "async2"]
    lane.close()


def test_cancelling_the_caller_drops_a_queued_job_and_cancels_a_running_one() -> None:
    lane = WorkLane("t", 1)
    ran: list[str] = []
    stopped = threading.Event()

    def running(deadline: Deadline) -> None:
        ran.append("running")
        deadline.wait()  # returns when cancelled
        stopped.set()

    def queued(deadline: Deadline) -> None:
        ran.append("queued")

    async def main() -> None:
        a = asyncio.create_task(lane.run(running))
        await asyncio.sleep(0.05)
        b = asyncio.create_task(lane.run(queued))
        await asyncio.sleep(0.05)
        b.cancel()
        a.cancel()
        await asyncio.gather(a, b, return_exceptions=True)

    asyncio.run(main())
    assert stopped.wait(1.0)
    assert _idle_within(lane, 2.0)
    assert ran == ["running"]
    lane.close()


def test_ffmpeg_is_killed_when_its_attempt_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from processors.media.ffmpeg import Deadline as JobDeadline
    from processors.media.ffmpeg import run_ffmpeg
    from processors.registry import TaskTimeout

    lane = WorkLane("long", 1)
    pids: list[int] = []
    real = subprocess.Popen

    def spy(*a: Any, **k: Any) -> Any:
        proc = real(*a, **k)
        pids.append(proc.pid)
        return proc

    monkeypatch.setattr(subprocess, "Popen", spy)

    def transcode(deadline: Deadline) -> None:
        job = JobDeadline(900, deadline)  # the video's own limit, within the attempt's
        assert job.end == deadline.end
        run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-f", "null", "-"],
                   duration_s=None, progress=None, timeout_s=job.remaining(), deadline=job)

    async def main() -> float:
        t0 = time.monotonic()
        # the lane's timeout, or the job's own deadline inside ffmpeg's runner when that fires
        # first (both are at 0.8 s): either way the attempt timed out
        with pytest.raises((TimeoutError, TaskTimeout)):
            await lane.run(transcode, timeout_s=0.8)
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 30.0  # the source never ends: only a kill stops it
    assert _idle_within(lane, 30.0)  # the thread ended: ffmpeg was killed, not waited for
    assert pids
    with pytest.raises(ProcessLookupError):
        os.killpg(pids[0], 0)
    lane.close()


def test_waiting_for_a_thread_does_not_count_as_busy() -> None:
    from agents.streams.poison import Msg

    lane = Health().lane("task.x", busy_seconds=0.2)
    lane.start(Msg("t", 0, 1, b"k", b"v"))
    lane.wait()
    time.sleep(0.3)
    assert not lane.stalled
    lane.resume()
    assert not lane.stalled
    time.sleep(0.25)
    assert lane.stalled


def test_the_declared_lanes() -> None:
    procs = load_all()
    long = {n for n, p in procs.items() if p.work_lane == "long"}
    assert {"compress-video", "convert-video", "trim-video", "transcode-video", "video-sfw",
            "remove-background", "remove-artifacts", "ocr"} <= long
    assert procs["validate-image"].work_lane == "light"  # header only
    assert procs["blurhash"].work_lane == procs["count-faces"].work_lane == "cpu"
    assert procs["validate-video"].work_lane == "cpu"


def test_an_unknown_lane_is_refused() -> None:
    from processors.registry import register

    with pytest.raises(ValueError, match="lane 'slow'"):
        @register("t-lane", version="1", lane="slow")  # type: ignore[arg-type]
        def run(inp: Any, params: Any) -> dict[str, Any]:
            return {}


def test_a_cancelled_deadline_kills_ffmpeg_at_once() -> None:
    from processors.media.ffmpeg import run_ffmpeg

    deadline = Deadline()  # no limit: only the cancel stops it (a worker that stops)
    threading.Timer(0.3, deadline.cancel, args=("cancelled: the worker is stopping",)).start()
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout, match="the worker is stopping"):
        run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-f", "null", "-"],
                   duration_s=None, progress=None, timeout_s=600, deadline=deadline)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priorities here")
def test_a_nice_lane_runs_at_lower_priority_and_so_do_its_children() -> None:
    import subprocess

    lane = WorkLane("long", 1, nice=5)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def measure(deadline: Deadline) -> tuple[int, int]:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        child = subprocess.run(["sh", "-c", "cat /proc/self/stat"], capture_output=True,
                               text=True, check=True).stdout.rsplit(")", 1)[1].split()[16]
        return mine, int(child)

    mine, child = asyncio.run(lane.run(measure))
    assert mine == base + 5 and child == base + 5
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # not ours
    lane.close()
