"""Helpers for tests that call processors directly (no agent, no Kafka)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from agents.policy.rules import evaluate, make_vocabulary, parse_rule
from processors import registry
from processors.registry import TaskInput


def run(task: str, inp: TaskInput, params: dict[str, Any] | None = None) -> dict[str, Any]:
    proc = registry.get(task)
    return proc.run(inp, proc.parse_params(params))


def image_input(img: Image.Image, workdir: Path | None = None, **props: Any) -> TaskInput:
    props.setdefault("width", img.width)
    props.setdefault("height", img.height)
    return TaskInput(properties=props, image=img, workdir=workdir)


def rule_holds(task: str, phrase: str, result: dict[str, Any]) -> bool:
    """Parse ``phrase`` with the task's vocabulary and evaluate it on the task's result."""
    proc = registry.get(task)
    rule = parse_rule(phrase, make_vocabulary(proc.rule_properties))
    props = {name: rp.extract(result) for name, rp in proc.rule_properties.items()}
    return evaluate(rule, props)
