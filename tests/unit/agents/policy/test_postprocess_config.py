"""The post-process YAML configuration (agents/postprocess.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from agents.policy.postprocess import (
    ConfigError,
    PostProcess,
    PostProcessConfig,
    Selection,
    Verdict,
    load_config,
    parse_config,
)
from agents.policy.rules import AnyOf, Condition
from agents.settings import DEFAULT_POSTPROCESS_FILE
from processors.registry import Processor, RuleProperty, TaskInput, load_all
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


class FacesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_size: int = Field(default=20, ge=1)


def _faces(inp: TaskInput, params: Any) -> dict[str, Any]:
    return {"count": 0, "boxes": []}


# A fake task with validation-rule properties, kept out of the global registry so no other test
# (or agent) ever sees it.
FACES = Processor(
    name="test-faces",
    version="1",
    run=_faces,
    params_model=FacesParams,
    rule_properties={
        "faces": RuleProperty("number", lambda r: r["count"], ("number of faces",)),
        "label": RuleProperty("string", lambda r: r["label"], ("face label",)),
    },
)


@pytest.fixture(scope="module")
def registry() -> dict[str, Processor]:
    return {**load_all(), "test-faces": FACES}


def parse(text: str, registry: dict[str, Processor]) -> PostProcessConfig:
    return parse_config(text, "pp.yaml", registry)


def errors_of(text: str, registry: dict[str, Processor]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, registry)
    return str(info.value)


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


# --------------------------------------------------------------------------------------------
# The shipped default
# --------------------------------------------------------------------------------------------


def test_default_file_loads_with_the_real_processors() -> None:
    cfg = load_config(DEFAULT_POSTPROCESS_FILE)
    by_name = {pp.name: pp for pp in cfg.postprocesses}
    automatic = {name for name, pp in by_name.items() if pp.enabled}
    assert automatic == {"validate-image", "blurhash", "dominant-colors", "thumbnail",
                         "validate-video"}
    assert {"nsfw", "ocr", "count-faces", "video-sfw", "transcode-hls"} <= set(by_name)
    assert by_name["validate-image"].mode == "sync"
    assert by_name["blurhash"].mode == "async"
    assert by_name["blurhash"].trigger == Condition(property="width", op="gt", value=16)
    assert {"validate-image", "blurhash", "dominant-colors"} <= cfg.tasks

    png = {"width": 640, "height": 480, "format": "PNG", "file_size": 1000, "folder": "/"}
    # (the config selects by rules; the router then drops tasks of the wrong media kind)
    assert [pp.name for pp in cfg.select(png).selected] == [
        "validate-image",
        "blurhash",
        "dominant-colors",
        "thumbnail",
        "validate-video",
    ]
    tiny_video = {"width": 8, "height": 8, "format": "MP4", "duration": 3.0}
    assert [pp.name for pp in cfg.select(tiny_video).selected] == [
        "dominant-colors", "thumbnail", "validate-video"]

    vi = by_name["validate-image"]
    result = {"width": 150, "height": 100, "format": "JPEG", "file_size": 10}
    verdicts = cfg.validate_result(vi, {**png, "width": 150}, result)
    assert [(v.action, v.rule) for v in verdicts] == [("notice", "width is smaller than 200")]
    assert cfg.validate_result(vi, png, {**result, "width": 640}) == []


def test_commented_examples_in_the_default_file_are_valid(registry: dict[str, Processor]) -> None:
    text = DEFAULT_POSTPROCESS_FILE.read_text()
    head, body = text.split("\npostprocesses:", 1)
    body = re.sub(
        r"^(\s*)# (- |  )", r"\1\2", body.replace("# Examples (uncomment", "#"), flags=re.M
    )
    cfg = parse(head + "\npostprocesses:" + body, registry)
    manual = cfg.get("palette-large")
    assert manual is not None and not manual.enabled
    assert len(cfg.get("validate-image").validation) == 3  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------

SELECT_YAML = """
postprocesses:
  - name: thumb-hash
    task: blurhash
    params: {x_components: 4, y_components: 3}
    trigger: "width is larger than 32"
  - task: dominant-colors
  - name: big-palette
    task: dominant-colors
    enabled: false
    params: {count: 12}
  - name: user-faces
    task: test-faces
    enabled: false
    mode: sync
    trigger: "folder path starts with '/users'"
