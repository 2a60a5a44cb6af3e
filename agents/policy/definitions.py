"""Post-process definitions and upload presets over the API, merged with the YAML bootstrap.

**The merged set.** The YAML file (``DARKROOM_POSTPROCESS_CONFIG``) is the bootstrap; the
definitions stored over ``/v1/postprocesses`` (:mod:`sinks.store.definitions`) are laid over it
by name (case-insensitive): a stored definition whose name the YAML also defines *replaces* the
YAML entry at the YAML entry's place in the order (deleting the stored one brings the YAML entry
back); the others follow the YAML entries in creation order. The merged list is checked by the
same checker as the file (:func:`agents.policy.postprocess.parse_config`), as one configuration,
so every rule of the file (names, tasks, params, triggers, validation, and whatever the checker
will check across entries) holds for it.

**Messages.** A definition sent as JSON has no lines: :func:`check_merged` reports the
checker's issues by field path relative to the definition (``trigger: unknown property
'widht' ...``), an issue on another entry prefixed with that entry's name.

**Live reload** (:class:`LiveDefinitions`, one per process, ``Runtime.definitions``): the merged
set is loaded at start, then reloaded when the counter of :mod:`sinks.store.definitions` moves:
checked at most every ``DARKROOM_DEFINITIONS_POLL_MS``, at once when an upload event says it was
accepted under a newer counter (``UploadEvent.definitions_version``, which the API reads from the
database when it accepts the upload), and at once when a task request names a post-process the
set does not hold or holds with other parameters. A stored definition that no longer passes the
checker against the rest (e.g. the YAML changed under it at a restart) is left out and logged;
the rest is used.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agents.policy import limits
from agents.policy.postprocess import (
    NAME_RE,
    ConfigError,
    ConfigIssue,
    PostProcess,
    PostProcessConfig,
    parse_config,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from processors.registry import Processor
    from sinks.store.definitions import Snapshot, Stored

log = logging.getLogger("darkroom.definitions")

MAX_DEFINITIONS = 500
"""Most post-process definitions (and, apart, presets) the API stores."""


class DefinitionProblem(ValueError):
    """A definition the checker refuses (HTTP 422); ``str()`` is the checker's message, one
    issue a line, without line numbers."""


# ------------------------------------------------------------------------------ the YAML side
def bootstrap_items(path: str | Path) -> list[dict[str, Any]]:
    """The YAML file's entries as mappings (the file was checked by ``load_config`` already)."""
    data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    items: list[Any] = (data.get("postprocesses") or []) if isinstance(data, dict) else []
    return [dict(i) for i in items if isinstance(i, dict)]


def item_name(item: Mapping[str, Any]) -> str:
    """The name of an entry: ``name``, else its task (as the checker defaults it)."""
    return str(item.get("name") or item.get("task") or "")


def merge(bootstrap: Sequence[Mapping[str, Any]], stored: Sequence[tuple[str, Mapping[str, Any]]]
          ) -> list[dict[str, Any]]:
    """The bootstrap entries with the ``(name, body)`` definitions laid over them by name (see
    the module docstring)."""
    by_key = {name.casefold(): dict(body) for name, body in stored}
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for item in bootstrap:
        key = item_name(item).casefold()
        if key in by_key:
            out.append(by_key[key])
            used.add(key)
        else:
            out.append(dict(item))
    out += [dict(body) for name, body in stored if name.casefold() not in used]
    return out


_LINE_REFS = re.compile(r"\s*\((?:first )?at line \d+\)|\s+at line \d+|\s*\(line \d+\)")


def _render(issue: ConfigIssue, items: Sequence[Mapping[str, Any]], focus: int | None) -> str:
    path, message = issue.path, _LINE_REFS.sub("", issue.message)
    m = re.match(r"postprocesses\[(\d+)\]\.?(.*)$", path)
    if m is None:
        return f"{path}: {message}" if path else message
    index, rest = int(m.group(1)), m.group(2)
    where = rest
    if index != focus and index < len(items):
        where = f"post-process {item_name(items[index])!r}" + (f": {rest}" if rest else "")
    return f"{where}: {message}" if where else message


