"""Logging: plain or JSON lines (``DARKROOM_LOG_JSON=true``), each with the asset id and task the
line is about (set by the agents in a context variable that follows work into worker threads)."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

CURRENT: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "darkroom_log_context", default=("-", "-"))


def bind(asset_id: str | None, task: str | None) -> contextvars.Token[tuple[str, str]]:
    return CURRENT.set((asset_id or "-", task or "-"))


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap ``fn`` to run in a copy of the current context (executor threads do not inherit
    context variables on their own)."""
    ctx = contextvars.copy_context()
    return lambda *a: ctx.run(fn, *a)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        asset_id, task = CURRENT.get()
        if not hasattr(record, "asset_id"):
            record.asset_id = asset_id
        if not hasattr(record, "task"):
            record.task = task
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "asset_id": getattr(record, "asset_id", "-"),
            "task": getattr(record, "task", "-"),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup(level: str, as_json: bool) -> None:
    lvl = logging.WARNING if level == "warn" else getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(asset_id)s %(task)s] %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
