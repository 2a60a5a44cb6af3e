"""``quarantine``: move the asset's original under ``quarantine/`` (an action task).

Meant to run ``after`` an analysis ``when`` its result says so (``after: nsfw``, ``when: "NSFW
is larger than 0.7"``; see "Workflow logic" in the README). The processor is pure: it only
states the action and its reason; the move is the declared ``effect``, done by the sink after the
``ok`` result merged (the object renamed to ``quarantine/<key>``, the asset's ``uri`` updated, a
notice added). Idempotent: an object already under ``quarantine/`` stays where it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from processors.registry import InputSpec, TaskInput, register


class QuarantineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("quarantined by a workflow rule", min_length=1, max_length=500)


@register(
    "quarantine",
    version="1.0",
    media=("image", "video"),
    input=InputSpec(kind="header"),
    params=QuarantineParams,
    effect="quarantine-original",
)
def quarantine(inp: TaskInput, params: QuarantineParams) -> dict[str, Any]:
    """Move the original under quarantine/ (done by the sink)."""
    return {"action": "quarantine", "reason": params.reason}
