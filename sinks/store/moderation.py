"""Moderation: whether an asset waits for a person's review, separate from its processing status.

An upload asks for review with ``moderation`` (``manual``: every upload waits; the name of a
post-process: its ``moderate`` verdicts hold the asset, otherwise its ``ok`` result approves it),
and any post-process's validation rule with the action ``moderate`` holds it too. A reviewer's
decision (``approved`` / ``rejected``, who, when, a note) is appended to the asset's history; the
last decision wins over everything derived. The status is derived here, from the stored facts,
every time the asset's state is recomputed, so a replayed result or command cannot move it twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: the statuses a moderation can have (None: the asset is not moderated)
STATUSES = ("pending", "approved", "rejected")
#: what a reviewer can decide
DECISIONS = ("approved", "rejected")
MANUAL = "manual"

Row = Mapping[Any, Any]


def reasons_of(row: Row) -> list[str]:
    """The messages of a task row's ``moderate`` verdicts."""
    verdicts = json.loads(row.get("verdicts_json") or "[]")
    return [str(v.get("message", "")) for v in verdicts if v.get("action") == "moderate"]


def derive(kind: str | None, task_rows: Iterable[Row], history: Sequence[Mapping[str, Any]]
           ) -> str | None:
    """The moderation status from the asset's moderation kind, its visible task rows and the
    reviewers' decisions (see the module docstring)."""
    if history:
        return str(history[-1]["status"])
    rows = list(task_rows)
    if any(reasons_of(r) for r in rows):
        return "pending"
    if not kind:
        return None
    if kind == MANUAL:
        return "pending"
    decider = next((r for r in rows if r["postprocess"] == kind), None)
    if decider is not None and decider["status"] == "ok":
        return "approved"
    return "pending"  # the deciding post-process has not passed (yet): a person looks


def view(kind: str | None, status: str | None, task_rows: Iterable[Row],
         history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The asset JSON's ``moderation`` object (None when the asset is not moderated)."""
    if status is None:
        return None
    reasons = [m for r in task_rows for m in reasons_of(r)]
    decided = history[-1] if history else None
    if decided is not None:
        by, at, note = decided.get("by"), decided.get("at"), decided.get("note")
    elif status == "approved":
        by, at, note = f"postprocess:{kind}", None, None
    else:
        by = at = note = None
    return {"status": status, "kind": kind or "rule", "reasons": reasons, "decided_by": by,
            "decided_at": at, "note": note, "history": list(history)}


def entry(status: str, by: str, at: int, note: str, command_id: str) -> dict[str, Any]:
    """One decision in the history (``command_id`` makes applying it twice a no-op)."""
    return {"status": status, "by": by, "at": at, "note": note, "command_id": command_id}


def transition_problem(current: str | None, decision: str) -> str | None:
    """Why ``decision`` cannot follow ``current``, or None. Pending assets are decided, and
    any other one too (a take-down of an asset nobody held); an approved one can still be
    rejected; a rejection is final (its objects are deleted or set aside)."""
    if decision not in DECISIONS:
        return f"decision must be one of {', '.join(DECISIONS)}"
    if current == decision:
        return f"the asset is {current} already"
    if current == "rejected":
        return "the asset was rejected: a rejection is final"
    return None
