"""The post-process configuration: which tasks run for an upload, and how their results are judged.

One YAML file (``DARKROOM_POSTPROCESS_CONFIG``, default
``agents/policy/default_postprocess.yaml``)::

    postprocesses:
      - name: thumb-hash          # unique (case-insensitive); defaults to the task name
        task: blurhash            # a registered task (processors.registry.load_all())
        enabled: true             # true: runs on every upload whose trigger holds;
                                  # false: manual-only, runs when the upload's `postprocess`
                                  # list names it (by name or by task) and its trigger holds
        mode: async               # async | sync (sync tasks run before the upload is answered)
        params: {x_components: 4, y_components: 3}   # checked by the processor's params_model
        trigger: "width is larger than 32"            # a rule (see agents.policy.rules); empty =
        always
        validation:               # judged on the task result (+ the asset properties)
          - rule: "width is smaller than 500"
            action: notice        # refuse (sync only) | notice | moderate (hold for review)
            message: "image is narrower than 500 px"  # optional; default: the rule that held
          - "number of faces is smaller than 1 => refuse"   # shorthand: "<rule> => <action>"

Rules take every form :func:`agents.policy.rules.parse_rule` accepts (phrase, ``{property, op,
value}``,
a list = all of, ``{all: [...]}``, ``{any: [...]}``). Trigger rules see the base asset
properties; validation rules also see the task processor's ``rule_properties``.

A registered task that no entry names (by name or by task) needs none: asked for by its name it
runs as a manual-only post-process of that name, async, with its default parameters, no trigger
and no validation (:attr:`PostProcessConfig.registered` holds the registered task names).

Every mistake is reported at once, each with file, line and field path, by :class:`ConfigError`::

    postprocess.yaml:14: postprocesses[2].trigger: unknown property 'widht' in 'widht < 5'; ...

The hot path (:meth:`PostProcessConfig.select`, run by the router for every upload) only calls
rules compiled at load time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agents.policy.rules import (
    BASE_VOCABULARY,
    CompiledRule,
    PathItem,
    Rule,
    RuleError,
    Vocabulary,
    compile_rule,
    describe,
    explain,
    make_vocabulary,
    parse_rule,
)

if TYPE_CHECKING:
    from processors.registry import Processor

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "PostProcess",
    "PostProcessConfig",
    "Selection",
    "ValidationRule",
    "Verdict",
    "load_config",
    "parse_config",
]

Action = Literal["refuse", "notice", "moderate"]
Predicate = Callable[[Mapping[str, Any]], bool]
Mode = Literal["async", "sync"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ITEM_KEYS = ("name", "task", "enabled", "mode", "params", "trigger", "validation", "after",
              "when")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake: 1-based ``line`` (None when unknown), dotted field ``path``, ``message``."""

    line: int | None
    path: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ValueError):
    """An invalid post-process configuration. ``str()`` gives one ``file:line: path: message``
    line per issue (sorted by line), ready for ``darkroom config check`` to print."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues: tuple[ConfigIssue, ...] = tuple(
            sorted(issues, key=lambda i: i.line if i.line is not None else 0)
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(issue.render(self.source) for issue in self.issues)


def _fmt_path(path: Sequence[PathItem]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Issues:
    """Collects issues, resolving each field path to the line of the nearest YAML node."""

    def __init__(self, lines: Mapping[tuple[PathItem, ...], int]) -> None:
        self.lines = lines
        self.items: list[ConfigIssue] = []

    def line_of(self, path: Sequence[PathItem]) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def add(self, path: Sequence[PathItem], message: str) -> None:
        self.items.append(ConfigIssue(self.line_of(path), _fmt_path(path), message))

    def add_pydantic(
        self,
        prefix: Sequence[PathItem],
        exc: ValidationError,
        model: type[BaseModel] | None = None,
    ) -> None:
        """Add pydantic's errors under ``prefix``; ``model`` names the keys an unknown top-level
        key is compared with (for "did you mean")."""
        for err in exc.errors():
            loc = (*prefix, *err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                bad = err["loc"][-1]
                msg = f"unknown key {bad!r}"
                if model is not None and len(err["loc"]) == 1:
                    known = list(model.model_fields)
                    msg += f"; known: {', '.join(known)}"
                    close = difflib.get_close_matches(str(bad), known, n=1)
                    if close:
                        msg += f" (did you mean {close[0]!r}?)"
            elif kind == "missing":
                msg = "required key is missing"
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if "input" in err and not isinstance(err["input"], dict | list):
                    msg += f" (got {err['input']!r})"
            self.add(loc, msg)


_DupIssue = tuple[int, tuple[PathItem, ...], str]


def _line_map(
    node: yaml.Node,
    path: tuple[PathItem, ...],
    out: dict[tuple[PathItem, ...], int],
    issues: list[_DupIssue],
) -> None:
    """Record the 1-based line of every field path; flag duplicate mapping keys (which PyYAML
    silently resolves to the last one)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: PathItem = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(
                    (line, (*path, key), f"duplicate key {key!r} (first at line {seen[key]})")
                )
                continue
            seen[key] = line
            out[(*path, key)] = line
            if len(path) < 64:  # recursive aliases cannot loop forever
                _line_map(value_node, (*path, key), out, issues)
    elif isinstance(node, yaml.SequenceNode) and len(path) < 64:
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out, issues)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class Verdict(BaseModel):
    """A validation rule that held for a task result."""

    model_config = ConfigDict(frozen=True)

    action: Action
    message: str
    rule: str
    postprocess: str
    task: str


