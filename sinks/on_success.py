"""On-success steps: a sandboxed JavaScript snippet per upload, then deployment Python handlers.

JavaScript (Cloudinary's ``on_success``)
----------------------------------------
The script sees ``e.upload_info`` (the asset JSON, :meth:`sinks.store.metadata.Asset.to_json`) and
``e.status`` (``event`` is the same object), and calls ``current_asset.update({tags, context,
metadata})``. Assigned values REPLACE the existing ones; to append, include the current values::

    current_asset.update({tags: e.upload_info.tags.concat(["large"])})

Several calls merge key by key, the later call wins. Only ``tags`` (list of strings, at most 100,
each 1..255 characters, duplicates dropped), ``context`` (flat map; numbers and booleans become
strings, nested values and null are refused) and ``metadata`` (a JSON object) are accepted, at most
64 KiB of JSON in all; anything else fails the step with ``error_kind="invalid_update"``. A
failing script applies none of its updates.

The sandbox (``quickjs``; see :func:`run_script`)
-------------------------------------------------
* A fresh QuickJS runtime per run with a memory limit, a 256 KiB stack limit and a CPU-time
  limit, all set before any user code runs; the time limit covers the script, every promise job
  it schedules (``Promise.resolve().then(...)`` and ``async`` functions work; an endless chain is
  stopped) and the read-back of its updates.
* Runs happen in a pooled sandbox process (``isolate=True``, the default) that a wall-clock
  watchdog kills at ``3 * time_limit_ms + 250 ms`` (:func:`watchdog_deadline_s`); the process
  also arms its own ``SIGALRM`` one second later, so a stuck run ends even if this process died.
  This is needed because QuickJS's own limit is not a hard bound: it polls the clock only every
  10,000 loop iterations or calls (a loop whose body is ~15 ms of native work, e.g.
  ``s.indexOf`` over 20 MB, ran 151 s under a 50 ms limit) and never inside a regular
  expression (``/(a+)+$/.test("a".repeat(40) + "b")`` never returns). A killed process is
  replaced on the next run; the sandbox process gets no environment secrets. ``isolate=False``
  runs in the calling thread (same results, no hard bound; tests and tools only).
* Nothing of the host is reachable: no ``std``/``os`` modules, no module loader (``import()``
  fails), no Python callables; ``require``, ``process``, ``console``, ``print`` do not exist.
  ``Function("return this")()`` reaches only the JS global object, which holds only ECMAScript
  built-ins and ``e``/``event``/``current_asset``. ``Atomics.wait`` refuses to block.
* ``current_asset.update`` is plain JS: it serialises its argument at call time (getters,
  ``toJSON`` and proxies run then, under the time limit) and appends the text to a private
  buffer; afterwards the host reads back one string. Host code never converts a script-made
  value, so a script cannot make the host run unbounded JS (the Python binding converts a thrown
  value with ``toString`` outside the time limit: every script error is therefore caught in JS,
  and ``InternalError.prototype``, the only prototype of the engine's own uncatchable errors,
  is frozen with its own ``toString``/``name``/``message``/``Symbol.toPrimitive``).
* Strings cross the boundary as ASCII JSON only (the binding truncates at NUL and crashes on lone
  surrogates).

Limits and caveats: the CPU limit is QuickJS's ``clock()``, the CPU time of the whole process.
In the sandbox process that is the script's own time; inline, busy threads make it run faster
than wall time, so a run that timed out before ``time_limit_ms`` of wall time had passed is
retried once with the budget scaled by the load seen (at most 8x). Native operations are slow
enough that at the default 50 ms / 32 MiB some allocation loops time out before they fill the
heap (``'x'.repeat(1e6)`` in a loop needs ~80 ms to reach 32 MiB; string doubling or typed
arrays hit the memory limit in a few ms). Scripts are synchronous CPU work only (no timers, no
I/O); unhandled promise rejections other than a rejection of the script's completion value (e.g.
an ``async`` IIFE as last statement) are not reported. A script can mislabel its own failure
(``throw null`` reads as ``memory``, because QuickJS throws null when the heap is too full to
build its "out of memory" error); that changes nothing but its own outcome. Syntax errors are
told from runtime ``SyntaxError``s (``JSON.parse``) by their stack: the script's own parse error
has no frame of the script.

Cost (2-core dev machine, small script, full asset JSON): ~0.6 ms per run inline (fresh runtime
~0.12 ms, prelude ~0.2 ms, JSON in and out), ~0.75 ms isolated (pipe round trip); a sandbox
process takes ~0.1 s to start (once per pool slot, or after a kill; :func:`warm_sandboxes`).
See ``tests/unit/sinks/test_on_success.py::test_overhead``.

Python handlers
---------------
:func:`load_handlers` loads entry points of group ``darkroom.on_success`` and explicit
``"package.module:function"`` paths (setting ``on_success_handlers``). A handler receives the
asset JSON and returns ``None`` or an update mapping (same validation and replace semantics).
:func:`run_handlers` runs them in load order; each handler sees the asset with the updates of the
handlers before it applied; a raising handler or a bad update is recorded, never raised. Python
handlers are trusted code: no time or memory limit.

Blocking: callers run all of this in a worker thread.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import quickjs

ENTRY_POINT_GROUP = "darkroom.on_success"
UPDATE_KEYS = ("tags", "context", "metadata")
MAX_TAGS = 100
MAX_TAG_CHARS = 255
MAX_CONTEXT_KEY_CHARS = 255
MAX_UPDATE_BYTES = 64 * 1024
MAX_UPDATE_CALLS = 1000
MAX_ERROR_CHARS = 500
STACK_BYTES = 256 * 1024
# Retry budget scaling when other threads inflated the process CPU clock (see module docstring).
MAX_LOAD_SCALE = 8.0
# Isolated runs: the sandbox process is killed this long after the request (wall clock).
WATCHDOG_FACTOR = 3.0
WATCHDOG_SLACK_S = 0.25
CHILD_START_TIMEOUT_S = 30.0
CHILD_ALARM_MARGIN_S = 1.0  # the sandbox process ends itself this long after the watchdog
MAX_IDLE_SANDBOXES = 8
# A run whose read-back or input parsing needs more than this is a host problem, not the script's.
_HOST_STEP_S = 0.25

ErrorKind = Literal["timeout", "memory", "syntax", "exception", "invalid_update"]
Handler = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


class OnSuccessConfigError(RuntimeError):
    """A configured handler cannot be loaded (bad import path, import error, not callable)."""


class InvalidUpdate(ValueError):
    """An update mapping that is not ``{tags?, context?, metadata?}`` within the limits."""


@dataclass(frozen=True)
class ScriptOutcome:
    status: Literal["ok", "error"]
    updates: dict[str, Any] | None
    error: str | None
    error_kind: ErrorKind | None
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HandlerOutcome:
    name: str
    status: Literal["ok", "error"]
    updates: dict[str, Any] | None
    error: str | None
    duration_ms: float
    error_kind: Literal["exception", "invalid_update"] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- validation
def validate_update(value: Any) -> dict[str, Any]:
    """The normalised update (tags deduplicated, context values as strings); InvalidUpdate if not
    a mapping of the accepted keys with accepted values."""
    if not isinstance(value, Mapping):
        raise InvalidUpdate(f"an update must be an object, got {_type_name(value)}")
    unknown = [str(k) for k in value if k not in UPDATE_KEYS]
    if unknown:
        raise InvalidUpdate(f"unknown update keys {sorted(unknown)}; allowed: tags, context, "
                            "metadata")
    out: dict[str, Any] = {}
    if "tags" in value:
        out["tags"] = _tags(value["tags"])
    if "context" in value:
        out["context"] = _context(value["context"])
    if "metadata" in value:
        out["metadata"] = _metadata(value["metadata"])
    _check_size(out)
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _tags(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise InvalidUpdate(f"tags must be an array of strings, got {_type_name(value)} "
                            "(use [] to remove all tags)")
    tags: list[str] = []
    for t in value:
        if not isinstance(t, str):
            raise InvalidUpdate(f"tags must be strings, got {_type_name(t)}")
        if not t or len(t) > MAX_TAG_CHARS:
            raise InvalidUpdate(f"a tag must have 1..{MAX_TAG_CHARS} characters")
        tags.append(t)
    tags = list(dict.fromkeys(tags))
    if len(tags) > MAX_TAGS:
        raise InvalidUpdate(f"at most {MAX_TAGS} tags, got {len(tags)}")
    return tags


def _context(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidUpdate(f"context must be an object of strings, got {_type_name(value)} "
                            "(use {} to remove all context)")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or len(k) > MAX_CONTEXT_KEY_CHARS:
            raise InvalidUpdate(f"a context key must be a string of 1..{MAX_CONTEXT_KEY_CHARS} "
                                "characters")
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v)):
            out[k] = str(v) if isinstance(v, int) or not v.is_integer() else str(int(v))
        else:
            raise InvalidUpdate(f"context value {k!r} must be a string, number or boolean, got "
                                f"{_type_name(v)}")
    return out


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidUpdate(f"metadata must be an object, got {_type_name(value)} "
                            "(use {} to remove all metadata)")
    try:
        # A JSON round trip: a plain, detached, JSON-only copy (no NaN, string keys).
        out = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidUpdate(f"metadata must be JSON: {exc}") from None
    if not isinstance(out, dict):  # pragma: no cover - a Mapping always dumps to an object
        raise InvalidUpdate("metadata must be an object")
    return out


def _check_size(update: Mapping[str, Any]) -> None:
    try:
        size = len(json.dumps(update, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:
        raise InvalidUpdate("update contains text that is not valid Unicode (lone surrogate)") \
            from None
    if size > MAX_UPDATE_BYTES:
        raise InvalidUpdate(f"update is {size} bytes of JSON, the limit is {MAX_UPDATE_BYTES}")


def _merge(updates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for u in updates:
        merged.update(validate_update(u))
    _check_size(merged)
    return merged


def apply_updates(asset_json: Mapping[str, Any],
                  updates: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """The final ``{tags, context, metadata}`` after applying the updates in order (the script's
    first, then the handlers' in load order); each key present replaces the current value.
    ``None`` entries are skipped. Updates are validated (InvalidUpdate)."""
    out: dict[str, Any] = {
        "tags": list(asset_json.get("tags") or []),
        "context": dict(asset_json.get("context") or {}),
        "metadata": copy.deepcopy(dict(asset_json.get("metadata") or {})),
    }
    for u in updates:
        if u is not None:
            out.update(validate_update(u))
    return out


# ---------------------------------------------------------------------------------- JavaScript
# Evaluated in each fresh context before any user code; its value is the host's only handle.
# Everything that may run user code (the script, toJSON/getters in update arguments, a thrown
# value's toString) runs inside try/catch under the time limit and yields primitives only.
_PRELUDE = r"""
(function (g) {
  "use strict";
  const stringify = JSON.stringify, parse = JSON.parse, indirectEval = g.eval;
  const apply = Reflect.apply, defineProperty = Object.defineProperty, freeze = Object.freeze;
  const promiseThen = Promise.prototype.then;
  const SyntaxErr = SyntaxError, IntErr = InternalError, Str = String;
  const MAX_CALLS = @MAX_CALLS@, MAX_CHARS = @MAX_CHARS@;

  // The engine's uncatchable errors (interrupted, out of memory, stack overflow) are
  // InternalErrors that the host converts with toString outside the time limit: make every
  // lookup that conversion does end on this frozen prototype.
  const IEP = IntErr.prototype;
  const lock = (k, v) => defineProperty(IEP, k, {value: v, writable: false, enumerable: false,
                                                 configurable: false});
  lock(Symbol.toPrimitive, undefined);
  lock("toString", Error.prototype.toString);
  lock("name", "InternalError");
  lock("message", "");
  lock("stack", "");
  freeze(IEP);
  freeze(IntErr);

  let src = null, calls = "", ncalls = 0, invalid = null;
  let failKind = null, failText = null, failFrame = "";
  let awaiting = false, settled = false;

  function text(v) {
    try { return Str(v); } catch (err) { return "<unprintable error>"; }
  }
  function describe(err) {
    let kind = "exception", msg = "<unprintable error>", frame = "";
    try {
      msg = text(err);
      // QuickJS throws null when the heap is too full to build the "out of memory" error
      // (a heap full of small objects); a script that throws null reads the same.
      if (err === null) { kind = "memory"; msg = "InternalError: out of memory"; }
      else if (err instanceof IntErr) {
        if (err.message === "out of memory") kind = "memory";
        else if (err.message === "interrupted") kind = "timeout";
      }
      const st = (err !== null && typeof err === "object") ? err.stack : undefined;
      if (typeof st === "string") {
        const lines = st.trim().split("\n");
        frame = lines[0].trim();
        // A parse error of the script itself: its location, then our indirect eval and this
        // step function, and no frame of the script (a SyntaxError the script throws, or one of
        // JSON.parse or a nested eval, has more frames).
        if (err instanceof SyntaxErr && lines.length === 3 && frame.indexOf("(") < 0 &&
            lines[1].trim() === "at eval (native)")
          kind = "syntax";
      }
    } catch (e2) { /* keep what we have */ }
    failKind = kind; failText = msg; failFrame = frame;
  }

  function update(fields) {
    if (ncalls >= MAX_CALLS) {
      invalid = "more than " + MAX_CALLS + " current_asset.update calls";
      throw new TypeError(invalid);
    }
    let s = stringify(fields);  // getters, toJSON, proxies run now, under the time limit
    if (typeof s !== "string") s = "null";
    if (s.length > MAX_CHARS || calls.length + s.length > 16 * MAX_CHARS) {
      invalid = "current_asset.update argument larger than " + MAX_CHARS + " bytes of JSON";
      throw new RangeError(invalid);
    }
    calls = ncalls === 0 ? s : calls + "," + s;
    ncalls++;
  }
  defineProperty(g, "current_asset", {
    value: freeze({update: update}), writable: false, enumerable: false, configurable: false});

  function onReject(err) { if (failKind === null) describe(err); }

  return function step(op, arg) {
    if (op === "init") {
      const input = parse(arg);
      src = input.src;
      const ev = {upload_info: input.upload_info, status: input.status};
      g.e = ev;
      g.event = ev;
      return "";
    }
    if (op === "run") {
      const code = src;
      src = null;
      if (code === null) return "";
      try {
        const result = indirectEval(code);
        if (result !== null && typeof result === "object") {
          try {
            apply(promiseThen, result, [function () { settled = true; },
                                        function (err) { settled = true; onReject(err); }]);
            awaiting = true;
          } catch (e3) { /* not a promise */ }
        }
      } catch (err) {
        describe(err);
      }
      return "";
    }
    if (op === "finish") {
      if (awaiting && !settled && failKind === null) {
        // every job ran and the script's promise is still pending: it can never settle
        failKind = "exception";
        failText = "the script's promise never settled";
      }
      const fail = failKind === null ? null : {kind: failKind, message: failText,
                                              frame: failFrame};
      return '{"calls":[' + calls + '],"fail":' + stringify(fail) + ',"invalid":' +
             stringify(invalid) + '}';
    }
    return "";
  };
})(globalThis)
""".replace("@MAX_CALLS@", str(MAX_UPDATE_CALLS)).replace("@MAX_CHARS@", str(MAX_UPDATE_BYTES))


class _Stop(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


def _cap(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _host_error(exc: Exception) -> _Stop:
    """An error that reached the host: only the engine's own InternalErrors get here."""
    first = str(exc).split("\n", 1)[0].strip()
    if "interrupted" in first:
        return _Stop("timeout", "script exceeded its time limit")
    if "out of memory" in first:
        return _Stop("memory", "script exceeded its memory limit")
    if isinstance(exc, quickjs.StackOverflow) or "stack overflow" in first:
        return _Stop("exception", "InternalError: stack overflow")
    return _Stop("exception", _cap(first or type(exc).__name__))


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null so the input is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class _Run:
    outcome: ScriptOutcome
    cpu_s: float  # process CPU consumed by the script phases
    wall_s: float


class _Sandbox:
    """One fresh QuickJS runtime for one run, used and dropped in the calling thread (the binding
    crashes when threads share a runtime). ``cpu_used``/``wall_used`` count the script phases."""

    def __init__(self, memory_limit_bytes: int, cpu_limit_s: float) -> None:
        self.ctx: Any = quickjs.Context()
        self.ctx.set_memory_limit(memory_limit_bytes)
        self.ctx.set_max_stack_size(STACK_BYTES)
        self.step: Any = None
        self.cpu_limit_s = cpu_limit_s
        self.cpu_used = 0.0
        self.wall_used = 0.0

    def host(self, *args: str) -> Any:
        """Our own steps (prelude, input, read-back): no user code, a fixed safety budget."""
        self.ctx.set_time_limit(_HOST_STEP_S)
        try:
            if self.step is None:
                self.step = self.ctx.eval(_PRELUDE)
            return self.step(*args)
        except quickjs.JSException as exc:
            raise _host_error(exc) from None

    def timed(self, *args: str) -> Any:
        """A script step (``run``) or, without args, one promise job, on what is left of the
        budget; raises _Stop("timeout") once it is spent."""
        remaining = self.cpu_limit_s - self.cpu_used
        if remaining <= 0:
            raise _Stop("timeout", "script exceeded its time limit")
        self.ctx.set_time_limit(remaining)
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return self.step(*args) if args else self.ctx.execute_pending_job()
        except quickjs.JSException as exc:
            raise _host_error(exc) from None
        finally:
            self.cpu_used += time.process_time() - c0
            self.wall_used += time.perf_counter() - w0

    def close(self) -> None:
        self.step = None  # JS handles hold the context: drop them first
        self.ctx = None


def _run_once(payload: str, cpu_limit_s: float, memory_limit_bytes: int) -> _Run:
    t0 = time.perf_counter()
    box = _Sandbox(memory_limit_bytes, cpu_limit_s)
    try:
        try:
            box.host("init", payload)
        except _Stop as stop:  # the asset does not fit the memory limit, mostly
            raise _Stop(stop.kind, "could not load the asset into the sandbox: " + stop.message) \
                from None
        box.timed("run")
        # Promise jobs: each job gets what is left of the budget; an endless chain runs it out.
        while box.timed():
            pass
        result = json.loads(box.host("finish"))
        if result.get("invalid"):  # before "fail": the update() that refused also threw
            raise _Stop("invalid_update", str(result["invalid"]))
        fail = result.get("fail")
        if fail is not None:
            # A real interrupt stops the run above (its job used up the budget); an
            # "interrupted" error that reaches here was thrown by the script itself.
            kind = fail.get("kind")
            message = str(fail.get("message") or "")
            frame = str(fail.get("frame") or "")
            if frame and kind != "memory":
                message = f"{message} ({frame})"
            raise _Stop(kind if kind in ("memory", "syntax") else "exception", _cap(message))
        try:
            updates = _merge(result.get("calls") or [])
        except InvalidUpdate as exc:
            raise _Stop("invalid_update", _cap(str(exc))) from None
        outcome = ScriptOutcome("ok", updates, None, None, 0.0)
    except _Stop as stop:
        outcome = ScriptOutcome("error", None, stop.message, stop.kind, 0.0)
    finally:
        box.close()
    wall_ms = round((time.perf_counter() - t0) * 1000, 3)
    return _Run(dataclasses.replace(outcome, duration_ms=wall_ms), box.cpu_used, box.wall_used)


def _run_inline(payload: str, limit_s: float, memory_limit_bytes: int) -> ScriptOutcome:
    run = _run_once(payload, limit_s, memory_limit_bytes)
    if (run.outcome.error_kind == "timeout" and run.cpu_s > 0
            and run.wall_s < limit_s * 0.8):
        # Other threads ran the process clock faster than wall time: retry once with the CPU
        # budget scaled by the load seen, so the script gets about time_limit_ms of wall time.
        scale = min(run.cpu_s / max(run.wall_s, 1e-6), MAX_LOAD_SCALE)
        if scale > 1.25:
            run = _run_once(payload, limit_s * scale, memory_limit_bytes)
    return run.outcome


def watchdog_deadline_s(time_limit_ms: int) -> float:
    """Wall-clock time after which an isolated run's sandbox process is killed."""
    return WATCHDOG_FACTOR * max(time_limit_ms, 1) / 1000.0 + WATCHDOG_SLACK_S


def run_script(script: str, upload_info: Mapping[str, Any], status: str = "success", *,
               time_limit_ms: int = 50, memory_limit_bytes: int = 32 * 2**20,
               isolate: bool = True) -> ScriptOutcome:
    """Run an on-success script in a fresh sandbox; never raises for anything the script does.

    ``time_limit_ms`` bounds the CPU time of the script and its promise jobs;
    ``memory_limit_bytes`` bounds the JS heap including the asset JSON. With ``isolate`` (the
    default) the run happens in a pooled sandbox process that a wall-clock watchdog kills at
    :func:`watchdog_deadline_s` (QuickJS polls its time limit only every 10,000 loop iterations
    or calls and never inside a regular expression: see the module docstring); ``isolate=False``
    runs in this thread and has no hard bound. Blocking: call it in a worker thread.
    """
    t0 = time.perf_counter()
    payload = json.dumps({"src": script, "upload_info": _jsonable(upload_info),
                          "status": status}, ensure_ascii=True, allow_nan=False, default=str)
    limit_s = max(time_limit_ms, 1) / 1000.0
    if isolate:
        out = _POOL.run(payload, limit_s, memory_limit_bytes, watchdog_deadline_s(time_limit_ms))
    else:
        out = _run_inline(payload, limit_s, memory_limit_bytes)
    return dataclasses.replace(out, duration_ms=round((time.perf_counter() - t0) * 1000, 3))


# ---------------------------------------------------------------------------------- isolation
class _ChildFailed(Exception):
    pass


_CHILD_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from sinks.on_success import _child_main; _child_main()")


def _child_main() -> None:
    """The sandbox process: one request per line on stdin ("<limit_s> <memory> <alarm_s>
    <payload JSON>"), one outcome (JSON) per line on stdout."""
    # Backstop for the parent's watchdog (and for a parent that died meanwhile; an idle process
    # ends at EOF on stdin): SIGALRM's default action ends this process.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            limit_s, memory_limit_bytes, alarm_s, payload = line.decode("ascii").split(" ", 3)
            signal.setitimer(signal.ITIMER_REAL, float(alarm_s))
            outcome = _run_inline(payload.rstrip("\n"), float(limit_s), int(memory_limit_bytes))
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the pool process
            outcome = ScriptOutcome("error", None, _cap(f"sandbox failure: {exc!r}"),
                                    "exception", 0.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps(asdict(outcome), ensure_ascii=True).encode() + b"\n")
        out.flush()


def _child_env() -> dict[str, str]:
    """The sandbox process gets no secrets from this process's environment."""
    keep = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "LANG", "LC_ALL", "TZ",
            "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


class _Child:
    """One sandbox process; used by one thread at a time."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_BOOT, root], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0, start_new_session=True, close_fds=True,
            env=_child_env())
        self._buf = b""
        try:
            if self._read_line(time.monotonic() + CHILD_START_TIMEOUT_S) != b"ready":
                raise _ChildFailed("sandbox process did not start")
        except BaseException:
            self.kill()
            raise

    def _read_line(self, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _ChildFailed("sandbox process died")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def call(self, request: bytes, deadline_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(request)
        except OSError:
            raise _ChildFailed("sandbox process died") from None
        reply: dict[str, Any] = json.loads(self._read_line(time.monotonic() + deadline_s))
        return reply

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class _Pool:
    """Idle sandbox processes, reused across runs; a killed or dead one is replaced lazily."""

    def __init__(self) -> None:
        self._idle: list[_Child] = []
        self._lock = threading.Lock()

    def _take(self) -> _Child | None:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.proc.poll() is None:
                    return child
                child.kill()
        return None

    def _give(self, child: _Child) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_SANDBOXES:
                self._idle.append(child)
                return
        child.kill()

    def run(self, payload: str, limit_s: float, memory_limit_bytes: int,
            deadline_s: float) -> ScriptOutcome:
        # payload is ASCII JSON: no newline, so one line carries the whole request
        alarm_s = deadline_s + CHILD_ALARM_MARGIN_S
        request = f"{limit_s!r} {memory_limit_bytes} {alarm_s!r} {payload}\n".encode()
        for attempt in (1, 2):
            child = self._take() if attempt == 1 else None
            reused = child is not None
            try:
                if child is None:
                    child = _Child()
                reply = child.call(request, deadline_s)
            except TimeoutError:
                if child is not None:
                    child.kill()
                return ScriptOutcome(
                    "error", None, f"script exceeded its time limit (sandbox killed after "
                    f"{deadline_s:.2f} s of wall time)", "timeout", 0.0)
            except (_ChildFailed, OSError, ValueError) as exc:
                if child is not None:
                    child.kill()
                if reused:  # an idle process that died meanwhile: once more on a fresh one
                    continue
                code = child.proc.returncode if child is not None else None
                how = f" (signal {-code})" if code is not None and code < 0 else ""
                # e.g. QuickJS crashing on an allocation that met the memory limit: contained
                return ScriptOutcome("error", None, f"sandbox failure: {exc}{how}", "exception",
                                     0.0)
            self._give(child)
            return ScriptOutcome(reply["status"], reply["updates"], reply["error"],
                                 reply["error_kind"], 0.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def warm(self, n: int) -> None:
        with self._lock:
            missing = n - len(self._idle)
        for _ in range(max(missing, 0)):
            self._give(_Child())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.kill()

    def forget(self) -> None:
        """In a forked child: the pipes belong to the parent."""
        self._idle = []
        self._lock = threading.Lock()


_POOL = _Pool()
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL.forget)


def warm_sandboxes(n: int = 1) -> None:
    """Start up to ``n`` idle sandbox processes now (each takes ~0.1 s to start), so the first
    runs do not pay for it. Optional; raises if a process cannot be started."""
    _POOL.warm(min(n, MAX_IDLE_SANDBOXES))


def close_sandboxes() -> None:
    """Stop the idle sandbox processes (also done at exit)."""
    _POOL.close()


# ---------------------------------------------------------------------------------- handlers
def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                  key=lambda ep: (ep.name, ep.value))


def _import_path(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise OnSuccessConfigError(
            f"on-success handler {path!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except Exception as exc:  # any import failure is a configuration error
        raise OnSuccessConfigError(
            f"on-success handler {path!r}: cannot import {module_name.strip()!r}: "
            f"{type(exc).__name__}: {exc}") from exc
    for part in attr.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise OnSuccessConfigError(
                f"on-success handler {path!r}: {module_name.strip()!r} has no attribute "
                f"{attr.strip()!r}") from None
    return obj


def handler_name(handler: Handler) -> str:
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{getattr(handler, '__module__', '?')}:{name}"


def load_handlers(import_paths: Sequence[str] = ()) -> list[Handler]:
    """Entry points of group ``darkroom.on_success`` (by name), then ``import_paths`` in order;
    each callable once. OnSuccessConfigError names the handler that cannot be loaded."""
    loaded: list[Handler] = []
    for ep in _entry_points():
        try:
            obj = ep.load()
        except Exception as exc:
            raise OnSuccessConfigError(
                f"on-success entry point {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}") from exc
        if not callable(obj):
            raise OnSuccessConfigError(
                f"on-success entry point {ep.name!r} ({ep.value}) is not callable")
        loaded.append(obj)
    for path in import_paths:
        obj = _import_path(path)
        if not callable(obj):
            raise OnSuccessConfigError(f"on-success handler {path!r} is not callable")
        loaded.append(obj)
    unique: list[Handler] = []
    for h in loaded:
        if not any(h is u for u in unique):
            unique.append(h)
    return unique


def run_handlers(handlers: Sequence[Handler],
                 asset_json: Mapping[str, Any]) -> list[HandlerOutcome]:
    """Run each handler on a private copy of the asset JSON, in order; a handler sees the updates
    of the handlers before it applied. Failures are recorded, never raised."""
    current: dict[str, Any] = json.loads(json.dumps(_jsonable(asset_json), default=str))
    outcomes: list[HandlerOutcome] = []
    for h in handlers:
        name = handler_name(h)
        t0 = time.perf_counter()
        kind: Literal["exception", "invalid_update"] | None = None
        updates: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = h(copy.deepcopy(current))
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise InvalidUpdate("handler returned an awaitable; handlers are synchronous")
            updates = {} if result is None else validate_update(result)
        except InvalidUpdate as exc:
            kind, error = "invalid_update", _cap(str(exc))
        except Exception as exc:  # noqa: BLE001 - a handler's failure is its outcome
            kind, error = "exception", _cap(f"{type(exc).__name__}: {exc}")
        ms = round((time.perf_counter() - t0) * 1000, 3)
        if kind is None and updates is not None:
            current.update(updates)
            outcomes.append(HandlerOutcome(name, "ok", updates, None, ms))
        else:
            outcomes.append(HandlerOutcome(name, "error", None, error, ms, kind))
    return outcomes