def check_merged(items: Sequence[Mapping[str, Any]], registry: Mapping[str, Processor] | None,
                 focus: int | None = None) -> PostProcessConfig:
    """Check ``items`` as one configuration with the YAML checker; :class:`DefinitionProblem`
    with line-free messages (paths relative to entry ``focus``)."""
    # JSON is YAML (and dumps far faster than PyYAML); the lines are dropped anyway
    text = json.dumps({"postprocesses": [dict(i) for i in items]}, ensure_ascii=True,
                      default=str)
    try:
        return parse_config(text, "definition", registry)
    except ConfigError as exc:
        lines = dict.fromkeys(_render(i, items, focus) for i in exc.issues)
        raise DefinitionProblem("\n".join(lines)) from None


def definition_body(body: Any, name: str | None = None) -> dict[str, Any]:
    """A JSON body as a definition: a mapping whose ``name`` (default: its task) is a valid
    name and agrees with the URL's ``name`` when there is one."""
    if not isinstance(body, dict):
        raise DefinitionProblem("a post-process definition is a JSON object with keys name,"
                                " task, enabled, mode, params, trigger, validation")
    out: dict[str, Any] = dict(body)
    given = out.get("name", out.get("task") if name is None else name)
    if not isinstance(given, str) or not given:
        raise DefinitionProblem("name: required (a string)" if name is None
                                else "name: must be a string")
    if not NAME_RE.match(given) or len(given) > limits.MAX_NAME:
        raise DefinitionProblem(
            f"name: invalid name {given[:120]!r}: use letters, digits, '-', '_' and '.', at"
            f" most {limits.MAX_NAME} characters")
    if name is not None and given.casefold() != name.casefold():
        raise DefinitionProblem(f"name: {given!r} differs from the name in the URL ({name!r})")
    out["name"] = given
    return out


