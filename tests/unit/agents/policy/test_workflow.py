"""The workflow graph (agents/policy/workflow.py): `after`/`when` checked at load with YAML line
numbers, planning with the upstream, decisions on the upstream's result."""

from __future__ import annotations

import pytest

from agents.policy.postprocess import ConfigError, PostProcessConfig, parse_config
from agents.policy.workflow import arrange, decide, dependents_of
from processors.registry import Processor, load_all


@pytest.fixture(scope="module")
def registry() -> dict[str, Processor]:
    return load_all()


def parse(text: str, registry: dict[str, Processor]) -> PostProcessConfig:
    return parse_config(text, "pp.yaml", registry)


def errors(text: str, registry: dict[str, Processor]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, registry)
    return str(info.value).splitlines()


GOOD = """\
postprocesses:
  - name: nsfw
    task: nsfw
    enabled: false
  - name: quarantine-nsfw
    task: quarantine
    after: nsfw
    when: "NSFW is larger than 0.7"
  - name: review
    task: add-tags
    after: quarantine-nsfw
    params: {tags: [review]}
  - name: blurhash
    task: blurhash
"""


def test_a_valid_graph_loads_with_its_condition(registry: dict[str, Processor]) -> None:
    config = parse(GOOD, registry)
    q = config.get("quarantine-nsfw")
    assert q is not None and q.after == "nsfw" and q.when is not None
    review = config.get("review")
    assert review is not None and review.after == "quarantine-nsfw" and review.when is None
    assert [p.name for p in dependents_of(config.postprocesses, "NSFW")] == ["quarantine-nsfw"]


def test_unknown_after_target_names_the_line_and_the_known_entries(
        registry: dict[str, Processor]) -> None:
    text = """\
postprocesses:
  - name: nsfw
    task: nsfw
  - name: q
    task: quarantine
    after: nsfww
"""
    (line,) = errors(text, registry)
    assert line.startswith("pp.yaml:6: postprocesses[1].after: unknown post-process 'nsfww'")
    assert "known: nsfw, q" in line


def test_a_cycle_of_two_names_both_entries_with_their_lines(
        registry: dict[str, Processor]) -> None:
    text = """\
postprocesses:
  - name: first
    task: quarantine
    after: second
  - name: second
    task: remove-original
    after: first
"""
    (line,) = errors(text, registry)
    assert line.startswith("pp.yaml:4: postprocesses[0].after: cycle in 'after':")
    assert "'first' (line 4) -> 'second' (line 7) -> 'first'" in line


def test_a_cycle_of_three_and_a_self_reference(registry: dict[str, Processor]) -> None:
    text = """\
postprocesses:
  - name: a
    task: blurhash
    after: c
  - name: b
    task: blurhash
    after: a
  - name: c
    task: blurhash
    after: b
  - name: lonely
    task: dominant-colors
    after: lonely
  - name: tail
    task: thumbnail
    after: b
"""
    lines = errors(text, registry)
    assert len(lines) == 2, lines  # one error per cycle; 'tail' hangs off one, not in it
    assert lines[0].startswith("pp.yaml:4: postprocesses[0].after: cycle")
    assert "'a' (line 4) -> 'c' (line 10) -> 'b' (line 7) -> 'a'" in lines[0]
    assert lines[1].startswith("pp.yaml:13: postprocesses[3].after: cycle")
    assert "'lonely' (line 13) -> 'lonely'" in lines[1]


def test_when_parse_errors_carry_their_line(registry: dict[str, Processor]) -> None:
    text = """\
postprocesses:
  - name: nsfw
    task: nsfw
  - name: q
    task: quarantine
    after: nsfw
    when: "NSFW is larger than banana"
  - name: r
    task: remove-original
    after: nsfw
    when:
      any:
        - "NSFW is larger than 0.9"
        - "number of faces is larger than 2"
  - name: s
    task: quarantine
    when: "width > 3"
  - name: t
    task: quarantine
    after: nsfw
    mode: sync
"""
    lines = errors(text, registry)
    assert lines[0].startswith("pp.yaml:7: postprocesses[1].when: value 'banana' is not a"
                               " number"), lines
    # the faces property is not nsfw's: unknown on that result, at its own line
    assert lines[1].startswith("pp.yaml:14: postprocesses[2].when.any[1]: unknown property")
    assert lines[2].startswith("pp.yaml:17: postprocesses[3].when: 'when' needs 'after'")
    assert lines[3].startswith("pp.yaml:21: postprocesses[4].mode: a post-process with"
                               " 'after' cannot be mode: sync")
    assert len(lines) == 4


