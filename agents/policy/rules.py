"""One rule engine for trigger rules and validation rules.

Trigger rules decide whether a post-process runs for an upload; validation rules decide whether a
(sync) task's result refuses the upload or adds a notice. Both compare *properties* with *values*:

* base asset properties (trigger rules use only these): ``width`` (px), ``height`` (px), ``format``
  (string, e.g. ``JPEG``), ``file_size`` (bytes), ``bitrate`` (bps), ``duration`` (seconds),
  ``folder`` (upload folder path, e.g. ``/users/42``);
* validation rules add the properties the task's processor declares (``RuleProperty`` in
  :mod:`processors.registry`, e.g. ``faces`` with alias "number of faces").

Rule forms accepted by :func:`parse_rule` (what a YAML file holds):

* a phrase: ``"width is smaller than 500"``, ``"Image width (px) is smaller than 500"``,
  ``"folder path starts with '/users'"``, ``"format contains PNG, JPEG"``, ``"bitrate >= 800000"``;
* a mapping ``{property, op, value}``; ``property`` may be any alias, ``op`` the canonical id
  (``lt``) or any phrase (``is smaller than``);
* a list (all of them must hold), ``{all: [...]}`` or ``{any: [...]}``, nested freely.

Semantics (decided here, once, so trigger and validation rules cannot drift apart):

* ``None``, ``""`` and ``[]`` mean "no rule": it always holds. ``{all: []}`` holds (nothing to
  fail) and ``{any: []}`` never holds (nothing to satisfy), like Python's ``all``/``any``.
* A property **missing** from the properties (absent key or ``None``, e.g. the bitrate of an image,
  or a value of the wrong type) makes every condition on it false, positive and negated operators
  alike: "bitrate is smaller than 800000" and "bitrate is not 0" are both false for an image. A
  rule can therefore never be satisfied *because* a value is unknown.
* String comparisons are case-insensitive. ``format`` values are normalised (upper-case,
  ``JPG`` -> ``JPEG``, ``TIF`` -> ``TIFF``) on both sides.
* A list value ("format contains PNG, JPEG") holds for a positive operator when the property
  matches ANY listed value; the negated operator holds when it matches NONE. A list-valued property
  (e.g. a list of tags) works the same way element-wise.
* Numbers compare as numbers; numeric properties accept ``lt le gt ge eq ne`` only, string
  properties ``eq ne contains starts_with ends_with`` and the negations.

Parsing happens once at load time (regular expressions live there only); :func:`compile_rule`
turns a rule into a tree of small closures, so :func:`evaluate` costs a dict lookup and a compare
per condition (the router evaluates a few rule sets per event at tens of thousands of events/s).
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, get_args

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

if TYPE_CHECKING:
    from processors.registry import RuleProperty

__all__ = [
    "BASE_PROPERTIES",
    "BASE_VOCABULARY",
    "NUMBER_OPS",
    "OPERATOR_PHRASES",
    "STRING_OPS",
    "AllOf",
    "AnyOf",
    "CompiledRule",
    "Condition",
    "OpName",
    "PathItem",
    "PropertySpec",
    "Rule",
    "RuleError",
    "Vocabulary",
    "compile_rule",
    "describe",
    "evaluate",
    "explain",
    "iter_conditions",
    "make_vocabulary",
    "normalize_format",
    "parse_rule",
]

OpName = Literal[
    "lt",
    "le",
    "gt",
    "ge",
    "eq",
    "ne",
    "contains",
    "not_contains",
    "starts_with",
    "not_starts_with",
    "ends_with",
    "not_ends_with",
]
PropertyKind = Literal["number", "string"]
PathItem = str | int

ALL_OPS: tuple[OpName, ...] = get_args(OpName)
NUMBER_OPS: frozenset[str] = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
STRING_OPS: frozenset[str] = frozenset(
    {
        "eq",
        "ne",
        "contains",
        "not_contains",
        "starts_with",
        "not_starts_with",
        "ends_with",
        "not_ends_with",
    }
)
_ORDER_OPS = frozenset({"lt", "le", "gt", "ge"})
_STRING_ONLY_OPS = STRING_OPS - NUMBER_OPS

#: Phrases per operator; the first one is what :func:`describe` writes. The canonical id itself
#: (``lt``, ``not_contains`` ...) is accepted too.
OPERATOR_PHRASES: Mapping[str, tuple[str, ...]] = {
    "lt": ("is smaller than", "is less than", "is lower than", "smaller than", "less than", "<"),
    "le": (
        "is smaller than or equal to",
        "is smaller or equal than",
        "is smaller or equal to",
        "is less than or equal to",
        "is less or equal than",
        "is less or equal to",
        "is at most",
        "<=",
    ),
    "gt": (
        "is larger than",
        "is greater than",
        "is bigger than",
        "is higher than",
        "larger than",
        "greater than",
        ">",
    ),
    "ge": (
        "is larger than or equal to",
        "is larger or equal than",
        "is larger or equal to",
        "is greater than or equal to",
        "is greater or equal than",
        "is greater or equal to",
        "is at least",
        ">=",
    ),
    "eq": ("equals", "is equal to", "is", "==", "="),
    "ne": ("does not equal", "doesn't equal", "is not equal to", "is not", "!="),
    "contains": ("contains",),
    "not_contains": ("does not contain", "doesn't contain", "not contains"),
    "starts_with": ("starts with", "begins with"),
    "not_starts_with": ("does not start with", "doesn't start with", "not starts with"),
    "ends_with": ("ends with",),
    "not_ends_with": ("does not end with", "doesn't end with", "not ends with"),
}

_FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "TIF": "TIFF"}


def normalize_format(value: str) -> str:
    """Canonical image/video format name: upper-case, ``JPG`` -> ``JPEG``, ``TIF`` -> ``TIFF``."""
    v = value.strip().upper()
    return _FORMAT_ALIASES.get(v, v)


class RuleError(ValueError):
    """A rule that cannot be parsed or is inconsistent (unknown property, bad operator, value...).

    ``path`` locates the offending part *inside* the rule data (e.g. ``("any", 1, "value")``), so
    the configuration loader can point at the right YAML line.
    """

    def __init__(self, message: str, path: Sequence[PathItem] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path: tuple[PathItem, ...] = tuple(path)

    def prefixed(self, *prefix: PathItem) -> RuleError:
        """The same error with ``prefix`` put in front of its path (used while descending)."""
        return RuleError(self.message, (*prefix, *self.path))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class Condition(BaseModel):
    """``property op value``. ``property`` and ``op`` are canonical (parse phrases with
    :func:`parse_rule`). A one-element list value is stored as the plain string (same meaning),
    so phrase and mapping forms of one rule compare equal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    property: str
    op: OpName
    value: int | float | str | list[str]

    @field_validator("value", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        # bool is an int subclass; "width equals true" is a mistake, not the number 1.
        if isinstance(v, bool):
            raise ValueError("a boolean is not a valid rule value")
        if isinstance(v, tuple):
            return list(v)
        return v

    @field_validator("value")
    @classmethod
    def _check_value(cls, v: int | float | str | list[str]) -> int | float | str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list is not a valid rule value")
            if len(v) == 1:
                return v[0]
        if isinstance(v, float) and math.isnan(v):
            raise ValueError("NaN is not a valid rule value")
        return v

    @model_validator(mode="after")
    def _op_fits_value(self) -> Condition:
        is_number = isinstance(self.value, int | float)
        if is_number and self.op in _STRING_ONLY_OPS:
            raise ValueError(f"operator {self.op!r} needs a string value, got {self.value!r}")
        if not is_number and self.op in _ORDER_OPS:
            raise ValueError(f"operator {self.op!r} needs a number value, got {self.value!r}")
        return self


class AllOf(BaseModel):
    """Holds when every member holds (an empty list holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    all: list[Rule]


class AnyOf(BaseModel):
    """Holds when at least one member holds (an empty list never holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    any: list[Rule]


Rule: TypeAlias = Condition | AllOf | AnyOf

AllOf.model_rebuild()
AnyOf.model_rebuild()


def iter_conditions(rule: Rule | None) -> Iterable[Condition]:
    """Every condition of ``rule``, depth first (e.g. to list the properties a rule needs)."""
    if rule is None:
        return
    if isinstance(rule, Condition):
        yield rule
        return
    for member in rule.all if isinstance(rule, AllOf) else rule.any:
        yield from iter_conditions(member)


# --------------------------------------------------------------------------------------------
# Vocabulary (property and operator phrases)
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _norm_phrase(text: str) -> str:
    return " ".join(_TOKEN_RE.findall(text.casefold()))


def _phrase_pattern(phrase: str) -> str:
    """Regex source matching ``phrase`` case-insensitively with flexible whitespace.

    Words need whitespace between them; punctuation ("/", "(", "'") may be glued or spaced. A
    phrase ending in a word character must not be followed by one ("widths" is not "width").
    """
    tokens = _TOKEN_RE.findall(phrase)
    if not tokens:
        raise ValueError(f"empty phrase {phrase!r}")
    out = [re.escape(tokens[0])]
    for prev, tok in itertools.pairwise(tokens):
        glue = r"\s+" if (prev[-1].isalnum() or prev[-1] == "_") and tok[0].isalnum() else r"\s*"
        out.append(glue + re.escape(tok))
    if tokens[-1][-1].isalnum() or tokens[-1][-1] == "_":
        out.append(r"(?!\w)")
    return "".join(out)


def _alternation(phrases: Iterable[str]) -> str:
    # Longest phrase first: Python's alternation takes the first alternative that matches, so
    # this gives the longest match ("is smaller than" before "is", "file size (b)" before
    # "file size").
    uniq = sorted(set(phrases), key=lambda p: (-len(p), p))
    return "|".join(f"(?:{_phrase_pattern(p)})" for p in uniq)


@dataclass(frozen=True)
class PropertySpec:
    """One rule property: canonical ``name``, ``kind``, accepted ``phrases`` (lower-case, the
    canonical name and its spaced form are added automatically), measurement ``units`` accepted in
    parentheses after a phrase ("width (px)"), and ``label``, the phrase :func:`describe` writes."""

    name: str
    kind: PropertyKind
    phrases: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    label: str = ""

    def all_phrases(self) -> tuple[str, ...]:
        base = [self.name, self.name.replace("_", " "), *self.phrases]
        if self.label:
            base.append(self.label)
        seen: dict[str, None] = {}
        for p in base:
            seen.setdefault(_norm_phrase(p), None)
        for p in list(seen):
            for unit in self.units:
                seen.setdefault(_norm_phrase(f"{p} ({unit})"), None)
        return tuple(seen)

    @property
    def display(self) -> str:
        return self.label or (self.phrases[0] if self.phrases else self.name.replace("_", " "))


BASE_PROPERTIES: tuple[PropertySpec, ...] = (
    PropertySpec(
        "width",
        "number",
        ("image width", "video width", "image/video width", "frame width"),
        ("px", "pixels"),
        "width",
    ),
    PropertySpec(
        "height",
        "number",
        ("image height", "video height", "image/video height", "frame height"),
        ("px", "pixels"),
        "height",
    ),
    PropertySpec(
        "format",
        "string",
        ("image format", "video format", "image/video format", "file format", "file type"),
        (),
        "format",
    ),
    PropertySpec("file_size", "number", ("file size", "size"), ("b", "bytes"), "file size"),
    PropertySpec("bitrate", "number", ("video bitrate", "bit rate"), ("bps",), "bitrate"),
    PropertySpec(
        "duration",
        "number",
        ("video duration",),
        ("s", "sec", "seconds"),
        "duration",
    ),
    PropertySpec(
        "folder",
        "string",
        ("folder path", "upload folder path", "upload folder", "path"),
        (),
        "folder path",
    ),
)


class Vocabulary:
    """The properties (and their phrases) a set of rules may use.

    Trigger rules use :data:`BASE_VOCABULARY`; validation rules use
    ``BASE_VOCABULARY.extend(processor.rule_properties)`` (see :func:`make_vocabulary`).
    Construction compiles the phrase regexes once; parsing with it is load-time work only.
    """

    def __init__(self, properties: Iterable[PropertySpec]) -> None:
        self.properties: dict[str, PropertySpec] = {}
        for spec in properties:
            self.properties[spec.name] = spec
        owner: dict[str, str] = {}
        for spec in self.properties.values():
            for phrase in spec.all_phrases():
                other = owner.setdefault(phrase, spec.name)
                if other != spec.name:
                    raise ValueError(
                        f"rule phrase {phrase!r} is claimed by both {other!r} and {spec.name!r}"
                    )
        self._owner = owner
        self._prop_re = re.compile(rf"\s*(?:{_alternation(owner)})", re.IGNORECASE)

    def extend(self, extra: Mapping[str, RuleProperty] | None) -> Vocabulary:
        """A new vocabulary with ``extra`` (a processor's ``rule_properties``) added.

        A name already known (validate-image's ``width``) keeps its base phrases and units and
        gains the extra aliases; its kind must agree.
        """
        if not extra:
            return self
        specs = dict(self.properties)
        for name, rp in extra.items():
            aliases = tuple(a.casefold() for a in rp.aliases)
            if name in specs:
                old = specs[name]
                if old.kind != rp.kind:
                    raise ValueError(
                        f"rule property {name!r} is a {old.kind} already; cannot redeclare it as"
                        f" a {rp.kind}"
                    )
                specs[name] = PropertySpec(
                    name, old.kind, (*old.phrases, *aliases), old.units, old.label
                )
            else:
                specs[name] = PropertySpec(name, rp.kind, aliases)
        return Vocabulary(specs.values())

    # -- lookups -------------------------------------------------------------------------------

    def known(self) -> str:
        return ", ".join(spec.display for spec in self.properties.values())

    def match_property(self, text: str, pos: int = 0) -> tuple[PropertySpec, int] | None:
        """Longest property phrase at ``text[pos:]`` (after optional spaces): (spec, end)."""
        m = self._prop_re.match(text, pos)
        if m is None:
            return None
        return self.properties[self._owner[_norm_phrase(m.group(0))]], m.end()

    def resolve_property(self, text: str) -> PropertySpec:
        """The property a whole phrase names ("Image width (px)" -> width) or a RuleError."""
        found = self.match_property(text)
        if found is not None and not text[found[1] :].strip():
            return found[0]
        raise RuleError(self._unknown_property(text.strip()))

    def _unknown_property(self, bad: str, whole: str | None = None) -> str:
        where = f" in {whole!r}" if whole is not None and whole.strip() != bad else ""
        msg = f"unknown property {bad!r}{where}; known: {self.known()}"
        close = difflib.get_close_matches(_norm_phrase(bad), list(self._owner), n=1, cutoff=0.75)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg


def make_vocabulary(extra: Mapping[str, RuleProperty] | None = None) -> Vocabulary:
    """Base asset properties plus ``extra`` (a processor's ``rule_properties``)."""
    return BASE_VOCABULARY.extend(extra)


BASE_VOCABULARY = Vocabulary(BASE_PROPERTIES)

_OP_OWNER: dict[str, str] = {}
for _op, _phrases in OPERATOR_PHRASES.items():
    for _p in (*_phrases, _op):
        _OP_OWNER[_norm_phrase(_p)] = _op
_OP_RE = re.compile(rf"\s*(?:{_alternation(_OP_OWNER)})", re.IGNORECASE)
_OP_DISPLAY = {op: phrases[0] for op, phrases in OPERATOR_PHRASES.items()}


def _known_ops(kind: PropertyKind | None = None) -> str:
    ops = ALL_OPS if kind is None else [o for o in ALL_OPS if o in _ops_for(kind)]
    return ", ".join(f"{_OP_DISPLAY[o]!r} ({o})" for o in ops)


def _ops_for(kind: PropertyKind) -> frozenset[str]:
    return NUMBER_OPS if kind == "number" else STRING_OPS


def _resolve_op(text: str) -> str:
    m = _OP_RE.match(text)
    if m is None or text[m.end() :].strip():
        raise RuleError(f"unknown operator {text.strip()!r}; known: {_known_ops()}")
    return _OP_OWNER[_norm_phrase(m.group(0))]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _split_values(text: str, whole: str) -> list[str]:
    """Split a phrase's value part into items: ``PNG, JPEG`` -> two items; quoted items ('a, b'
    or "a") keep commas and spaces, with backslash escapes; unquoted items are stripped."""
    items: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] in "'\"":
            quote, i, buf = text[i], i + 1, []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                raise RuleError(f"unterminated quoted value in {whole!r}")
            items.append("".join(buf))
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise RuleError(
                    f"unexpected text {text[i:].strip()!r} after a quoted value in {whole!r}"
                )
        else:
            j = text.find(",", i)
            j = n if j < 0 else j
            item = text[i:j].strip()
            if not item:
                raise RuleError(f"missing value in {whole!r}")
            items.append(item)
            i = j
        if i >= n:
            return items
        i += 1  # the comma


def _parse_number(raw: Any, spec: PropertySpec, whole: str | None = None) -> int | float:
    if isinstance(raw, bool) or raw is None:
        raise RuleError(f"value {raw!r} is not a number for {spec.name!r}")
    if isinstance(raw, int | float):
        value: int | float = raw
    else:
        text = str(raw).strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                where = f" in {whole!r}" if whole else ""
                raise RuleError(
                    f"value {text!r} is not a number for {spec.name!r}{where}"
                ) from None
    if isinstance(value, float) and math.isnan(value):
        raise RuleError(f"value {raw!r} is not a number for {spec.name!r}")
    return value


def _string_value(raw: Any, spec: PropertySpec) -> str:
    if isinstance(raw, bool) or raw is None or isinstance(raw, Mapping | list | tuple):
        raise RuleError(f"value {raw!r} is not a string for {spec.name!r}")
    s = str(raw)
    return normalize_format(s) if spec.name == "format" else s


def _check_op(spec: PropertySpec, op: str, op_text: str) -> None:
    if op not in _ops_for(spec.kind):
        raise RuleError(
            f"operator {op_text!r} is not valid for {spec.kind} property {spec.name!r};"
            f" valid: {_known_ops(spec.kind)}"
        )


def _make_condition(
    spec: PropertySpec, op: str, raw: Any, op_text: str, whole: str | None = None
) -> Condition:
    _check_op(spec, op, op_text)
    value: int | float | str | list[str]
    if spec.kind == "number":
        if isinstance(raw, list | tuple):
            if len(raw) != 1:
                raise RuleError(f"a number property ({spec.name!r}) takes a single value")
            raw = raw[0]
        value = _parse_number(raw, spec, whole)
    elif isinstance(raw, list | tuple):
        if not raw:
            raise RuleError(f"empty list of values for {spec.name!r}")
        value = [_string_value(v, spec) for v in raw]
    else:
        value = _string_value(raw, spec)
    return Condition(property=spec.name, op=cast(OpName, op), value=value)


def _parse_phrase(text: str, vocab: Vocabulary) -> Condition:
    found = vocab.match_property(text)
    if found is None:
        raise RuleError(vocab._unknown_property(_guess_property_text(text), text))
    spec, pos = found
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("("):
        close = stripped.find(")")
        unit = stripped[: close + 1] if close >= 0 else stripped
        allowed = ", ".join(f"({u})" for u in spec.units) or "none"
        raise RuleError(
            f"unknown unit {unit!r} for property {spec.name!r} in {text!r}; allowed: {allowed}"
        )
    m = _OP_RE.match(text, pos)
    if m is None:
        raise RuleError(
            f"unknown operator at {stripped!r} in {text!r}; known: {_known_ops(spec.kind)}"
        )
    op = _OP_OWNER[_norm_phrase(m.group(0))]
    value_text = text[m.end() :]
    if not value_text.strip():
        raise RuleError(f"missing value in {text!r}")
    if spec.kind == "number":
        items = _split_values(value_text, text)
        if len(items) != 1:
            raise RuleError(
                f"value {value_text.strip()!r} is not a number for {spec.name!r} in {text!r}"
            )
        return _make_condition(spec, op, items[0], m.group(0).strip(), text)
    return _make_condition(spec, op, _split_values(value_text, text), m.group(0).strip(), text)


def _guess_property_text(text: str) -> str:
    """The part of an unparseable phrase that was meant as the property: what precedes the
    first operator phrase (or the first word). Load-time only."""
    for i in range(len(text)):
        if i == 0 or text[i - 1].isspace() or text[i] in "<>=!":
            m = _OP_RE.match(text, i)
            if m is not None and i > 0 and text[:i].strip():
                return text[:i].strip()
    parts = text.split()
    return parts[0] if parts else text


_CONDITION_KEYS = frozenset({"property", "op", "value"})


def parse_rule(
    data: Any, vocab: Vocabulary = BASE_VOCABULARY, path: Sequence[PathItem] = ()
) -> Rule | None:
    """Parse rule data (phrase, mapping, list, ``{all}``/``{any}``) into a :data:`Rule`.

    ``None``, an empty string, list or mapping mean "no rule" and return ``None``. Raises
    :class:`RuleError` whose ``path`` (prefixed with ``path``) locates the offending element.
    """
    if data is None:
        return None
    if isinstance(data, str) and not data.strip():
        return None
    if isinstance(data, list | tuple | Mapping) and not data:
        return None
    return _parse(data, vocab, tuple(path))


def _parse(data: Any, vocab: Vocabulary, path: tuple[PathItem, ...]) -> Rule:
    if isinstance(data, Condition | AllOf | AnyOf):
        return data
    if isinstance(data, str):
        if not data.strip():
            raise RuleError("empty rule", path)
        try:
            return _parse_phrase(data, vocab)
        except RuleError as exc:
            raise exc.prefixed(*path) from None
    if isinstance(data, list | tuple):
        return AllOf(all=[_parse(item, vocab, (*path, i)) for i, item in enumerate(data)])
    if isinstance(data, Mapping):
        keys = set(data)
        if keys == {"all"} or keys == {"any"}:
            (key,) = keys
            members = data[key]
            if members is None:
                members = []
            if not isinstance(members, list | tuple):
                raise RuleError(f"{key!r} needs a list of rules", (*path, key))
            parsed = [_parse(item, vocab, (*path, key, i)) for i, item in enumerate(members)]
            return AllOf(all=parsed) if key == "all" else AnyOf(any=parsed)
        if keys <= _CONDITION_KEYS or not keys.isdisjoint(_CONDITION_KEYS):
            return _parse_mapping(data, vocab, path)
        raise RuleError(
            f"a rule mapping needs 'property', 'op' and 'value', or a single 'all' or 'any'"
            f" key; got {', '.join(map(repr, sorted(map(str, keys))))}",
            path,
        )
    raise RuleError(
        f"a rule must be a phrase, a mapping or a list, got {type(data).__name__} {data!r}",
        path,
    )


def _parse_mapping(data: Mapping[str, Any], vocab: Vocabulary, path: tuple[PathItem, ...]) -> Rule:
    extra = set(data) - _CONDITION_KEYS
    if extra:
        bad = sorted(map(str, extra))[0]
        raise RuleError(
            f"unknown key {bad!r} in a condition; expected property, op, value", (*path, bad)
        )
    for key in ("property", "op", "value"):
        if key not in data:
            raise RuleError(f"condition is missing {key!r}", path)
    prop, op_text = data["property"], data["op"]
    if not isinstance(prop, str):
        raise RuleError(f"property must be a string, got {prop!r}", (*path, "property"))
    if not isinstance(op_text, str):
        raise RuleError(f"op must be a string, got {op_text!r}", (*path, "op"))
    try:
        spec = vocab.resolve_property(prop)
    except RuleError as exc:
        raise exc.prefixed(*path, "property") from None
    try:
        op = _resolve_op(op_text)
    except RuleError as exc:
        raise exc.prefixed(*path, "op") from None
    try:
        _check_op(spec, op, op_text.strip())
    except RuleError as exc:
        raise exc.prefixed(*path, "op") from None
    try:
        return _make_condition(spec, op, data["value"], op_text.strip())
    except RuleError as exc:
        raise exc.prefixed(*path, "value") from None


# --------------------------------------------------------------------------------------------
# Describing
# --------------------------------------------------------------------------------------------


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _describe_value(value: int | float | str | list[str]) -> str:
    if isinstance(value, list):
        return ", ".join(_quote(v) for v in value)
    if isinstance(value, str):
        return _quote(value)
    return repr(value)


def describe(rule: Rule | None, vocab: Vocabulary | None = None) -> str:
    """A human sentence for ``rule`` ("width is smaller than 500").

    For a :class:`Condition` it is a phrase :func:`parse_rule` reads back to an equal condition
    (with the same vocabulary). Groups join members with "and"/"or" (not re-parseable).
    ``vocab`` picks the property labels ("number of faces" instead of "faces").
    """
    if rule is None:
        return "always"
    if isinstance(rule, Condition):
        spec = (vocab or BASE_VOCABULARY).properties.get(rule.property)
        label = spec.display if spec is not None else rule.property.replace("_", " ")
        return f"{label} {_OP_DISPLAY[rule.op]} {_describe_value(rule.value)}"
    if isinstance(rule, AllOf):
        if not rule.all:
            return "always"
        return " and ".join(_describe_member(m, vocab) for m in rule.all)
    if not rule.any:
        return "never"
    return " or ".join(_describe_member(m, vocab) for m in rule.any)


def _describe_member(rule: Rule, vocab: Vocabulary | None) -> str:
    text = describe(rule, vocab)
    if isinstance(rule, Condition):
        return text
    members = rule.all if isinstance(rule, AllOf) else rule.any
    return f"({text})" if len(members) > 1 else text


# --------------------------------------------------------------------------------------------
# Compiling and evaluating
# --------------------------------------------------------------------------------------------

Props = Mapping[str, Any]
Predicate = Callable[[Props], bool]


class CompiledRule:
    """A rule turned into closures: ``compiled(props) -> bool``. Build with
    :func:`compile_rule` once, call per event."""

    __slots__ = ("fn", "rule")

    def __init__(self, rule: Rule | None, fn: Predicate) -> None:
        self.rule = rule
        self.fn = fn

    def __call__(self, props: Props) -> bool:
        return self.fn(props)

    def __repr__(self) -> str:
        return f"CompiledRule({describe(self.rule)!r})"


def _always(props: Props) -> bool:
    return True


def _never(props: Props) -> bool:
    return False


def _as_number(v: Any) -> int | float | None:
    """Slow path for property values that are not plain int/float (numpy scalars, Decimal)."""
    if v is None or isinstance(v, bool | str | bytes):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _compile_number(c: Condition) -> Predicate:
    name = c.property
    if not isinstance(c.value, int | float):
        raise TypeError(f"not a number condition: {c!r}")
    b: int | float = c.value
    cmp: Callable[[Any], bool] = {
        "lt": lambda a: a < b,
        "le": lambda a: a <= b,
        "gt": lambda a: a > b,
        "ge": lambda a: a >= b,
        "eq": lambda a: a == b,
        "ne": lambda a: a != b,
    }[c.op]
    int_, float_ = int, float

    def pred(props: Props) -> bool:
        v: Any = props.get(name)
        t = type(v)
        if t is int_ or t is float_:
            return cmp(v)
        n = _as_number(v)
        if n is None:
            return False
        return cmp(n)

    # Specialise the commonest case (lt/gt on a plain int) to skip one call level.
    if c.op == "lt":

        def pred_lt(props: Props) -> bool:
            v: Any = props.get(name)
            t = type(v)
            if t is int_ or t is float_:
                return bool(v < b)
            n = _as_number(v)
            if n is None:
                return False
            return n < b

        return pred_lt
    if c.op == "gt":

        def pred_gt(props: Props) -> bool:
            v: Any = props.get(name)
            t = type(v)
            if t is int_ or t is float_:
                return bool(v > b)
            n = _as_number(v)
            if n is None:
                return False
            return n > b

        return pred_gt
    return pred


def _compile_string(c: Condition) -> Predicate:
    name = c.property
    raw = c.value if isinstance(c.value, list) else [c.value]
    norm: Callable[[str], str] = normalize_format if name == "format" else str.casefold
    values = tuple(norm(str(v)) for v in raw)
    base_op = c.op[4:] if c.op.startswith("not_") else c.op
    negate = c.op.startswith("not_") or c.op == "ne"
    match: Callable[[str], bool]
    if base_op in ("eq", "ne"):
        if len(values) == 1:
            (only,) = values
            match = only.__eq__
        else:
            value_set = frozenset(values)
            match = value_set.__contains__
    elif base_op == "contains":
        if len(values) == 1:
            (only,) = values
            match = lambda s: only in s  # noqa: E731
        else:

            def match(s: str) -> bool:
                for x in values:  # noqa: SIM110 (a loop beats any() over a generator)
                    if x in s:
                        return True
                return False

    elif base_op == "starts_with":
        match = lambda s: s.startswith(values)  # noqa: E731
    else:
        match = lambda s: s.endswith(values)  # noqa: E731
    str_ = str

    def positive(v: Any) -> bool | None:
        """True/False whether ``v`` matches, None when it is missing."""
        if type(v) is str_:
            return bool(match(norm(v)))
        if v is None:
            return None
        if isinstance(v, list | tuple | set | frozenset):
            return any(match(norm(str(x))) for x in v if x is not None)
        if isinstance(v, bool | Mapping):
            return None
        return bool(match(norm(str(v))))

    if negate:

        def pred_neg(props: Props) -> bool:
            r = positive(props.get(name))
            return r is False

        return pred_neg

    if len(values) == 1 and base_op == "eq" and name != "format":
        (only,) = values

        def pred_eq(props: Props) -> bool:
            v: Any = props.get(name)
            if type(v) is str_:
                return v.casefold() == only
            return positive(v) is True

        return pred_eq

    def pred(props: Props) -> bool:
        return positive(props.get(name)) is True

    return pred


def _compile(rule: Rule) -> Predicate:
    if isinstance(rule, Condition):
        if isinstance(rule.value, int | float):
            return _compile_number(rule)
        return _compile_string(rule)
    if isinstance(rule, AllOf):
        fns = tuple(_compile(m) for m in rule.all)
        if not fns:
            return _always
        if len(fns) == 1:
            return fns[0]
        if len(fns) == 2:
            f0, f1 = fns
            return lambda p: f0(p) and f1(p)

        def all_of(props: Props) -> bool:
            # An explicit loop: ~2x cheaper than all() over a generator.
            for f in fns:  # noqa: SIM110
                if not f(props):
                    return False
            return True

        return all_of
    fns = tuple(_compile(m) for m in rule.any)
    if not fns:
        return _never
    if len(fns) == 1:
        return fns[0]

    def any_of(props: Props) -> bool:
        for f in fns:  # noqa: SIM110
            if f(props):
                return True
        return False

    return any_of


def compile_rule(rule: Rule | None) -> CompiledRule:
    """Compile ``rule`` once (``None`` = always true) for cheap repeated evaluation."""
    return CompiledRule(rule, _always if rule is None else _compile(rule))


def evaluate(rule: Rule | CompiledRule | None, props: Props) -> bool:
    """Whether ``rule`` holds for ``props`` (``None`` holds). Pass a :class:`CompiledRule` on hot
    paths: a plain rule is compiled on every call."""
    if type(rule) is CompiledRule:
        return rule.fn(props)
    if rule is None:
        return True
    assert not isinstance(rule, CompiledRule)
    return _compile(rule)(props)


def explain(rule: Rule | None, props: Props, vocab: Vocabulary | None = None) -> str | None:
    """Why ``rule`` holds for ``props``, as a sentence naming the conditions that held (the first
    holding member of an ``any``), or ``None`` when it does not hold. Used for notices; not on the
    hot path (it compiles as it goes)."""
    if rule is None:
        return "always"
    if isinstance(rule, Condition):
        return describe(rule, vocab) if _compile(rule)(props) else None
    if isinstance(rule, AllOf):
        parts = []
        for m in rule.all:
            why = explain(m, props, vocab)
            if why is None:
                return None
            parts.append(why)
        return " and ".join(parts) if parts else "always"
    for m in rule.any:
        why = explain(m, props, vocab)
        if why is not None:
            return why
    return None
