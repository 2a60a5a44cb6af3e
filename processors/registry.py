"""The processor registry: the one place a task is declared.

A processor is pure code: ``(TaskInput, params) -> JSON-able dict``. It never touches Kafka or
storage. The agents layer generates one Faust agent per registered processor, fetches the input in
the form the processor declares (``InputSpec``), runs it in a worker thread and publishes the
result.

What a task's result does to the asset is declared here too, so the sink, the store and the API
name no task:

* ``info``: info keys the task contributes (info key -> result field name, or a callable of the
  result returning the value; ``None`` or a missing field adds nothing);
* ``tags``: tags the task adds to the asset, after the upload's own (a result field holding a
  list, or a callable of the result returning a list);
* ``hooks``: :data:`ResultHook` callables the sink runs after a result was merged
  (a :class:`ResultEvent` in, an optional :class:`HookOutcome` out);
* ``effect``: what an ``ok`` result does to the asset's original object, executed by the sink
  (processors never touch storage): ``"quarantine-original"`` (moved under ``quarantine/``),
  ``"delete-original"`` (deleted), ``"webhook"`` (a signed webhook to the result's ``url`` with
  its ``event``, through the webhook outbox); see :data:`EFFECTS`;
* ``routes``: :data:`RouteFactory` callables the API calls once to mount the task's HTTP routes
  (a :class:`RouteContext` in, a FastAPI ``APIRouter`` or a :class:`TaskRoutes` out).

Hooks and routes are callables or lazy ``"package.module:attribute"`` strings, resolved where they
are used (:func:`resolve`): this package imports nothing of Kafka, Faust, storage, ``agents`` or
``sinks``, so built-in tasks name their sink and API adapters by string.

There is no process-wide registry: :func:`register` marks the function with its
:class:`Processor`, and :func:`load_all` imports the built-in modules (``BUILTIN_MODULES`` in
``processors/__init__.py``) and the ``darkroom.processors`` entry points and collects the marked
functions, building a new mapping on every call.
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

from processors.settings import ProcessorSettings

InputKind = Literal["header", "image", "file"]
LaneName = Literal["light", "cpu", "long"]
"""Where a task's work runs in a worker (``register(..., lane=...)``): ``light`` (header-only
tasks: no decode; the default for ``InputSpec(kind="header")``), ``cpu`` (the default: a pool
of ``DARKROOM_PROCESSOR_THREADS``, the core count) or ``long`` (tasks taking seconds to minutes
— video, remove-background, remove-artifacts, ocr — on a lane of their own,
``DARKROOM_LONG_TASK_CONCURRENCY``, so they never delay the others)."""
Media = Literal["image", "video"]
RuleKind = Literal["number", "string"]
LANES: tuple[str, ...] = ("light", "cpu", "long")
Effect = Literal["quarantine-original", "delete-original", "webhook"]
EFFECTS: tuple[str, ...] = ("quarantine-original", "delete-original", "webhook")


class NoParams(BaseModel):
    """Parameters model for processors that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class InputSpec:
    """What a processor needs to see of the asset.

    * ``header``: only the probed properties (no pixel decode at all);
    * ``image``: a decoded RGB(A) Pillow image whose longest side is at most ``max_side``
      (``None`` = full size). The agent decodes once per asset (JPEG draft mode) and shares it;
    * ``file``: a local filesystem path (video tasks hand it to ffmpeg).
    """

    kind: InputKind = "image"
    max_side: int | None = None
    mode: str = "RGB"
    #: the filter that shrinks the shared decode to ``max_side``: "bilinear" (fast) or "box"
    #: (an exact area average: what a statistic of the whole picture, e.g. a BlurHash, needs)
    resample: Literal["bilinear", "box"] = "bilinear"


