"""The completion a merge may take along (``agents.streams.completion.inline_plan``) and the
sink's test of what runs between a merge and its completion (``sink.nothing_between``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agents.composition import Runtime
from agents.settings import Settings
from agents.streams.completion import inline_plan
from agents.streams.sink import nothing_between
from schemas.records import TaskResult
from sinks.store.metadata import Asset
from tests.unit.agents.streams.test_poison import big_asset


def _rt(tmp_path: Path, **settings: object) -> Runtime:
    return Runtime(Settings(data_dir=tmp_path, **settings))  # type: ignore[arg-type]


def _done(**changes: object) -> Asset:
    return dataclasses.replace(big_asset(1, 10), **changes)  # type: ignore[arg-type]


def test_a_plain_completion_is_planned_with_the_merge(tmp_path: Path) -> None:
    rt = _rt(tmp_path, webhook_urls=["https://hooks.example/a"])
    planned = inline_plan(rt, _done(notification_url="https://hooks.example/b"))
    assert planned is not None
    assert [(d["event"], d["url"]) for d in planned] == [
        ("asset.completed", "https://hooks.example/b"), ("asset.completed", "https://hooks.example/a")]
    assert inline_plan(_rt(tmp_path), _done()) == []  # no one subscribed: the mark only
    assert inline_plan(rt, _done(status="failed")) is not None  # failed, partial: notify only


def test_what_finalize_must_do_is_left_to_it(tmp_path: Path) -> None:
    rt = _rt(tmp_path)
    assert inline_plan(rt, _done(status="refused")) is None  # the object is set aside
    # a first completion with a script runs it; a later one (a replay) only notifies
    assert inline_plan(rt, _done(on_success="current_asset.tags.push('x')")) is None
    assert inline_plan(rt, _done(on_success="x", on_success_result={"script": {}})) == []


def _result(task: str, postprocess: str) -> TaskResult:
    return TaskResult(request_id="r", asset_id="a1", task=task, postprocess=postprocess,
                      status="ok", data_json="{}", error=None, finished_at=0)


def test_tasks_with_steps_after_their_merge_keep_the_completion_apart(tmp_path: Path) -> None:
    rt = _rt(tmp_path)
    assert nothing_between(rt, [_result("blurhash", "blurhash"),
                                _result("dominant-colors", "dominant-colors")])
    hooked = [name for name, p in rt.processors.items() if p.hooks]
    acting = [name for name, p in rt.processors.items() if p.effect is not None]
    assert hooked and acting
    for task in (hooked[0], acting[0], "eager", "no-such-task"):
        assert not nothing_between(rt, [_result("blurhash", "blurhash"), _result(task, task)])


def test_a_post_process_with_dependents_keeps_the_completion_apart(tmp_path: Path) -> None:
    config = tmp_path / "pp.yaml"
    config.write_text("postprocesses:\n"
                      "  - {name: hash, task: blurhash}\n"
                      "  - {name: colors, task: dominant-colors, after: hash}\n")
    rt = _rt(tmp_path, postprocess_config=config)
    assert not nothing_between(rt, [_result("blurhash", "hash")])
    assert nothing_between(rt, [_result("dominant-colors", "colors")])