"""


@pytest.fixture(scope="module")
def select_cfg(registry: dict[str, Processor]) -> PostProcessConfig:
    return parse(SELECT_YAML, registry)


def names(sel: Selection) -> list[str]:
    return [pp.name for pp in sel.selected]


def test_automatic_selection_follows_triggers(select_cfg: PostProcessConfig) -> None:
    assert names(select_cfg.select({"width": 100})) == ["thumb-hash", "dominant-colors"]
    assert names(select_cfg.select({"width": 10})) == ["dominant-colors"]
    # a missing property makes the trigger false
    assert names(select_cfg.select({})) == ["dominant-colors"]
    assert select_cfg.get("thumb-hash") is not None
    assert select_cfg.get("THUMB-HASH") is select_cfg.get("thumb-hash")
    assert select_cfg.get("nope") is None


def test_manual_selection_by_name_and_by_task(select_cfg: PostProcessConfig) -> None:
    props = {"width": 100, "folder": "/users/42"}
    assert names(select_cfg.select(props, ["big-palette"])) == [
        "thumb-hash",
        "dominant-colors",
        "big-palette",
    ]
    # By task: every post-process of that task, each once, config order.
    assert names(select_cfg.select(props, ["test-faces", "user-faces"])) == [
        "thumb-hash",
        "dominant-colors",
        "user-faces",
    ]
    assert names(select_cfg.select({"width": 1}, ["dominant-colors"])) == [
        "dominant-colors",
        "big-palette",
    ]
    # Comma-separated items and any case are accepted.
    assert names(select_cfg.select(props, [" Big-Palette,user-faces "]))[-2:] == [
        "big-palette",
        "user-faces",
    ]


def test_unknown_requested_names_are_reported(select_cfg: PostProcessConfig) -> None:
    sel = select_cfg.select({"width": 100}, ["no-such-task", "big-palette", "x", "x"])
    assert sel.unknown == ["no-such-task", "x"]
    assert "big-palette" in names(sel)


def test_a_registered_task_without_an_entry_runs_by_its_name(
        select_cfg: PostProcessConfig) -> None:
    """No YAML entry names remove-background: asked for, it runs as a manual-only post-process
    of its own name with its default parameters (and never unasked)."""
    sel = select_cfg.select({"width": 100}, ["Remove-Background", "big-palette"])
    assert sel.unknown == []
    assert names(sel) == ["thumb-hash", "dominant-colors", "big-palette", "remove-background"]
    pp = sel.selected[-1]
    assert (pp.task, pp.enabled, pp.mode, pp.params, pp.trigger) == (
        "remove-background", False, "async", {}, None)
    assert pp.processor.name == "remove-background"
    assert pp.parsed_params == pp.processor.params_model()
    assert "remove-background" not in names(select_cfg.select({"width": 100}))
    assert "remove-background" not in {p.name for p in select_cfg.postprocesses}
    assert select_cfg.get("remove-background") is pp
    # a task some entry names (blurhash, by task) gets no second, implicit post-process
    assert names(select_cfg.select({"width": 100}, ["blurhash"])) == [
        "thumb-hash", "dominant-colors"]
    assert "blurhash" not in {p.name for p in select_cfg.implicit}
    assert "test-faces" not in {p.name for p in select_cfg.implicit}


def test_a_task_with_required_params_needs_an_entry() -> None:
    class Required(BaseModel):
        level: int

    proc = Processor(name="needs-level", version="1", run=_faces, params_model=Required)
    cfg = parse_config("postprocesses: []\n", "pp.yaml", {"needs-level": proc})
    assert cfg.registered == ()
    assert cfg.select({}, ["needs-level"]).unknown == ["needs-level"]


def test_trigger_rules_apply_to_manual_requests(select_cfg: PostProcessConfig) -> None:
    sel = select_cfg.select({"width": 100, "folder": "/public"}, ["user-faces"])
    assert "user-faces" not in names(sel)
    assert [pp.name for pp in sel.skipped] == ["user-faces"]
    assert sel.unknown == []
    # an automatic one whose trigger fails is not "skipped": nobody asked for it
    assert select_cfg.select({"width": 1}, ["big-palette"]).skipped == []


def test_selection_without_requests_is_cheap(select_cfg: PostProcessConfig) -> None:
    import time

    props = {"width": 100, "folder": "/users/1", "format": "JPEG"}
    n = 5_000
    t0 = time.perf_counter()
    for _ in range(n):
        select_cfg.select(props, ())
    per = (time.perf_counter() - t0) / n
    # ~2 us on a laptop-class CPU; the bound leaves room for slow, shared CI machines.
    assert per < 25e-6, f"{per * 1e6:.1f} us per select"


def test_copies_keep_working(select_cfg: PostProcessConfig) -> None:
    # model_copy() skips model_post_init: the compiled caches are rebuilt on first use.
    copy = select_cfg.model_copy()
    assert copy == select_cfg
    assert names(copy.select({"width": 100})) == ["thumb-hash", "dominant-colors"]
    pp = select_cfg.postprocesses[0].model_copy()
    assert pp.triggered({"width": 100}) and not pp.triggered({"width": 1})


# --------------------------------------------------------------------------------------------
# Validation verdicts
# --------------------------------------------------------------------------------------------

VALIDATION_YAML = """
postprocesses:
  - name: faces
    task: test-faces
    mode: sync
    params: {min_size: 10}
    validation:
      - rule: "number of faces is smaller than 1"
        action: refuse
        message: "no face found"
      - "Number of faces is larger than 5 => Notice"
      - rule:
          any:
            - "image width (px) is smaller than 500"
            - {property: face label, op: starts with, value: "unknown"}
        action: notice