# Load-time caches (compiled rules, the processor) live in ``__slots__``, not in pydantic private
# attributes: reading a private attribute goes through ``BaseModel.__getattr__`` (~2 us, too much
# for the router's per-upload path), a slot costs ~50 ns. Slots are outside the model's fields,
# so equality, dumps and copies ignore them; ``model_copy()``/``model_construct()`` skip
# ``model_post_init``, hence the AttributeError fallbacks.


class ValidationRule(BaseModel):
    """``rule`` => ``action``. ``message`` defaults to the rule (the part of it that held)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    __slots__ = ("_compiled",)
    if TYPE_CHECKING:  # ClassVar only so type checkers don't take it for a field
        _compiled: ClassVar[CompiledRule]

    rule: Rule
    action: Action
    message: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "_compiled", compile_rule(self.rule))

    def holds(self, props: Mapping[str, Any]) -> bool:
        """Whether the rule holds for ``props`` (asset + result properties)."""
        try:
            compiled = self._compiled
        except AttributeError:
            self.model_post_init(None)
            compiled = self._compiled
        return compiled.fn(props)


class PostProcess(BaseModel):
    """One configured post-process. Build through :func:`parse_config` (which resolves phrases
    and checks params); direct construction takes already-parsed rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    __slots__ = ("_parsed_params", "_processor", "_trigger", "_vocab")
    if TYPE_CHECKING:  # ClassVar only so type checkers don't take them for fields
        _trigger: ClassVar[CompiledRule]
        _processor: ClassVar[Processor]
        _vocab: ClassVar[Vocabulary]
        _parsed_params: ClassVar[BaseModel]

    name: str
    task: str
    enabled: bool = True
    mode: Mode = "async"
    params: dict[str, Any] = Field(default_factory=dict)
    trigger: Rule | None = None
    validation: tuple[ValidationRule, ...] = ()
    after: str | None = None  # runs after this post-process's result (agents.policy.workflow)
    when: Rule | None = None  # ... when this holds on that result

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "_trigger", compile_rule(self.trigger))

    @property
    def trigger_fn(self) -> Predicate:
        """The compiled trigger: ``trigger_fn(props) -> bool``."""
        try:
            return self._trigger.fn
        except AttributeError:
            self.model_post_init(None)
            return self._trigger.fn

    def triggered(self, props: Mapping[str, Any]) -> bool:
        """Whether the trigger rule holds for the asset properties (no trigger = always)."""
        return self.trigger_fn(props)

    def _attach(
        self, processor: Processor, vocab: Vocabulary, parsed_params: BaseModel | None
    ) -> None:
        object.__setattr__(self, "_processor", processor)
        object.__setattr__(self, "_vocab", vocab)
        if parsed_params is not None:
            object.__setattr__(self, "_parsed_params", parsed_params)

    def _attach_processor(self, processor: Processor) -> None:
        object.__setattr__(self, "_processor", processor)

    @property
    def processor(self) -> Processor:
        """The task's processor (from the registry given to :func:`parse_config`, else
        :func:`processors.registry.get`)."""
        try:
            return self._processor
        except AttributeError:
            from processors.registry import get

            object.__setattr__(self, "_processor", get(self.task))
            return self._processor

    @property
    def vocabulary(self) -> Vocabulary:
        """The properties this post-process's validation rules may use."""
        try:
            return self._vocab
        except AttributeError:
            object.__setattr__(self, "_vocab", make_vocabulary(self.processor.rule_properties))
            return self._vocab

    @property
    def parsed_params(self) -> BaseModel:
        """``params`` validated by the processor's params model."""
        try:
            return self._parsed_params
        except AttributeError:
            object.__setattr__(self, "_parsed_params", self.processor.parse_params(self.params))
            return self._parsed_params

    def rule_props(
        self, props: Mapping[str, Any], result_data: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Asset properties merged with the processor's rule properties extracted from
        ``result_data``. An extractor that fails or yields ``None`` leaves the property missing
        (so rules on it are false) rather than failing the task."""
        merged = dict(props)
        for name, rp in self.processor.rule_properties.items():
            try:
                value = rp.extract(result_data)
            except Exception:  # noqa: BLE001 - a rule property that cannot be read is missing
                value = None
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def validate_result(
        self, props: Mapping[str, Any], result_data: Mapping[str, Any]
    ) -> list[Verdict]:
        """The verdicts of the validation rules that hold for this result (config order)."""
        if not self.validation:
            return []
        merged = self.rule_props(props, result_data)
        verdicts = []
        for vr in self.validation:
            if vr.holds(merged):
                text = describe(vr.rule, self.vocabulary)
                message = vr.message or explain(vr.rule, merged, self.vocabulary) or text
                verdicts.append(
                    Verdict(
                        action=vr.action,
                        message=message,
                        rule=text,
                        postprocess=self.name,
                        task=self.task,
                    )
                )
        return verdicts


@dataclass(frozen=True, slots=True)
class _Hot:
    auto: tuple[tuple[PostProcess, Predicate], ...]
    ordered: tuple[tuple[PostProcess, Predicate, bool], ...]
    by_key: Mapping[str, tuple[PostProcess, ...]]
    implicit: tuple[PostProcess, ...]


@dataclass
class Selection:
    """What :meth:`PostProcessConfig.select` picked for one upload.

    ``selected``: post-processes to run, config order, each once; ``unknown``: requested names
    that match no post-process name or task (report them to the uploader); ``skipped``: requested
    post-processes whose trigger rule did not hold.
    """

    selected: list[PostProcess] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    skipped: list[PostProcess] = field(default_factory=list)


def unknown_message(unknown: Sequence[str], known: Sequence[str]) -> str:
    """The one wording for unknown names (API 400, CLI errors, the asset's notice)."""
    return (f"unknown post-process {'name' if len(unknown) == 1 else 'names'}: "
            f"{', '.join(unknown)}; known: {', '.join(known)}")


class PostProcessConfig(BaseModel):
    """The whole configuration, with lookups precomputed for the per-upload hot path.

    ``registered``: the registered task names (:func:`parse_config` passes those of its
    registry whose parameters all have defaults). One that no post-process names by name or by
    task is requestable anyway: asked for by name, it runs as the manual-only post-process
    :attr:`implicit` holds for it (same name, default parameters, no trigger, async).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    __slots__ = ("_hot",)
    if TYPE_CHECKING:  # ClassVar only so type checkers don't take it for a field
        _hot: ClassVar[_Hot]

    postprocesses: tuple[PostProcess, ...] = ()
    registered: tuple[str, ...] = ()

    def model_post_init(self, context: Any, /) -> None:
        by_key: dict[str, list[PostProcess]] = {}
        for pp in self.postprocesses:
            for key in {pp.name.casefold(), pp.task.casefold()}:
                by_key.setdefault(key, []).append(pp)
        implicit: list[PostProcess] = []
        for task in self.registered:
            if task.casefold() not in by_key:
                pp = PostProcess(name=task, task=task, enabled=False)
                by_key[task.casefold()] = [pp]
                implicit.append(pp)
        every = (*self.postprocesses, *implicit)
        hot = _Hot(
            auto=tuple((pp, pp.trigger_fn) for pp in self.postprocesses if pp.enabled),
            ordered=tuple((pp, pp.trigger_fn, pp.enabled) for pp in every),
            by_key={k: tuple(v) for k, v in by_key.items()},
            implicit=tuple(implicit),
        )
        object.__setattr__(self, "_hot", hot)

    @property
    def implicit(self) -> tuple[PostProcess, ...]:
        """The manual-only post-processes of the registered tasks no entry names (after the
        configured ones in selection order)."""
        return self._lookups().implicit

    def _lookups(self) -> _Hot:
        try:
            return self._hot
        except AttributeError:
            self.model_post_init(None)
            return self._hot

    def get(self, name: str) -> PostProcess | None:
        """The post-process called ``name`` (case-insensitive), if any."""
        key = name.strip().casefold()
        for pp in self._lookups().by_key.get(key, ()):
            if pp.name.casefold() == key:
                return pp
        return None

    def unknown_names(self, requested: Sequence[str]) -> list[str]:
        """The names of ``requested`` (comma lists allowed) that name no post-process or task."""
        by_key = self._lookups().by_key
        out: list[str] = []
        for item in requested:
            for raw in item.split(","):
                name = raw.strip()
                if name and name.casefold() not in by_key and name not in out:
                    out.append(name)
        return out

    def known_names(self) -> list[str]:
        """Every name an upload may ask for: post-process names and task names."""
        hot = self._lookups()
        names = {pp.name for pp, _fn, _enabled in hot.ordered}
        names |= {pp.task for pp, _fn, _enabled in hot.ordered}
        return sorted(names, key=str.casefold)

    def unknown_message(self, unknown: Sequence[str]) -> str:
        return unknown_message(unknown, self.known_names())

    @property
    def tasks(self) -> frozenset[str]:
        """Every task some post-process uses (the agents to start)."""
        return frozenset(pp.task for pp in self.postprocesses)

    def select(self, props: Mapping[str, Any], requested: Sequence[str] = ()) -> Selection:
        """The post-processes to run for an upload with asset properties ``props``.

        Enabled post-processes run when their trigger holds. ``requested`` (the upload's
        ``postprocess`` list; items may also be comma-separated) adds post-processes by name or
        by task name, case-insensitive; their trigger rules apply too. A registered task that no
        post-process names runs by its own name (:attr:`implicit`). Unknown names come back in
        :attr:`Selection.unknown`, never silently dropped.
        """
        hot = self._lookups()
        if not requested:
            return Selection([pp for pp, fn in hot.auto if fn(props)])
        wanted: set[int] = set()
        unknown: list[str] = []
        for item in requested:
            for raw in item.split(","):
                name = raw.strip()
                if not name:
                    continue
                found = hot.by_key.get(name.casefold())
                if found is None:
                    if name not in unknown:
                        unknown.append(name)
                    continue
                wanted.update(id(pp) for pp in found)
        selected: list[PostProcess] = []
        skipped: list[PostProcess] = []
        for pp, fn, enabled in hot.ordered:
            asked = id(pp) in wanted
            if not (enabled or asked):
                continue
            if fn(props):
                selected.append(pp)
            elif asked:
                skipped.append(pp)
        return Selection(selected, unknown, skipped)

    def validate_result(
        self, pp: PostProcess, props: Mapping[str, Any], result_data: Mapping[str, Any]
    ) -> list[Verdict]:
        """Verdicts of ``pp``'s validation rules on a result: the asset ``props`` merged with
        ``{name: extract(result_data)}`` for each of the processor's rule properties."""
        return pp.validate_result(props, result_data)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class _RawValidation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Any
    action: Action
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # "number of faces is smaller than 1 => refuse", as the hosted product writes it.
        if isinstance(data, str):
            rule, sep, action = data.rpartition("=>")
            if not sep:
                raise ValueError(
                    "a validation entry is a mapping {rule, action, message} or a string"
                    " '<rule> => refuse|notice|moderate'"
                )
            return {"rule": rule.strip(), "action": action.strip()}
        return data

    @field_validator("action", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class _RawPostProcess(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    task: str
    enabled: bool = True
    mode: Mode = "async"
    params: dict[str, Any] | None = None
    trigger: Any = None
    validation: list[Any] | None = None
    after: Any = None  # checked by agents.policy.workflow.check
    when: Any = None

    @field_validator("mode", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class _RawConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    postprocesses: list[Any] | None = None


def _rule(data: Any, vocab: Vocabulary, path: tuple[PathItem, ...], issues: _Issues) -> Rule | None:
    try:
        return parse_rule(data, vocab, path)
    except RuleError as exc:
        issues.add(exc.path or path, exc.message)
        return None


def _build_item(
    i: int,
    item: Any,
    registry: Mapping[str, Processor],
    issues: _Issues,
    whens: Mapping[int, Rule | None] | None = None,
) -> PostProcess | None:
    base: tuple[PathItem, ...] = ("postprocesses", i)
    if not isinstance(item, dict):
        issues.add(base, f"a post-process must be a mapping with keys {', '.join(_ITEM_KEYS)}")
        return None
    n_before = len(issues.items)
    raw: _RawPostProcess | None
    bad: set[Any] = set()
    try:
        raw = _RawPostProcess.model_validate(item)
    except ValidationError as exc:
        issues.add_pydantic(base, exc, _RawPostProcess)
        bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
        raw = None

    task = item.get("task") if "task" not in bad else None
    proc: Processor | None = None
    if isinstance(task, str):
        proc = registry.get(task)
        if proc is None:
            issues.add(
                (*base, "task"), f"unknown task {task!r}; known: {', '.join(sorted(registry))}"
            )

    parsed_params: BaseModel | None = None
    if proc is not None and "params" not in bad:
        try:
            parsed_params = proc.parse_params(item.get("params"))
        except ValidationError as exc:
            issues.add_pydantic((*base, "params"), exc)

    trigger = None
    if "trigger" not in bad:
        trigger = _rule(item.get("trigger"), BASE_VOCABULARY, (*base, "trigger"), issues)

    vocab: Vocabulary | None = None
    if proc is not None:
        try:
            vocab = make_vocabulary(proc.rule_properties)
        except ValueError as exc:
            issues.add(
                (*base, "task"), f"processor {proc.name!r} declares bad rule properties: {exc}"
            )
    mode = raw.mode if raw is not None else item.get("mode", "async")
    validations: list[ValidationRule] = []
    entries = item.get("validation") if "validation" not in bad else None
    for j, entry in enumerate(entries or []):
        vpath: tuple[PathItem, ...] = (*base, "validation", j)
        try:
            rv = _RawValidation.model_validate(entry)
        except ValidationError as exc:
            issues.add_pydantic(vpath, exc, _RawValidation)
            continue
        rule_path = (*vpath, "rule") if isinstance(entry, dict) else vpath
        if rv.action == "refuse" and mode == "async":
            issues.add(
                (*vpath, "action") if isinstance(entry, dict) else vpath,
                "action 'refuse' needs mode: sync (an async task runs after the upload was"
                " accepted; use 'notice')",
            )
        if vocab is None:
            continue  # unknown task: its rule properties are unknown, don't pile up errors
        n_rule = len(issues.items)
        rule = _rule(rv.rule, vocab, rule_path, issues)
        if rule is None:
            if len(issues.items) == n_rule:
                issues.add(rule_path, "a validation rule cannot be empty (it would always hold)")
            continue
        validations.append(ValidationRule(rule=rule, action=rv.action, message=rv.message))

    name = item.get("name") if "name" not in bad else None
    if isinstance(name, str) and not NAME_RE.match(name):
        issues.add(
            (*base, "name"),
            f"invalid name {name!r}: use letters, digits, '-', '_' and '.' (it is used in the"
            " upload's postprocess= list)",
        )

    if raw is None or len(issues.items) != n_before:
        return None
    pp = PostProcess(
        name=raw.name or raw.task,
        task=raw.task,
        enabled=raw.enabled,
        mode=raw.mode,
        params=dict(raw.params or {}),
        trigger=trigger,
        validation=tuple(validations),
        after=raw.after.strip() if whens and i in whens and isinstance(raw.after, str) else None,
        when=whens.get(i) if whens else None,
    )
    if proc is not None and vocab is not None:
        pp._attach(proc, vocab, parsed_params)
    return pp


def parse_config(
    text: str,
    source_name: str = "<config>",
    registry: Mapping[str, Processor] | None = None,
) -> PostProcessConfig:
    """Parse and fully check a configuration; raise :class:`ConfigError` listing every issue.

    ``registry`` maps task names to processors; default: :func:`processors.registry.load_all`
    (an ImportError of a built-in processor module propagates: a broken install must be loud).
    """
    if registry is None:
        from processors.registry import load_all

        try:
            registry = load_all()
        except ImportError as exc:
            raise ImportError(
                f"cannot check {source_name}: loading the task registry failed: {exc}",
                name=exc.name,
                path=exc.path,
            ) from exc

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        if exc.context:
            ctx_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            problem += f" ({exc.context}{ctx_line})"
        raise ConfigError(
            source_name, [ConfigIssue(line, "", f"YAML syntax error: {problem}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source_name, [ConfigIssue(None, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()

    lines: dict[tuple[PathItem, ...], int] = {}
    dup: list[_DupIssue] = []
    if node is not None:
        _line_map(node, (), lines, dup)
    issues = _Issues(lines)
    for line, path, msg in dup:
        issues.items.append(ConfigIssue(line, _fmt_path(path), msg))

    if data is None:
        data = {}
    if not isinstance(data, dict):
        issues.add((), "the top level must be a mapping with a 'postprocesses' list")
        raise ConfigError(source_name, issues.items)
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        issues.add_pydantic((), exc, _RawConfig)
        raise ConfigError(source_name, issues.items) from None

    from agents.policy.workflow import check as check_workflow

    built: list[PostProcess] = []
    first_seen: dict[str, tuple[PathItem, ...]] = {}
    whens = check_workflow(raw.postprocesses or [], registry, issues.add, issues.line_of)
    for i, item in enumerate(raw.postprocesses or []):
        pp = _build_item(i, item, registry, issues, whens)
        # Duplicates are checked on the raw names, so they show up even next to other mistakes.
        name = (item.get("name") or item.get("task")) if isinstance(item, dict) else None
        if isinstance(name, str):
            key = name.casefold()
            field = "name" if item.get("name") else "task"
            at: tuple[PathItem, ...] = ("postprocesses", i, field)
            if key in first_seen:
                issues.add(
                    at,
                    f"duplicate post-process name {name!r} (first at line"
                    f" {issues.line_of(first_seen[key])}); give each a distinct 'name'",
                )
                continue
            first_seen[key] = at
        if pp is not None:
            built.append(pp)

    if issues.items:
        raise ConfigError(source_name, issues.items)
    config = PostProcessConfig(postprocesses=tuple(built),
                               registered=tuple(n for n, p in registry.items() if _defaults(p)))
    for pp in config.implicit:
        pp._attach_processor(registry[pp.task])
    return config


def _defaults(proc: Processor) -> bool:
    """Whether the task runs with no parameters given (required ones make it configured-only)."""
    try:
        proc.parse_params({})
    except ValidationError:
        return False
    return True


def load_config(
    path: str | Path, registry: Mapping[str, Processor] | None = None
) -> PostProcessConfig:
    """Read and parse the configuration file at ``path`` (see :func:`parse_config`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue(None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, str(path), registry)