def test_arrange_plans_dependents_only_with_their_upstream(
        registry: dict[str, Processor]) -> None:
    config = parse(GOOD, registry)
    pps = list(config.postprocesses)
    by = {p.name: p for p in pps}
    no_nsfw = [p for p in pps if p.name != "nsfw"]
    assert [p.name for p in arrange(no_nsfw)] == ["blurhash"]
    assert [p.name for p in arrange(pps)] == ["nsfw", "quarantine-nsfw", "review", "blurhash"]
    # a replay of nsfw alone re-plans its dependents (transitively), not the others
    assert [p.name for p in arrange(pps, {"nsfw"})] == ["nsfw", "quarantine-nsfw", "review"]
    # a replay naming a dependent (by name or task) replays its upstream chain with it
    assert [p.name for p in arrange(pps, {"add-tags"})] == ["nsfw", "quarantine-nsfw", "review"]
    assert [p.name for p in arrange(pps, {"blurhash"})] == ["blurhash"]
    assert [p.name for p in arrange([by["review"], by["quarantine-nsfw"], by["nsfw"]])] == [
        "review", "quarantine-nsfw", "nsfw"]


def test_decide_reads_the_upstream_rule_properties(registry: dict[str, Processor]) -> None:
    config = parse(GOOD, registry)
    nsfw, q = config.get("nsfw"), config.get("quarantine-nsfw")
    assert nsfw is not None and q is not None
    props = {"width": 10, "height": 10, "folder": "/"}
    (hit,) = decide(nsfw, [q], props, "ok", {"nsfw": 0.97})
    assert hit.run
    (miss,) = decide(nsfw, [q], props, "ok", {"nsfw": 0.01})
    assert not miss.run and "'nsfw is larger than 0.7'" in miss.reason.lower()
    (failed,) = decide(nsfw, [q], props, "error", None)
    assert not failed.run and "ended error" in failed.reason
    review = config.get("review")
    assert review is not None
    (always,) = decide(q, [review], props, "ok", {"action": "quarantine"})
    assert always.run  # no when: runs whenever the upstream ended ok


def test_the_default_file_still_loads() -> None:
    from agents.policy.postprocess import load_config
    from agents.settings import DEFAULT_POSTPROCESS_FILE

    load_config(DEFAULT_POSTPROCESS_FILE)


def test_filestacks_example_and_action_params(registry: dict[str, Processor]) -> None:
    text = """\
postprocesses:
  - name: video-sfw
    task: video-sfw
    enabled: false
  - name: drop-unsafe-video
    task: remove-original
    after: video-sfw
    when: "sfw is no"
  - name: bad-notify
    task: notify
    after: video-sfw
    params: {url: "ftp://x", event: "Bad Event"}
  - name: no-tags
    task: add-tags
    after: video-sfw
    params: {tags: []}
"""
    lines = errors(text, registry)
    assert lines[0].startswith("pp.yaml:12: postprocesses[2].params.url: 'ftp://x' is not an"
                               " http(s) URL"), lines
    assert lines[1].startswith("pp.yaml:12: postprocesses[2].params.event: invalid event name")
    assert lines[2].startswith("pp.yaml:16: postprocesses[3].params.tags:")
    good = parse(text.split("  - name: bad-notify")[0], registry)
    sfw, drop = good.get("video-sfw"), good.get("drop-unsafe-video")
    assert sfw is not None and drop is not None
    (unsafe,) = decide(sfw, [drop], {}, "ok", {"sfw": False})
    (safe,) = decide(sfw, [drop], {}, "ok", {"sfw": True})
    assert unsafe.run and not safe.run