"""


def test_validation_verdicts(registry: dict[str, Processor]) -> None:
    cfg = parse(VALIDATION_YAML, registry)
    pp = cfg.postprocesses[0]
    assert pp.parsed_params == FacesParams(min_size=10)
    props = {"width": 1000, "format": "JPEG"}

    assert cfg.validate_result(pp, props, {"count": 0, "label": "bob"}) == [
        Verdict(
            action="refuse",
            message="no face found",
            rule="number of faces is smaller than 1",
            postprocess="faces",
            task="test-faces",
        )
    ]
    [notice] = cfg.validate_result(pp, props, {"count": 9, "label": "bob"})
    assert notice.action == "notice"
    assert notice.message == "number of faces is larger than 5"
    assert cfg.validate_result(pp, props, {"count": 2, "label": "bob"}) == []

    [why] = cfg.validate_result(pp, {**props, "width": 100}, {"count": 2, "label": "x"})
    assert why.message == "width is smaller than 500"  # the member that held
    assert why.rule == "width is smaller than 500 or face label starts with 'unknown'"
    [why] = cfg.validate_result(pp, props, {"count": 2, "label": "Unknown person"})
    assert why.message == "face label starts with 'unknown'"


def test_failed_extraction_means_missing_property(registry: dict[str, Processor]) -> None:
    cfg = parse(VALIDATION_YAML, registry)
    pp = cfg.postprocesses[0]
    # no "count" in the result: "faces" is missing, so neither faces rule holds
    assert cfg.validate_result(pp, {"width": 1000}, {}) == []
    assert "faces" not in pp.rule_props({"faces": 3}, {})


def test_validate_image_rule_properties_come_from_its_result() -> None:
    text = """
postprocesses:
  - task: validate-image
    mode: sync
    validation:
      - "Image width (px) is smaller than 500 => notice"
      - "file size (B) is larger than 100 => refuse"
      - "upload folder path starts with '/tmp' => notice"
