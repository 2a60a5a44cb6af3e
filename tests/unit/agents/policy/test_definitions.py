"""Definitions over the API: merged over the YAML bootstrap, checked by its checker with
line-free messages, stored and versioned (SQLite and PostgreSQL), reloaded live."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.policy.definitions import (
    DefinitionProblem,
    LiveDefinitions,
    check_merged,
    check_preset,
    definition_body,
    merge,
)
from agents.policy.postprocess import load_config
from sinks.store import definitions as defs
from sinks.store.metadata import MetadataStore
from tests.conftest import ROOT

BOOT = ROOT / "tests/fixtures/pp_api.yaml"


def live(s: MetadataStore, poll_ms: float = 10_000) -> LiveDefinitions:
    from processors.registry import load_all

    ld = LiveDefinitions(load_config(BOOT), BOOT, lambda: s.engine, load_all(), poll_ms)
    ld.refresh()
    return ld


def test_a_stored_definition_replaces_the_yaml_entry_in_place_others_follow() -> None:
    boot = [{"name": "a", "task": "blurhash"}, {"name": "b", "task": "dominant-colors"}]
    out = merge(boot, [("new", {"name": "new", "task": "blurhash"}),
                       ("A", {"name": "A", "task": "dominant-colors"})])
    assert [(i["name"], i["task"]) for i in out] == [
        ("A", "dominant-colors"), ("b", "dominant-colors"), ("new", "blurhash")]


def test_the_checkers_messages_come_without_lines_relative_to_the_definition() -> None:
    items = [{"name": "ok", "task": "blurhash"},
             {"name": "bad", "task": "blurhash", "trigger": "widht is larger than 5",
              "mode": "sideways"}]
    with pytest.raises(DefinitionProblem) as err:
        check_merged(items, None, focus=1)
    text = str(err.value)
    assert "trigger: unknown property 'widht'" in text and "mode:" in text
    assert "line" not in text and "postprocesses[" not in text
    with pytest.raises(DefinitionProblem, match="unknown task 'nope'"):
        check_merged([{"name": "x", "task": "nope"}], None, focus=0)
    with pytest.raises(DefinitionProblem, match="name: invalid name"):
        definition_body({"name": "a b", "task": "blurhash"})
    with pytest.raises(DefinitionProblem, match="differs from the name in the URL"):
        definition_body({"name": "a", "task": "blurhash"}, "b")
    with pytest.raises(DefinitionProblem, match="JSON object"):
        definition_body(["a"])


def test_presets_are_held_to_the_upload_limits(tmp_path: Path) -> None:
    cfg = load_config(BOOT)
    p = check_preset({"name": "cat", "postprocesses": ["hash"], "folder": "/catalog/",
                      "tags": ["a"], "context": {"k": "v"}, "mode": "sync"}, cfg, ())
    assert p.folder == "/catalog" and p.postprocesses == ["hash"]
    for body, message in [
        ({"name": "x", "postprocesses": ["nope"]}, "postprocesses: unknown post-process"),
        ({"name": "x", "folder": "/a/../b"}, "folder"),
        ({"name": "x", "tags": ["t"] * 101}, "tags"),
        ({"name": "x", "mode": "later"}, "mode"),
        ({"name": "x", "colour": 1}, "colour: unknown key"),
        ({"name": "x", "notification_url": "http://127.0.0.1/hook"}, "notification_url"),
        ({}, "name: required"),
    ]:
        with pytest.raises(DefinitionProblem, match=message):
            check_preset(body, cfg, ())


def test_store_versions_and_counter(store: MetadataStore) -> None:
    e = store.engine
    assert defs.current_version(e) == 0
    made, c1 = defs.create(e, "postprocess", "Thumb", {"name": "Thumb"})
    assert made.version == 1 and c1 == 1
    with pytest.raises(defs.DefinitionExists):
        defs.create(e, "postprocess", "thumb", {"name": "thumb"})
    again, c2 = defs.replace(e, "postprocess", "thumb", {"name": "thumb", "x": 1})
    assert again.version == 2 and c2 == 2
    assert defs.get(e, "postprocess", "THUMB").body == {"name": "thumb", "x": 1}
    with pytest.raises(defs.DefinitionMissing):
        defs.replace(e, "postprocess", "other", {})
    assert defs.get(e, "preset", "thumb") is None  # kinds apart
    assert defs.delete(e, "postprocess", "thumb") == 3
    assert defs.snapshot(e).postprocesses == ()


def test_live_set_reloads_when_the_counter_moves(tmp_path: Path) -> None:
    s = MetadataStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    a, b = live(s), live(s)  # two processes' views
    assert a.config.get("extra") is None and a.version == 0
    body = {"name": "extra", "task": "blurhash", "trigger": "width is larger than 10"}
    a.candidate("extra", body)
    _made, counter = defs.create(s.engine, "postprocess", "extra", body)
    assert not b.refresh()  # not due yet and nothing newer asked for
    assert b.refresh(counter) and b.config.get("extra") is not None and b.version == counter
    assert "extra" in b.stored
    # a replacement of a YAML entry takes its place; deleting it brings the YAML one back
    defs.replace(s.engine, "postprocess", "hash",
                  {"name": "hash", "task": "blurhash", "enabled": False}, create_missing=True)
    assert b.accepting_version() == 2
    assert b.config.get("hash").enabled is False  # type: ignore[union-attr]
    defs.delete(s.engine, "postprocess", "hash")
    b.refresh(3)
    assert b.config.get("hash").enabled is True  # type: ignore[union-attr]
    # a stored definition that no longer passes is left out, the rest used
    defs.create(s.engine, "postprocess", "broken", {"name": "broken", "task": "nope"})
    b.refresh(4)
    assert b.config.get("broken") is None and b.config.get("extra") is not None
    s.close()
