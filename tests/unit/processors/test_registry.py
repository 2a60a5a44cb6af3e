"""The processor registry: declarations at registration, no process-wide state."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from processors import registry
from processors.registry import (
    HookOutcome,
    Processor,
    ResultEvent,
    RouteContext,
    Services,
    TaskInput,
    load_all,
    processors_of,
    register,
    resolve,
)


def _run(inp: TaskInput, params: Any) -> dict[str, Any]:
    return {"score": 1}


def _hook(event: ResultEvent) -> HookOutcome:
    return HookOutcome(notices=(f"seen {event.asset_id}",))


def test_register_declares_side_effects_on_the_processor_and_records_nothing() -> None:
    before = load_all()

    @register("test-declared", version="2", input=registry.InputSpec(kind="header"),
              info={"score": "score", "double": lambda r: r["score"] * 2, "none": lambda r: None},
              tags=lambda r: [f"s{r['score']}", 7],  # type: ignore[arg-type]
              hooks=_hook, routes="agents.api.routes.faces:task_routes")
    def run(inp: TaskInput, params: Any) -> dict[str, Any]:
        return {"score": 3}

    [proc] = processors_of(run)
    assert proc.name == "test-declared" and proc.run is run and proc.version == "2"
    assert proc.hooks == (_hook,) and proc.routes == ("agents.api.routes.faces:task_routes",)
    assert proc.info_of({"score": 3}) == {"score": 3, "double": 6}
    assert proc.info_of({"other": 1, "score": 0}) == {"score": 0, "double": 0}
    assert proc.tags_of({"score": 3}) == ["s3", "7"]
    # nothing global: a function registered outside the loaded modules is nobody's business
    assert "test-declared" not in load_all()
    assert load_all() == before and load_all() is not load_all()


def test_field_declarations_read_the_result() -> None:
    proc = Processor(name="t", version="1", run=_run, info={"colors": "colors"}, tags="labels")
    assert proc.info_of({"colors": []}) == {"colors": []}
    assert proc.info_of({}) == {}
    assert proc.tags_of({"labels": ["cat", "dog"]}) == ["cat", "dog"]
    assert proc.tags_of({"labels": "cat"}) == []  # a field that is not a list adds none
    assert proc.tags_of({}) == []
    assert Processor(name="u", version="1", run=_run).tags_of({"labels": ["x"]}) == []


def test_bad_declarations_fail_at_registration() -> None:
    with pytest.raises(ValueError, match=r"not 'package\.module:attribute'"):
        register("bad", version="1", hooks="sinks.indexes.faces")
    with pytest.raises(ValueError, match=r"not 'package\.module:attribute'"):
        register("bad", version="1", routes=[":x"])
    with pytest.raises(TypeError, match="neither callable nor a string"):
        register("bad", version="1", hooks=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="info 'k'"):
        register("bad", version="1", info={"k": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="tags"):
        register("bad", version="1", tags=3)  # type: ignore[arg-type]


def test_resolve_imports_lazily_named_attributes() -> None:
    assert resolve(_hook) is _hook
    assert resolve("processors.registry:Processor.info_of") is Processor.info_of
    with pytest.raises(AttributeError):
        resolve("processors.registry:nothing_here")
    with pytest.raises(ImportError):
        resolve("processors.no_such_module:x")


def test_a_module_yields_its_registered_functions_and_duplicates_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def first(inp: TaskInput, params: Any) -> dict[str, Any]:
        return {}

    a = types.ModuleType("plugin_a")
    a.first = register("dup-task", version="1")(first)  # type: ignore[attr-defined]
    a.registry = registry  # type: ignore[attr-defined]  # modules it holds are not scanned
    assert [p.name for p in processors_of(a)] == ["dup-task"]

    def other(inp: TaskInput, params: Any) -> dict[str, Any]:
        return {}

    b = types.ModuleType("plugin_b")
    b.other = register("dup-task", version="1")(other)  # type: ignore[attr-defined]

    class EntryPoint:
        def __init__(self, name: str, mod: types.ModuleType) -> None:
            self.name, self.value, self.mod = name, mod.__name__, mod

        def load(self) -> types.ModuleType:
            return self.mod

    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint("a", a)])
    assert load_all()["dup-task"].run is first
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("a", a), EntryPoint("b", b)])
    with pytest.raises(ValueError, match="'dup-task' is already registered"):
        load_all()


def test_builtin_declarations_resolve() -> None:
    procs = load_all()
    assert procs["blurhash"].info_of({"blurhash": "LKO2"}) == {"blurhash": "LKO2"}
    assert procs["dominant-colors"].info_of({"colors": [1]}) == {"dominant_colors": [1]}
    assert procs["tag"].tags_of({"add_tags": ["cat"]}) == ["cat"]
    with_effects = {n for n, p in procs.items() if p.hooks or p.routes}
    assert with_effects == {"index-faces", "index-similarity"}
    for name in with_effects:
        for ref in (*procs[name].hooks, *procs[name].routes):
            assert isinstance(ref, str) and callable(resolve(ref)), (name, ref)


def test_builtin_route_factories_build_routers() -> None:
    from fastapi import APIRouter

    from agents.settings import Settings

    procs = load_all()
    ctx = RouteContext(services=lambda: Services(engine=None, data_dir=Path(".")),
                       auth=(), settings=Settings())
    faces = resolve(procs["index-faces"].routes[0])(ctx)
    assert isinstance(faces, APIRouter)
    similar = resolve(procs["index-similarity"].routes[0])(ctx)
    assert isinstance(similar, registry.TaskRoutes) and isinstance(similar.router, APIRouter)
    [(key, cap)] = similar.body_limits.items()
    assert key == ("POST", "/v1/similar") and "query image larger than" in cap.message