@dataclass(frozen=True)
class RuleProperty:
    """A validation-rule property a processor's result offers (e.g. 'number of faces').

    ``extract`` maps the processor's result dict to the value the rule compares; ``aliases`` are the
    human phrases accepted in rule strings ("number of faces", "faces").
    """

    kind: RuleKind
    extract: Callable[[Mapping[str, Any]], Any]
    aliases: tuple[str, ...] = ()


class ProcessorError(Exception):
    """A processor failure. ``permanent=True`` means retrying cannot help (corrupt input)."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class TaskTimeout(ProcessorError):
    """The task ran out of time (its :class:`Deadline` passed or was cancelled): not permanent,
    a retry may fit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class Deadline:
    """A cooperative time limit of one task attempt (``TaskInput.deadline``).

    The agent starts it when the processor starts running in its thread (time spent waiting for
    a thread does not count) and cancels it when the attempt is given up (timeout, shutdown).
    Python code in a thread cannot be interrupted from outside, so long processors call
    :meth:`check` between their steps (it raises :class:`TaskTimeout` once the deadline has
    passed or was cancelled), and subprocess runners kill their child when :meth:`wait` returns
    (``processors.media.ffmpeg.run_ffmpeg``). ``Deadline()`` never expires (a processor run
    outside an agent); ``Deadline(seconds, within=parent)`` ends at the earlier of the two and
    is cancelled with its parent.
    """

    def __init__(self, seconds: float | None = None, *, within: Deadline | None = None) -> None:
        self.seconds = seconds
        end: float = time.monotonic() + seconds if seconds is not None else math.inf
        self.parent: Deadline | None = within
        cancelled: threading.Event = threading.Event()
        if within is not None:
            end = min(end, within.end)
            cancelled = within._cancelled
        self.end: float = end
        self._cancelled: threading.Event = cancelled
        self.reason = ""

    def cancel(self, reason: str = "") -> None:
        """Give up: every :meth:`check` from now on raises, :meth:`wait` returns at once (a
        child's cancel is its parent's: they share one flag)."""
        root: Deadline = self
        while root.parent is not None:
            root = root.parent
        root.reason = root.reason or reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        return self.cancelled or time.monotonic() >= self.end

    def remaining(self) -> float:
        """Seconds left (``math.inf`` without a limit); :class:`TaskTimeout` when none are."""
        left = self.end - time.monotonic()
        if left <= 0 or self.cancelled:
            raise self.error()
        return left

    def check(self) -> None:
        """Raise :class:`TaskTimeout` if the time is up (call it between the steps of a long
        computation)."""
        self.remaining()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the deadline passes, is cancelled, or ``timeout`` elapsed; True when the
        time is up (what a subprocess runner waits on before killing its child)."""
        left = self.end - time.monotonic()
        limit = left if timeout is None else min(left, timeout)
        if limit == math.inf:
            self._cancelled.wait()
        elif limit > 0:
            self._cancelled.wait(limit)
        return self.expired

    def error(self) -> TaskTimeout:
        root: Deadline = self
        while root.parent is not None:
            root = root.parent
        if root.reason:
            return TaskTimeout(root.reason)
        limit = self.seconds if self.seconds is not None else root.seconds
        return TaskTimeout(f"timed out after {limit:g}s" if limit is not None else "cancelled")


@dataclass
class TaskInput:
    """What the agent hands a processor.

    ``properties`` always holds the probed asset properties (canonical names: ``width``,
    ``height``, ``format``, ``file_size``, ``bitrate``, ``duration``, ``folder``, ``filename``,
    ``content_type``); absent values are missing keys, not ``None``.
    """

    properties: Mapping[str, Any]
    image: Any = None  # PIL.Image.Image for kind="image"
    path: Path | None = None
    # A private empty folder: every file the processor leaves here is stored as a derived object
    # (derived/<asset>/<post-process>/<relative path>) and listed in the result under "derived"
    # as {relative path: URI}. Removed after the task, whatever happened.
    workdir: Path | None = None
    # Long tasks may report progress (0..100); the agent publishes it on the asset.
    progress: Any = None
    # What the deployment configured for processors (model threads, data dir, logo library):
    # passed in by the agent, never read from the environment (processors/settings.py).
    settings: ProcessorSettings = field(default_factory=ProcessorSettings)
    # The attempt's time limit, started when the processor started running: long processors
    # call ``deadline.check()`` between their steps (see :class:`Deadline`). Never expires when
    # the processor is run outside an agent.
    deadline: Deadline = field(default_factory=Deadline)


RunFn = Callable[[TaskInput, Any], dict[str, Any]]


# ------------------------------------------------------------------ declared side effects
@dataclass(frozen=True)
class Services:
    """What the host process hands a task's hooks and routes. Typed ``Any`` so that this package
    imports none of them:

    * ``engine``: the metadata database's SQLAlchemy ``Engine`` (a task may keep its own tables
      there, like the face and similarity indexes);
    * ``data_dir``: the data folder (``DARKROOM_DATA_DIR``), for caches and files;
    * ``settings``: the process's ``agents.settings.Settings``.
    """

    engine: Any
    data_dir: Path
    settings: Any = None


@dataclass(frozen=True)
class ResultEvent:
    """What a result hook receives: an ``ok`` result of the task that the sink just merged into
    the asset (``data`` is the whole result, also one that travelled as an object). A hook runs
    again for a replay whose result differs, so it should be idempotent."""

    asset_id: str
    postprocess: str
    task: str
    data: Mapping[str, Any]
    services: Services


@dataclass(frozen=True)
class HookOutcome:
    """What a result hook may return: ``notices`` to add to the asset (they show in ``GET``, in
    AssetUpdates and webhooks; each once)."""

    notices: tuple[str, ...] = ()


ResultHook: TypeAlias = Callable[[ResultEvent], HookOutcome | None]


@dataclass(frozen=True)
class RouteContext:
    """What a route factory receives when the API builds its app.

    ``services()`` gives the API's :class:`Services`; call it inside a request (the database is
    opened when the API starts, after the routes are mounted). ``auth`` are the FastAPI
    dependencies every route must run (the API-key check: pass them to the ``APIRouter``).
    ``settings`` are the API's settings, known at once.
    """

    services: Callable[[], Services]
    auth: Sequence[Any]
    settings: Any


@dataclass(frozen=True)
class BodyCap:
    """The largest request body a route accepts; the API's guard answers 413 with ``message``
    before reading more (routes without one get the API's small default)."""

    max_bytes: int
    message: str


@dataclass(frozen=True)
class TaskRoutes:
    """What a route factory may return instead of a bare router: the router (a FastAPI
    ``APIRouter``) and the body limits of its routes, by (method, path)."""

    router: Any
    body_limits: Mapping[tuple[str, str], BodyCap] = field(default_factory=dict)


RouteFactory: TypeAlias = Callable[[RouteContext], Any]  # -> APIRouter | TaskRoutes
HookRef: TypeAlias = ResultHook | str  # a callable or "package.module:attribute"
RouteRef: TypeAlias = RouteFactory | str
InfoSource: TypeAlias = str | Callable[[Mapping[str, Any]], Any]
TagSource: TypeAlias = str | Callable[[Mapping[str, Any]], Sequence[str] | None]


def resolve(ref: Any) -> Any:
    """A declared hook or route factory: the callable itself, or the attribute a
    ``"package.module:attribute"`` string names (imported now; ImportError/AttributeError when
    it does not exist)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def describe_ref(ref: Any) -> str:
    """A hook or route factory's name, for logs."""
    if isinstance(ref, str):
        return ref
    return f"{getattr(ref, '__module__', '?')}:{getattr(ref, '__qualname__', repr(ref))}"


def _check_ref(kind: str, task: str, ref: Any) -> Any:
    if isinstance(ref, str):
        module, sep, attr = ref.partition(":")
        if not (sep and module and attr):
            raise ValueError(f"task {task!r}: {kind} {ref!r} is not 'package.module:attribute'")
    elif not callable(ref):
        raise TypeError(f"task {task!r}: {kind} {ref!r} is neither callable nor a string")
    return ref


def _refs(kind: str, task: str, given: Any) -> tuple[Any, ...]:
    if given is None:
        return ()
    items = [given] if isinstance(given, str) or callable(given) else list(given)
    return tuple(_check_ref(kind, task, r) for r in items)


@dataclass(frozen=True)
class Processor:
    name: str
    version: str
    run: RunFn
    media: frozenset[str] = frozenset({"image"})
    input: InputSpec = field(default_factory=InputSpec)
    params_model: type[BaseModel] = NoParams
    rule_properties: Mapping[str, RuleProperty] = field(default_factory=dict)
    description: str = ""
    info: Mapping[str, InfoSource] = field(default_factory=dict)
    tags: TagSource | None = None
    hooks: tuple[HookRef, ...] = ()
    routes: tuple[RouteRef, ...] = ()
    # where its work runs (see LaneName); None: "light" for header-only input, else "cpu"
    lane: LaneName | None = None
    # what an ok result does to the asset's original (executed by the sink; see EFFECTS)
    effect: Effect | None = None
    # it writes files into ``TaskInput.workdir`` (derived objects); a task that does not gets
    # no work folder (``workdir`` is None): none is made and removed for every request
    outputs: bool = False
    # milliseconds on a header or the shared decode: bundled with the upload's other cheap ones
    cheap: bool = False

    def __post_init__(self) -> None:
        if self.effect is not None and self.effect not in EFFECTS:
            raise ValueError(f"task {self.name!r}: effect {self.effect!r} is not one of "
                             f"{', '.join(EFFECTS)}")
        if self.lane is None:
            object.__setattr__(self, "lane", "light" if self.input.kind == "header" else "cpu")
        elif self.lane not in LANES:
            raise ValueError(f"task {self.name!r}: lane {self.lane!r} is not one of "
                             f"{', '.join(LANES)}")
        if self.cheap and (self.lane == "long" or self.effect is not None or self.outputs):
            raise ValueError(f"task {self.name!r}: a cheap task runs on the light or cpu lane, "
                             "with no effect and no outputs")

    @property
    def work_lane(self) -> LaneName:
        """The lane this task runs on (``lane`` resolved)."""
        return self.lane or "cpu"

    def parse_params(self, raw: Mapping[str, Any] | None) -> BaseModel:
        return self.params_model.model_validate(dict(raw or {}))

    def info_of(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The info keys this task's ``ok`` result ``data`` contributes to the asset."""
        out: dict[str, Any] = {}
        for key, source in self.info.items():
            if isinstance(source, str):
                if source in data:
                    out[key] = data[source]
                continue
            value = source(data)
            if value is not None:
                out[key] = value
        return out

    def tags_of(self, data: Mapping[str, Any]) -> list[str]:
        """The tags this task's ``ok`` result ``data`` adds to the asset."""
        if self.tags is None:
            return []
        value = data.get(self.tags) if isinstance(self.tags, str) else self.tags(data)
        if not isinstance(value, list | tuple):
            return []
        return [str(t) for t in value]


def result_field(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """A ``RuleProperty.extract`` that reads one field of the result."""

    def extract(result: Mapping[str, Any]) -> Any:
        return result.get(name)

    return extract


MARK = "__darkroom_processors__"
"""The attribute :func:`register` sets on a processor function: the tuple of its
:class:`Processor` declarations (one per ``@register`` stacked on it)."""


def register(
    name: str,
    *,
    version: str,
    media: tuple[str, ...] = ("image",),
    input: InputSpec | None = None,
    params: type[BaseModel] = NoParams,
    rule_properties: Mapping[str, RuleProperty] | None = None,
    description: str = "",
    info: Mapping[str, InfoSource] | None = None,
    tags: TagSource | None = None,
    hooks: HookRef | Sequence[HookRef] | None = None,
    routes: RouteRef | Sequence[RouteRef] | None = None,
    lane: LaneName | None = None,
    effect: Effect | None = None,
    outputs: bool = False,
    cheap: bool = False,
) -> Callable[[RunFn], RunFn]:
    """Decorator declaring ``fn`` as the processor of task ``name``, with what its result does
    to the asset (``info``, ``tags``, ``hooks``; see the module docstring), the HTTP
    ``routes`` it serves and the ``lane`` its work runs on (:data:`LaneName`: declare
    ``lane="long"`` for a task that takes seconds or more, so it never delays the others);
    ``outputs=True`` for a task that leaves files in ``TaskInput.workdir`` (only those get one);
    ``cheap=True`` for one that computes in milliseconds on a header or the shared decode (an
    upload's cheap tasks travel as one request and run as one unit of work: one start mark,
    one flush of their results, one version for them; see agents.streams.bundles).
    Nothing is recorded globally: :func:`load_all` finds the function in its module."""
    for key, source in (info or {}).items():
        if not (isinstance(source, str) or callable(source)):
            raise TypeError(f"task {name!r}: info {key!r} must be a result field or a callable")
    if tags is not None and not (isinstance(tags, str) or callable(tags)):
        raise TypeError(f"task {name!r}: tags must be a result field or a callable")
    hook_refs = _refs("hook", name, hooks)
    route_refs = _refs("route factory", name, routes)

    def deco(fn: RunFn) -> RunFn:
        proc = Processor(
            name=name,
            version=version,
            run=fn,
            media=frozenset(media),
            input=input or InputSpec(),
            params_model=params,
            rule_properties=dict(rule_properties or {}),
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            info=dict(info or {}),
            tags=tags,
            hooks=hook_refs,
            routes=route_refs,
            lane=lane,
            effect=effect,
            outputs=outputs,
            cheap=cheap,
        )
        setattr(fn, MARK, (*getattr(fn, MARK, ()), proc))
        return fn

    return deco


def processors_of(obj: Any) -> list[Processor]:
    """The processors ``obj`` declares: a registered function's, a :class:`Processor`, or, for
    a module, those of every registered function it holds (definition order)."""
    if isinstance(obj, Processor):
        return [obj]
    if isinstance(obj, ModuleType):
        found: list[Processor] = []
        for value in list(vars(obj).values()):
            if not isinstance(value, ModuleType):
                found += processors_of(value)
        return found
    marked = getattr(obj, MARK, ()) if callable(obj) else ()
    if not isinstance(marked, tuple):
        return []
    return [p for p in marked if isinstance(p, Processor)]


def _add(found: dict[str, Processor], proc: Processor, origin: str) -> None:
    existing = found.get(proc.name)
    if existing is not None and existing.run is not proc.run:
        old, new = existing.run, proc.run
        if (old.__module__, old.__qualname__) != (new.__module__, new.__qualname__):
            raise ValueError(f"task {proc.name!r} is already registered by {old.__module__} "
                             f"(again in {origin})")
    found[proc.name] = proc


def load_all() -> dict[str, Processor]:
    """Import built-in processor modules and plugins (entry-point group ``darkroom.processors``,
    naming a module or a registered function) and return their processors by task name: a new
    mapping on every call, built from what the modules hold (imports are cached by Python)."""
    from processors import BUILTIN_MODULES

    found: dict[str, Processor] = {}
    for mod in BUILTIN_MODULES:
        for proc in processors_of(importlib.import_module(mod)):
            _add(found, proc, mod)
    for ep in entry_points(group="darkroom.processors"):
        for proc in processors_of(ep.load()):
            _add(found, proc, f"entry point {ep.name} = {ep.value}")
    return found


def get(name: str) -> Processor:
    procs = load_all()
    try:
        return procs[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(procs))}") from None
