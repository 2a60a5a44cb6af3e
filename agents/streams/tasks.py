"""Processor agents, generated from the registry: one per task, none written by hand.

For each TaskRequest on ``darkroom.tasks.<task>``: fetch the input in the form the processor
declares (header only, a shared decode at the size it needs, or a local file), run the pure
processor on its lane (``light``, ``cpu`` or ``long``: :mod:`agents.streams.lanes`; never on the
event loop, sync requests first) with a deadline that starts when it starts running, evaluate
the post-process's validation rules, and emit a TaskResult to ``darkroom.results.<task>``.
Transient failures are retried with exponential backoff; permanent ones (corrupt input) and
exhausted retries become an error result *and* a dead letter on ``darkroom.dlq.<task>`` holding
the original request.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import mimetypes
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

from agents.composition import Runtime
from agents.kafka.headers import TRACE, child
from agents.logs import bind, in_context
from agents.metrics import (
    TASK_DURATION,
    TASKS_FAILED,
    TASKS_RETRIED,
    TASKS_STARTED,
    TASKS_SUCCEEDED,
)
from agents.streams import validation
from agents.streams.bundles import runs_here
from agents.streams.lanes import ASYNC, SYNC
from agents.streams.poison import Lane, Msg, Poison, dead_letter_now, settle
from processors.registry import Deadline, Processor, ProcessorError, TaskInput, TaskTimeout
from schemas.records import TaskRequest, TaskResult, now_ms
from sinks.objects.base import ObjectNotFoundError

if TYPE_CHECKING:
    from agents.policy.postprocess import PostProcess
    from sinks.store.metadata import MetadataStore

log = logging.getLogger("darkroom.processing")


class ProgressReporter:
    """The ``progress`` callback handed to processors: throttled writes to the store (at most
    one per second or per 5 points), never raising into the processor."""

    def __init__(self, rt: Runtime, req: TaskRequest) -> None:
        self.rt, self.req = rt, req
        self.last_t = 0.0
        self.last_p = -100.0

    def __call__(self, percent: float) -> None:
        now = time.monotonic()
        if now - self.last_t < 1.0 and abs(percent - self.last_p) < 5.0:
            return
        self.last_t, self.last_p = now, percent
        try:
            self.rt.store.set_progress(self.req.asset_id, self.req.postprocess,
                                       self.req.request_id, percent)
        except Exception:
            log.debug("progress update failed", exc_info=True)


def prepare_input(rt: Runtime, proc: Processor, req: TaskRequest, workdir: Path | None,
                  deadline: Deadline | None = None) -> TaskInput:
    """Blocking: resolve the object and decode what the processor needs (on the task's lane).
    ``deadline`` is handed on as ``TaskInput.deadline``."""
    deadline = deadline or Deadline()
    props = req.properties()
    spec = proc.input
    if spec.kind == "header":
        # no byte is read, but the request must name an object we may read (a raw request on
        # the task topic could name any path): outside the roots or missing is permanent
        if not rt.storage.exists(req.uri):
            raise ObjectNotFoundError(req.uri)
        return TaskInput(properties=props, workdir=workdir, settings=rt.processor_settings,
                         deadline=deadline)
    path = rt.storage.local_path(req.uri)
    if spec.kind == "file":
        return TaskInput(properties=props, path=path, workdir=workdir,
                         progress=ProgressReporter(rt, req), settings=rt.processor_settings,
                         deadline=deadline)
    key = f"{req.uri}|{req.size_bytes}"
    decoded = rt.decode_cache.get_decoded(key, lambda: path, spec.max_side, mode=spec.mode,
                                          resample=spec.resample)
    # the request's media properties are hints; the decoded file says what it is
    props = {**props, "width": decoded.original_size[0], "height": decoded.original_size[1],
             "format": decoded.format}
    return TaskInput(properties=props, image=decoded.image, path=path, workdir=workdir,
                     settings=rt.processor_settings, deadline=deadline)


def run_once(rt: Runtime, proc: Processor, req: TaskRequest,
             deadline: Deadline | None = None) -> tuple[dict[str, Any], str]:
    """One attempt: the result and its JSON text (serialised once, here). ``deadline`` (the
    attempt's, from its lane) is checked after the input is ready and before the outputs are
    stored, and handed to the processor."""
    deadline = deadline or Deadline()
    params = proc.parse_params(req.params)
    workdir: Path | None = None
    if proc.outputs:  # only a task that declares outputs gets (and pays for) a work folder
        work = rt.settings.data_dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{proc.name}-", dir=work))
    try:
        inp = prepare_input(rt, proc, req, workdir, deadline)
        deadline.check()
        data = proc.run(inp, params)
        deadline.check()  # an attempt given up on stores nothing
        if workdir is not None:
            derived = store_outputs(rt, req, workdir)
            if derived:
                data = {**data, "derived": derived}
        return data, to_json(data)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def to_json(data: Any) -> str:
    """The contract: a JSON object, as the RFC defines JSON (no NaN/Infinity, which Python's
    json writes but webhook receivers and other languages refuse). Fail here, not in the sink."""
    if not isinstance(data, dict):
        raise ProcessorError(f"the processor returned {type(data).__name__}, not an object")
    try:
        return json.dumps(data, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProcessorError(f"the processor's result is not valid JSON: {exc}") from exc


def bounded_data_json(rt: Runtime, req: TaskRequest, text: str) -> str:
    """The result's JSON for the TaskResult; one larger than ``result_inline_bytes`` is stored
    as ``derived/<asset>/<post-process>/_result.json`` and referenced instead (the sink reads
    it back), so a result never outgrows a Kafka message."""
    from agents.streams.sink import RESULT_OBJECT
    from sinks.objects.base import derived_key

    if len(text) <= rt.settings.result_inline_bytes:
        return text
    key = derived_key(req.asset_id, req.postprocess, RESULT_OBJECT)
    uri = rt.storage.put_bytes(text.encode("utf-8"), key, "application/json")
    return json.dumps({"_result_uri": uri, "_omitted": True, "_size": len(text)})


def store_outputs(rt: Runtime, req: TaskRequest, workdir: Path) -> dict[str, str]:
    """Store every file the processor left in its workdir; {relative path: URI}."""
    from sinks.objects.base import derived_key

    out: dict[str, str] = {}
    for f in sorted(p for p in workdir.rglob("*") if p.is_file()):
        rel = f.relative_to(workdir).as_posix()
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        out[rel] = rt.storage.put_file(f, derived_key(req.asset_id, req.postprocess, rel), ctype)
    return out


async def definition_of(rt: Runtime, req: TaskRequest) -> PostProcess | None:
    """The definition whose validation rules judge ``req``'s result: that of the live set
    (agents.policy.definitions), reloaded first when it is due, when the router planned the
    request with newer definitions (``TaskRequest.definitions_version``), or when the set does
    not hold the request's post-process or holds it with other parameters."""
    from agents.streams.router import params_json_of

    live = rt.definitions
    pp = live.config.get(req.postprocess)
    stale = pp is None or params_json_of(pp) != (req.params_json or "{}")
    if stale or live.due() or req.definitions_version > live.version:
        at_least = max(req.definitions_version, live.version + 1 if stale else 0)
        await rt.in_pool(live.refresh, at_least)
        pp = live.config.get(req.postprocess)
    return pp


async def execute(rt: Runtime, proc: Processor, req: TaskRequest,
                  lane: Lane | None = None) -> TaskResult:
    """Run with retries; always returns a TaskResult (ok or error).

    Each attempt runs on the task's lane (sync requests first) under ``DARKROOM_TASK_TIMEOUT_S``
    counted from when it starts running; the time it waits for a lane thread counts neither
    there nor towards ``lane``'s busy limit (/readyz)."""
    s = rt.settings
    loop = asyncio.get_running_loop()
    work_lane = rt.lane(proc)
    priority = SYNC if req.mode == "sync" else ASYNC

    def attempt_once(deadline: Deadline) -> tuple[dict[str, Any], str]:
        return run_once(rt, proc, req, deadline)

    started = time.perf_counter()
    attempt = 0
    delay = s.retry_backoff_s
    error: str = ""
    kind = "permanent"
    TASKS_STARTED.labels(proc.name).inc()
    while attempt < s.task_attempts:
        attempt += 1
        if attempt > 1:
            TASKS_RETRIED.labels(proc.name).inc()
        try:
            if lane is not None:
                lane.wait()
            data, text = await work_lane.run(
                in_context(attempt_once), timeout_s=s.task_timeout_s, priority=priority,
                on_start=lane.resume if lane is not None else None)
        except TaskTimeout as exc:  # the processor's own limit (e.g. a video's timeout_s)
            error, kind = str(exc), "timeout"
        except ProcessorError as exc:
            error, kind = str(exc), "permanent" if exc.permanent else "transient"
        except TimeoutError:
            error, kind = f"timed out after {s.task_timeout_s}s", "timeout"
        except Exception as exc:  # noqa: BLE001 - a processor bug must not kill the agent
            error, kind = f"{type(exc).__name__}: {exc}", "transient"
        else:
            pp = await definition_of(rt, req)
            verdicts = []
            if pp is not None:
                verdicts = [
                    {"action": v.action, "message": v.message, "rule": v.rule,
                     "postprocess": v.postprocess}
                    for v in pp.validate_result(req.properties(), data)
                ]
            try:
                data_json = text if len(text) <= s.result_inline_bytes else \
                    await loop.run_in_executor(rt.io_pool, bounded_data_json, rt, req, text)
            except Exception as exc:  # noqa: BLE001 - storing a large result: retry the task
                error, kind = f"storing the result failed: {exc}", "transient"
            else:
                TASKS_SUCCEEDED.labels(proc.name).inc()
                TASK_DURATION.labels(proc.name).observe(time.perf_counter() - started)
                return _result(rt, proc, req, "ok", attempt, started, data_json=data_json,
                               verdicts=verdicts)
        if lane is not None:
            lane.resume()  # (the attempt failed before it started: waiting is over too)
        log.warning("task %s for asset %s failed (attempt %d/%d, %s): %s", proc.name,
                    req.asset_id, attempt, s.task_attempts, kind, error)
        if kind == "permanent":
            break
        await asyncio.sleep(delay)
        delay *= 2
    TASKS_FAILED.labels(proc.name, kind).inc()
    TASK_DURATION.labels(proc.name).observe(time.perf_counter() - started)
    return _result(rt, proc, req, "error", attempt, started, error=error, kind=kind)


def _result(rt: Runtime, proc: Processor, req: TaskRequest, status: str, attempts: int,
            started: float, data_json: str = "{}",
            verdicts: list[dict[str, Any]] | None = None, error: str | None = None,
            kind: str | None = None) -> TaskResult:
    return TaskResult(
        request_id=req.request_id,
        asset_id=req.asset_id,
        task=req.task,
        postprocess=req.postprocess,
        status=status,
        data_json=data_json,
        verdicts_json=json.dumps(verdicts or [], sort_keys=True),
        error=error,
        error_kind=kind,
        attempts=attempts,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        processor_version=proc.version,
        worker=rt.worker_name,
        finished_at=now_ms(),
        replay=req.replay,
    )


@dataclass(frozen=True)
class Publication:
    """What one task request leaves to publish: its results (one per request it carried:
    :mod:`agents.streams.bundles`), the requests it forwards, and its handler's context (its
    trace and log binding: it is sent in a batch of others' by :func:`publish_many`)."""

    msg: Msg
    results: tuple[tuple[Processor, TaskResult], ...]
    forward: tuple[TaskRequest, ...] = ()
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


def publish_many(rt: Runtime, items: Sequence[Publication]) -> list[None]:
    """Blocking: send each result (and a dead letter for a failed one) and each forwarded
    request, in its handler's context, then flush once."""
    for item in items:
        item.context.run(_send, rt, item)
    rt.producer.flush_sync()
    return [None] * len(items)


def _send(rt: Runtime, item: Publication) -> None:
    s = rt.settings
    for proc, result in item.results:
        rt.producer.send(s.topic("results", proc.name), result.asset_id, result.to_bytes())
        if result.status == "error":
            rt.send_dead_letter(s.topic("dlq", proc.name), item.msg,
                                result.error or "unknown error", attempts=result.attempts,
                                task=proc.name, asset_id=result.asset_id)
    for req in item.forward:
        rt.producer.send(s.topic("tasks", req.task), req.asset_id, req.to_bytes())


def start_marks(store: MetadataStore, items: Sequence[Sequence[tuple[str, str, str]]]
                ) -> list[list[str | None]]:
    """Blocking: the start marks of several handlers (each a request and those it carries)
    in one transaction; each handler's statuses."""
    flat = store.start_tasks([key for keys in items for key in keys])
    out, at = [], 0
    for keys in items:
        out.append(flat[at:at + len(keys)])
        at += len(keys)
    return out


def busy_limit(rt: Runtime) -> float:
    """How long one request may hold a task agent before /readyz calls it stalled: every
    attempt at its full timeout, the backoffs between them, and a margin."""
    s = rt.settings
    backoffs = s.retry_backoff_s * float(2 ** s.task_attempts)
    return s.task_timeout_s * s.task_attempts + backoffs + 60.0


async def handle(rt: Runtime, proc: Processor, lane: Lane, msg: Msg) -> None:
    """One request: validate, skip refused assets, mark started, run, publish. Never raises:
    invalid requests are dead-lettered, store and broker trouble is retried (see poison)."""
    s, policy = rt.settings, rt.retry_policy
    lane.start(msg)
    TRACE.set(child(msg.traceparent))  # this request's span of the upload's trace
    try:
        req = validation.task_request(msg, proc.name)
        bind(req.asset_id, proc.name)
        # the request and the cheap ones it carries that this worker runs (the others are
        # forwarded to their own topics): agents.streams.bundles
        members = req.members()
        unknown = [m.task for m in members if m.task not in rt.processors]
        if unknown:  # forwarded, it would make a topic of a name no worker consumes
            raise Poison(f"the request carries tasks this deployment does not know: "
                         f"{', '.join(sorted(set(unknown)))[:200]}")
        runs = [(proc, req), *((rt.processors[m.task], m) for m in members
                               if runs_here(rt, m.task))]
        forward = tuple(m for m in members if not runs_here(rt, m.task))
        # one statement each: mark them started (in flight for `darkroom status`, and for the
        # sweeper) unless the asset was refused; the marks of the requests starting at the
        # same moment share one transaction
        keys = tuple((r.asset_id, r.postprocess, r.request_id) for _, r in runs)
        statuses = await settle(lane, lambda: rt.task_starts(keys), policy)
        if "refused" in statuses:
            # a refusal is final and its object is gone: no work, no error, no dead letter
            log.info("skipping %s for refused asset %s", proc.name, req.asset_id)
            return
        # each on its lane (members share the decode); execute never raises
        results = await asyncio.gather(*(execute(rt, p, r, lane if i == 0 else None)
                                         for i, (p, r) in enumerate(runs)))
        done = Publication(msg, tuple((p, res) for (p, _), res in zip(runs, results,
                                                                       strict=True)), forward)
        # sent with the results ready at the same moment, one flush for them all
        await settle(lane, lambda: rt.task_results(done), policy)
    except Poison as exc:
        await dead_letter_now(lane, msg, exc.reason,
                              rt.dead_letter_sender(s.topic("dlq", proc.name), proc.name))
    finally:
        lane.finish()


def install(app: faust.App, rt: Runtime, proc: Processor) -> Any:
    """The agent of one task (returned: a worker that adds it while running starts it)."""
    topic = app.topic(rt.settings.topic("tasks", proc.name), key_type=bytes, value_type=bytes)

    async def agent(stream: faust.StreamT[bytes]) -> None:
        lane = rt.health.lane(f"task.{proc.name}", busy_seconds=busy_limit(rt))
        async for event in stream.events():
            await handle(rt, proc, lane, Msg.of(event))

    agent.__name__ = f"task_{proc.name.replace('-', '_')}"
    return app.agent(topic, name=f"darkroom.task.{proc.name}",
                     concurrency=rt.settings.agent_concurrency)(agent)