"""
    cfg = parse_config(text, "vi.yaml")  # default registry: load_all()
    pp = cfg.postprocesses[0]
    result = {"width": 400, "height": 300, "format": "PNG", "file_size": 50, "folder": "/tmp/x"}
    verdicts = cfg.validate_result(pp, {}, result)
    assert [v.rule for v in verdicts] == [
        "width is smaller than 500",
        "folder path starts with '/tmp'",
    ]
    # A directly built PostProcess finds its processor through the registry.
    direct = PostProcess(name="v", task="validate-image", mode="sync", validation=pp.validation)
    assert direct.validate_result({}, result) == verdicts[:0] + [
        v.model_copy(update={"postprocess": "v"}) for v in verdicts
    ]


def test_direct_models_round_trip() -> None:
    pp = PostProcess(
        name="x",
        task="blurhash",
        trigger=AnyOf(any=[Condition(property="width", op="gt", value=3)]),
    )
    again = PostProcess.model_validate(pp.model_dump())
    assert again == pp
    assert again.triggered({"width": 4}) and not again.triggered({"width": 2})
    cfg = PostProcessConfig(postprocesses=(pp,))
    assert names(cfg.select({"width": 4})) == ["x"]


# --------------------------------------------------------------------------------------------
# Errors: file, line, field path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle", "path", "message"),
    [
        (
            "postprocesses:\n  - task: blurhash\n  - task: blurhsh\n",
            "blurhsh",
            "postprocesses[1].task",
            "unknown task 'blurhsh'; known: ",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigger: widht < 5\n",
            "widht",
            "postprocesses[0].trigger",
            "unknown property 'widht' in 'widht < 5'; known: width, height",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigger:\n      - width > 3\n"
            "      - {property: width, op: bigger, value: 5}\n",
            "bigger",
            "postprocesses[0].trigger[1].op",
            "unknown operator 'bigger'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigger: width about 5\n",
            "about",
            "postprocesses[0].trigger",
            "unknown operator at 'about 5'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigger:\n      any:\n"
            "        - format is png\n        - width is larger than wide\n",
            "wide",
            "postprocesses[0].trigger.any[1]",
            "value 'wide' is not a number for 'width'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    params:\n      x_components: 4\n"
            "      y_components: 12\n",
            "y_components",
            "postprocesses[0].params.y_components",
            "less than or equal to 9",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    params: {x_components: 4, colour: red}\n",
            "colour",
            "postprocesses[0].params.colour",
            "unknown key 'colour'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n  - task: dominant-colors\n  - task: blurhash\n",
            "- task: blurhash\n",  # the first line with it; see below for the second
            "",
            "",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    mode: fast\n",
            "fast",
            "postprocesses[0].mode",
            "Input should be 'async' or 'sync'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigers: width > 5\n",
            "trigers",
            "postprocesses[0].trigers",
            "unknown key 'trigers'; known: name, task, enabled, mode, params, trigger, "
            "validation, after, when (did you mean 'trigger'?)",
        ),
        (
            "postprocesses:\n  - name: x\n    enabled: true\n",
            "name: x",
            "postprocesses[0].task",
            "required key is missing",
        ),
        (
            "postprocesses:\n  - task: test-faces\n    validation:\n"
            "      - rule: number of faces < 1\n        action: refuse\n",
            "action: refuse",
            "postprocesses[0].validation[0].action",
            "action 'refuse' needs mode: sync",
        ),
        (
            "postprocesses:\n  - task: test-faces\n    validation:\n"
            "      - rule: number of faces < 1\n        action: reject\n",
            "reject",
            "postprocesses[0].validation[0].action",
            "Input should be 'refuse', 'notice' or 'moderate'",
        ),
        (
            "postprocesses:\n  - task: test-faces\n    validation:\n      - faces < 1\n",
            "faces < 1",
            "postprocesses[0].validation[0]",
            "'<rule> => refuse|notice|moderate'",
        ),
        (
            "postprocesses:\n  - task: test-faces\n    validation:\n      - rule:\n"
            "        action: notice\n",
            "rule:",
            "postprocesses[0].validation[0].rule",
            "a validation rule cannot be empty",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    validation:\n"
            "      - number of faces < 1 => notice\n",
            "number of faces",
            "postprocesses[0].validation[0]",
            "unknown property 'number of faces'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    name: 'my hash'\n",
            "my hash",
            "postprocesses[0].name",
            "invalid name 'my hash'",
        ),
        (
            "postprocesses:\n  - task: blurhash\n    trigger: width > 5\n    trigger: width > 6\n",
            "width > 6",
            "postprocesses[0].trigger",
            "duplicate key 'trigger' (first at line 3)",
        ),
        ("postprocess:\n  - task: blurhash\n", "postprocess:", "postprocess", "unknown key"),
        ("- task: blurhash\n", "task", "", "the top level must be a mapping"),
        ("postprocesses:\n  - blurhash\n", "- blurhash", "postprocesses[0]", "must be a mapping"),
    ],
)
def test_error_lines(
    registry: dict[str, Processor], text: str, needle: str, path: str, message: str
) -> None:
    err = errors_of(text, registry)
    if not path:
        if "top level" in message:
            assert err == f"pp.yaml:1: {message} with a 'postprocesses' list"
            return
        # duplicate names: reported at the second one, naming the first
        assert err == (
            "pp.yaml:4: postprocesses[2].task: duplicate post-process name 'blurhash'"
            " (first at line 2); give each a distinct 'name'"
        )
        return
    line = line_of(text, needle)
    prefix = f"pp.yaml:{line}: {path}: "
    matching = [e for e in err.splitlines() if e.startswith(prefix)]
    assert matching, err
    assert message in matching[0], err


def test_duplicate_names_are_case_insensitive_and_named(registry: dict[str, Processor]) -> None:
    text = (
        "postprocesses:\n  - name: Hash\n    task: blurhash\n  - name: hash\n    task: blurhash\n"
    )
    assert "pp.yaml:4: postprocesses[1].name: duplicate post-process name 'hash'" in errors_of(
        text, registry
    )
    # distinct names for the same task are fine
    ok = text.replace("name: hash", "name: hash-2")
    assert [pp.name for pp in parse(ok, registry).postprocesses] == ["Hash", "hash-2"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("postprocesses:\n  - task: [blurhash\n  - task: x\n", 3, "expected ',' or ']'"),
        ("postprocesses:\n  - task: blurhash\n   trigger: x\n", 3, "YAML syntax error"),
        ("postprocesses:\n\t- task: x\n", 2, "YAML syntax error"),
        ("postprocesses: [\n", 2, "YAML syntax error"),
    ],
)
def test_yaml_syntax_errors(
    registry: dict[str, Processor], text: str, line: int, message: str
) -> None:
    err = errors_of(text, registry)
    assert err.startswith(f"pp.yaml:{line}: YAML syntax error: "), err
    assert message in err


def test_all_errors_are_collected_with_lines() -> None:
    path = FIXTURES / "pp_errors.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    got = [(i.line, i.path) for i in err.issues]
    assert got == [
        (4, "postprocesses[0].trigger"),
        (5, "postprocesses[1].task"),
        (8, "postprocesses[2].params.count"),
        (12, "postprocesses[2].trigger.any[1]"),
        (17, "postprocesses[3].validation[0].rule"),
        (19, "postprocesses[3].validation[1].rule.op"),
        (21, "postprocesses[3].colour"),
        (22, "postprocesses[4].name"),
    ]
    lines = str(err).splitlines()
    assert len(lines) == len(got)
    assert all(line.startswith(f"{path}:") for line in lines)
    assert lines[0].startswith(f"{path}:4: postprocesses[0].trigger: unknown property 'widht'")
    assert isinstance(err, ValueError)


def test_empty_and_unreadable_files(tmp_path: Path, registry: dict[str, Processor]) -> None:
    assert parse("", registry).postprocesses == ()
    assert parse("postprocesses:\n", registry).postprocesses == ()
    assert parse("# nothing\npostprocesses: []\n", registry).postprocesses == ()
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(missing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)


def test_registry_import_failure_is_loud(monkeypatch: pytest.MonkeyPatch) -> None:
    import processors

    # no registry state to reset: load_all() imports the modules on every call
    monkeypatch.setattr(processors, "BUILTIN_MODULES", ["processors.does_not_exist"])
    with pytest.raises(ImportError, match=r"cannot check x\.yaml: loading the task registry"):
        parse_config("postprocesses: []\n", "x.yaml")
