"""The processor registry: the one place a task is declared.

A processor is pure code: ``(TaskInput, params) -> JSON-able dict``. It never touches Kafka or
storage. The agents layer generates one Faust agent per registered processor, fetches the input in
the form the processor declares (``InputSpec``), runs it in a worker thread and publishes the
result.

Adding a task = one module under ``processors/`` that calls :func:`register`, plus one line in
``processors/__init__.py`` (``BUILTIN_MODULES``) or an entry point in the ``darkroom.processors``
group for out-of-tree plugins.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

InputKind = Literal["header", "image", "file"]
Media = Literal["image", "video"]
RuleKind = Literal["number", "string"]


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


@dataclass(frozen=True)
class RuleProperty:
    """A validation-rule property a processor's result offers (e.g. 'number of faces').

    ``extract`` maps the processor's result dict to the value the rule compares; ``aliases`` are the
    human phrases accepted in rule strings ("number of faces", "faces").
    """

    kind: RuleKind
    extract: Callable[[Mapping[str, Any]], Any]
    aliases: tuple[str, ...] = ()


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


class ProcessorError(Exception):
    """A processor failure. ``permanent=True`` means retrying cannot help (corrupt input)."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


RunFn = Callable[[TaskInput, Any], dict[str, Any]]


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

    def parse_params(self, raw: Mapping[str, Any] | None) -> BaseModel:
        return self.params_model.model_validate(dict(raw or {}))


def result_field(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """A ``RuleProperty.extract`` that reads one field of the result."""

    def extract(result: Mapping[str, Any]) -> Any:
        return result.get(name)

    return extract


_REGISTRY: dict[str, Processor] = {}


def register(
    name: str,
    *,
    version: str,
    media: tuple[str, ...] = ("image",),
    input: InputSpec | None = None,
    params: type[BaseModel] = NoParams,
    rule_properties: Mapping[str, RuleProperty] | None = None,
    description: str = "",
) -> Callable[[RunFn], RunFn]:
    """Decorator registering ``fn`` as the processor for task ``name``."""

    def deco(fn: RunFn) -> RunFn:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            existing = _REGISTRY[name].run
            if (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"task {name!r} is already registered by {existing.__module__}")
        _REGISTRY[name] = Processor(
            name=name,
            version=version,
            run=fn,
            media=frozenset(media),
            input=input or InputSpec(),
            params_model=params,
            rule_properties=dict(rule_properties or {}),
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return deco


_loaded = False


def load_all() -> dict[str, Processor]:
    """Import built-in processor modules and plugins (entry-point group ``darkroom.processors``)."""
    global _loaded
    if not _loaded:
        from processors import BUILTIN_MODULES

        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        for ep in entry_points(group="darkroom.processors"):
            ep.load()
        _loaded = True
    return dict(_REGISTRY)


def get(name: str) -> Processor:
    procs = load_all()
    try:
        return procs[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(procs))}") from None
