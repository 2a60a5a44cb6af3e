"""Workflow logic on task results: a post-process that runs ``after`` another one, ``when`` a
condition on that result holds.

In the post-process YAML::

    - name: nsfw
      task: nsfw
    - name: quarantine-nsfw
      task: quarantine
      after: nsfw                          # the name of another post-process entry
      when: "NSFW is larger than 0.7"      # the rule grammar, on the upstream's properties

``when`` takes every rule form of :func:`agents.policy.rules.parse_rule`; it may use the base
asset properties and every rule property the *upstream* task offers (``nsfw`` offers "NSFW").
No ``when`` = run whenever the upstream ended ``ok``.

The graph is checked when the configuration loads (:func:`check`): ``after`` must name another
entry (case-insensitive), no chain may loop back on itself (each cycle is one error naming every
entry in it with its line), ``when`` needs ``after`` and is parsed against the upstream's
vocabulary, and a dependent cannot be ``mode: sync`` (it runs after a result, when the upload was
answered long ago).

At run time:

* the router plans a dependent together with its upstream (:func:`arrange`: a dependent whose
  upstream is not planned is dropped) and records it as ``waiting`` — part of the asset's pending
  set, so the asset is not final while it may still run — without dispatching it;
* when the upstream's result is merged, the sink decides (:func:`decide`): the condition holds on
  an ``ok`` result → the dependent becomes ``pending`` and its TaskRequest (the request id the
  router computed, so a duplicate upstream result never plans it twice) is sent after the
  commit; otherwise it is recorded as ``skipped`` with the reason (error kind ``condition``);
* a replay of the upstream plans its dependents again (waiting rows stay as they are) and
  re-evaluates them on the replayed result: a dependent skipped by its condition runs if the
  condition now holds; one that ran is never run twice for the same request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.policy.rules import (
    CompiledRule,
    PathItem,
    Rule,
    RuleError,
    compile_rule,
    describe,
    make_vocabulary,
    parse_rule,
)

if TYPE_CHECKING:
    from agents.policy.postprocess import PostProcess
    from processors.registry import Processor

__all__ = ["Decision", "arrange", "check", "decide", "dependents_of"]

SKIP_KIND = "condition"
"""``error_kind`` of a dependent skipped because its condition did not hold (or its upstream
did not end ``ok``); only such a row is re-evaluated by a replay."""


AddIssue = Callable[[Sequence[PathItem], str], None]
LineOf = Callable[[Sequence[PathItem]], int | None]


def _name_of(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    name = item.get("name") or item.get("task")
    return name if isinstance(name, str) else None


def check(items: Sequence[Any], registry: Mapping[str, Processor], add: AddIssue,
          line_of: LineOf) -> dict[int, Rule | None]:
    """Check the ``after``/``when`` graph of the raw entries; report each mistake with ``add``
    (field path, message: the loader turns the path into a line). Returns the parsed ``when``
    rule of every entry that has a valid ``after`` (index -> rule, ``None`` = no condition)."""
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        name = _name_of(item)
        if name is not None:
            index.setdefault(name.casefold(), i)
    parent: dict[int, int] = {}
    whens: dict[int, Rule | None] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        base: tuple[PathItem, ...] = ("postprocesses", i)
        after = item.get("after")
        when = item.get("when")
        if after is None:
            if when not in (None, "", [], {}):
                add((*base, "when"), "'when' needs 'after': the condition is judged on the"
                    " result of the post-process named there")
            continue
        if not isinstance(after, str) or not after.strip():
            add((*base, "after"), f"'after' must be the name of another post-process (got"
                f" {after!r})")
            continue
        up = index.get(after.strip().casefold())
        if up is None:
            known = ", ".join(n for n in (_name_of(x) for x in items) if n)
            add((*base, "after"), f"unknown post-process {after!r} in 'after'; known: {known}")
            continue
        mode = item.get("mode", "async")
        if isinstance(mode, str) and mode.strip().lower() == "sync":
            add((*base, "mode"), "a post-process with 'after' cannot be mode: sync (it runs"
                " when its upstream's result lands, after the upload was answered)")
        parent[i] = up
        task = items[up].get("task") if isinstance(items[up], dict) else None
        proc = registry.get(task) if isinstance(task, str) else None
        if proc is None:
            whens[i] = None
            continue  # the upstream's own error names its task
        try:
            vocab = make_vocabulary(proc.rule_properties)
        except ValueError:
            whens[i] = None
            continue  # the upstream's own error names its bad rule properties
        try:
            whens[i] = parse_rule(when, vocab, (*base, "when"))
        except RuleError as exc:
            add(exc.path or (*base, "when"),
                f"{exc.message} (on the result of {_name_of(items[up])!r})")
    _report_cycles(items, parent, add, line_of)
    return whens


def _report_cycles(items: Sequence[Any], parent: Mapping[int, int], add: AddIssue,
                   line_of: LineOf) -> None:
    """Each entry has at most one upstream, so a cycle is found by following ``after`` links;
    each is reported once, at its first entry, naming every entry of it with its line."""
    done: set[int] = set()
    for start in sorted(parent):
        path: list[int] = []
        seen: dict[int, int] = {}
        node: int | None = start
        while node is not None and node not in done and node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = parent.get(node)
        if node is not None and node in seen:
            loop = path[seen[node]:]
            first = min(loop)
            k = loop.index(first)
            loop = loop[k:] + loop[:k]
            names = [f"{_name_of(items[j])!r} (line {line_of(('postprocesses', j, 'after'))})"
                     for j in loop]
            names.append(repr(_name_of(items[first])))
            add(("postprocesses", first, "after"),
                "cycle in 'after': " + " -> ".join(names) + "; a post-process cannot wait,"
                " directly or not, for itself")
        done.update(path)


# ------------------------------------------------------------------ planning (router)
def arrange(candidates: Sequence[PostProcess], only: set[str] | None = None
            ) -> list[PostProcess]:
    """The post-processes to plan for an upload, config order: those without ``after`` (in
    ``only``, lower-case names or tasks, when a replay names some; a named dependent brings its
    upstream chain), and every dependent whose upstream is planned (transitively; a replay of
    an upstream re-plans its dependents)."""
    def wanted(pp: PostProcess) -> bool:
        return not only or pp.name.lower() in only or pp.task.lower() in only

    if only:
        # a replay naming a dependent replays its upstream chain: its condition is judged on
        # a fresh upstream result (the graph is acyclic: checked at load)
        by = {pp.name.casefold(): pp for pp in candidates}
        extra: set[str] = set()
        for pp in candidates:
            up = by.get(pp.after.casefold()) if pp.after is not None and wanted(pp) else None
            while up is not None and up.name.lower() not in extra:
                extra.add(up.name.lower())
                up = by.get(up.after.casefold()) if up.after is not None else None
        only = only | extra

    kept = {pp.name.casefold() for pp in candidates if pp.after is None and wanted(pp)}
    grew = True
    while grew:
        grew = False
        for pp in candidates:
            key = pp.name.casefold()
            if pp.after is not None and key not in kept and pp.after.casefold() in kept:
                kept.add(key)
                grew = True
    return [pp for pp in candidates if pp.name.casefold() in kept]


# ------------------------------------------------------------------ deciding (sink)
def dependents_of(postprocesses: Sequence[PostProcess], upstream: str) -> list[PostProcess]:
    """The configured post-processes that run ``after`` ``upstream`` (case-insensitive)."""
    key = upstream.casefold()
    return [pp for pp in postprocesses if pp.after is not None and pp.after.casefold() == key]


_COMPILED: dict[int, tuple[Any, CompiledRule]] = {}


def _compiled(pp: PostProcess) -> CompiledRule:
    found = _COMPILED.get(id(pp))
    if found is None or found[0] is not pp:
        found = _COMPILED[id(pp)] = (pp, compile_rule(pp.when))
    return found[1]


@dataclass(frozen=True)
class Decision:
    """What becomes of one waiting dependent: ``run``, or skipped with ``reason``."""

    postprocess: str
    run: bool
    reason: str = ""


def decide(upstream: PostProcess, dependents: Sequence[PostProcess],
           props: Mapping[str, Any], status: str, data: Mapping[str, Any] | None
           ) -> list[Decision]:
    """Judge each dependent's ``when`` on the upstream's result: the asset ``props`` merged
    with the upstream task's rule properties read from ``data`` (as validation rules see
    them). An upstream that did not end ``ok`` skips its dependents."""
    out: list[Decision] = []
    if status != "ok" or data is None:
        for pp in dependents:
            out.append(Decision(pp.name, False, f"{upstream.name} ended {status}, not ok"))
        return out
    merged = upstream.rule_props(props, data)
    vocab = upstream.vocabulary
    for pp in dependents:
        if pp.when is None or _compiled(pp).fn(merged):
            out.append(Decision(pp.name, True))
        else:
            out.append(Decision(pp.name, False, f"condition {describe(pp.when, vocab)!r} on"
                                f" {upstream.name} did not hold"))
    return out


def clear_caches() -> None:
    _COMPILED.clear()