# ------------------------------------------------------------------------------ presets
class Preset(BaseModel):
    """An upload preset: post-processes to run (besides the automatic ones) and defaults of
    the upload's fields. Fields the upload sets win (``folder``, ``mode``,
    ``notification_url``, ``on_success``); ``tags``, ``postprocesses`` and ``context`` are
    merged (the upload's context keys win)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    postprocesses: list[str] = []
    folder: str | None = None
    tags: list[str] = []
    context: dict[str, str] = {}
    mode: Literal["async", "sync"] | None = None
    notification_url: str | None = None
    on_success: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v) or len(v) > limits.MAX_NAME:
            raise ValueError(f"invalid name {v[:120]!r}: use letters, digits, '-', '_' and '.'"
                             f", at most {limits.MAX_NAME} characters")
        return v

    @field_validator("postprocesses")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return limits.names(v, "postprocesses")

    @field_validator("folder")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        from sinks.objects.base import normalize_folder

        return None if v is None else normalize_folder(limits.folder(v))

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return limits.tags(v)

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, str]) -> dict[str, str]:
        return limits.context(v)

    @field_validator("on_success")
    @classmethod
    def _script(cls, v: str | None) -> str | None:
        return limits.script(v)


def _pydantic_message(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; known: {', '.join(Preset.model_fields)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}" if where else msg)
    return "\n".join(dict.fromkeys(out))


def check_preset(body: Any, config: PostProcessConfig, webhook_allow: Sequence[str],
                 name: str | None = None) -> Preset:
    """A JSON body as a :class:`Preset` (DefinitionProblem: 422): every field within the
    upload limits, every post-process known to ``config``."""
    if not isinstance(body, dict):
        raise DefinitionProblem("a preset is a JSON object with keys "
                                + ", ".join(Preset.model_fields))
    body = dict(body)
    if name is not None:
        given = body.setdefault("name", name)
        if not isinstance(given, str) or given.casefold() != name.casefold():
            raise DefinitionProblem(f"name: {given!r} differs from the name in the URL"
                                    f" ({name!r})")
    try:
        preset = Preset.model_validate(body)
    except ValidationError as exc:
        raise DefinitionProblem(_pydantic_message(exc)) from None
    unknown = config.unknown_names(preset.postprocesses)
    if unknown:
        raise DefinitionProblem("postprocesses: " + config.unknown_message(unknown))
    if preset.notification_url is not None:
        from agents.ingest import notification_url

        try:
            notification_url(preset.notification_url, webhook_allow)
        except ValueError as exc:
            raise DefinitionProblem(f"notification_url: {exc}") from None
    return preset


# ------------------------------------------------------------------------------ live set
class LiveDefinitions:
    """The merged set of one process, reloaded when the stored definitions change (see the
    module docstring). :attr:`config` is read on hot paths (no I/O); :meth:`refresh` does the
    database reads and must run off the event loop."""

    def __init__(self, bootstrap: PostProcessConfig, bootstrap_path: str | Path,
                 engine: Callable[[], Engine], registry: Mapping[str, Processor],
                 poll_ms: float) -> None:
        self.bootstrap = bootstrap
        self.bootstrap_path = Path(bootstrap_path)
        self._engine = engine
        self.registry = registry
        self.poll_s = poll_ms / 1000
        self._lock = threading.Lock()
        self._items = bootstrap_items(self.bootstrap_path)
        self.config: PostProcessConfig = bootstrap
        self.by_name: dict[str, PostProcess] = {pp.name: pp for pp in bootstrap.postprocesses}
        #: stored post-process names (case-folded) in the current set
        self.stored: frozenset[str] = frozenset()
        #: the stored definitions' counter the current set was loaded at (-1: not yet)
        self.version = -1
        self._checked = 0.0
        self._skipped: set[tuple[str, int]] = set()

    @property
    def engine(self) -> Engine:
        return self._engine()

    def due(self) -> bool:
        """Whether the counter should be looked at again (no I/O)."""
        return self.version < 0 or time.monotonic() - self._checked >= self.poll_s

    def refresh(self, at_least: int = 0, *, force: bool = False) -> bool:
        """Blocking: reload when the counter moved (looked at when :meth:`due`, when
        ``at_least`` is newer than the set held, or with ``force``). True when reloaded."""
        if not (force or at_least > self.version or self.due()):
            return False
        from sinks.store import definitions as store

        with self._lock:
            if not (force or at_least > self.version or self.due()):
                return False
            now = time.monotonic()
            counter = store.current_version(self.engine)
            self._checked = now
            if counter == self.version:
                return False
            self._load(store.snapshot(self.engine))
            return True

    def accepting_version(self) -> int:
        """Blocking: the counter as the database has it now (what an upload is accepted
        under), the set reloaded first when it is older."""
        from sinks.store import definitions as store

        counter = store.current_version(self.engine)
        if counter != self.version:
            with self._lock:
                if counter != self.version:
                    self._load(store.snapshot(self.engine))
                    self._checked = time.monotonic()
        return counter

    def _load(self, snap: Snapshot) -> None:
        stored = [(s.name, s.body) for s in snap.postprocesses]
        try:
            config = check_merged(merge(self._items, stored), self.registry) if stored \
                else self.bootstrap
        except DefinitionProblem:
            config, stored = self._tolerant(snap.postprocesses)
        self.config = config
        self.by_name = {pp.name: pp for pp in config.postprocesses}
        self.stored = frozenset(name.casefold() for name, _body in stored)
        self.version = snap.version
        log.info("post-process definitions at version %d: %d stored, %d in all",
                 snap.version, len(stored), len(config.postprocesses))

    def _tolerant(self, defs: Sequence[Stored]) -> tuple[PostProcessConfig,
                                                          list[tuple[str, dict[str, Any]]]]:
        """The set with each stored definition that does not pass the checker left out."""
        kept: list[tuple[str, dict[str, Any]]] = []
        config = self.bootstrap
        for d in defs:
            try:
                config = check_merged(merge(self._items, [*kept, (d.name, d.body)]),
                                      self.registry)
            except DefinitionProblem as exc:
                if (d.name, d.version) not in self._skipped:
                    self._skipped.add((d.name, d.version))
                    log.error("stored post-process %r (version %d) is left out: %s", d.name,
                              d.version, exc)
                continue
            kept.append((d.name, d.body))
        return config, kept

    # -------------------------------------------------------------- what the API checks
    def candidate(self, name: str, body: Mapping[str, Any] | None) -> PostProcessConfig:
        """Blocking: the set as it would be with stored definition ``name`` set to ``body``
        (None: removed), checked against the database's current definitions
        (:class:`DefinitionProblem` with the checker's messages)."""
        from sinks.store import definitions as store

        snap = store.snapshot(self.engine)
        stored = [(s.name, s.body) for s in snap.postprocesses
                  if s.name.casefold() != name.casefold()]
        if body is not None:
            stored.append((name, dict(body)))
        items = merge(self._items, stored)
        focus = next((i for i, it in enumerate(items)
                      if item_name(it).casefold() == name.casefold()), None)
        if body is None:
            focus = None
        return check_merged(items, self.registry, focus)

    def in_bootstrap(self, name: str) -> Mapping[str, Any] | None:
        """The YAML entry called ``name``, if any."""
        return next((i for i in self._items if item_name(i).casefold() == name.casefold()),
                    None)
