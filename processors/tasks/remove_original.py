"""``remove-original``: delete the asset's original object (an action task).

Filestack's workflow example: ``after: video-sfw``, ``when: "sfw is no"`` → remove the original.
The processor is pure and only states the action; the deletion is the declared ``effect``, done
by the sink after the ``ok`` result merged (the asset's ``uri`` becomes ``""``, derived objects
and the asset's record stay). Idempotent: a deleted original is not deleted twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from processors.registry import InputSpec, TaskInput, register


class RemoveOriginalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("removed by a workflow rule", min_length=1, max_length=500)


@register(
    "remove-original",
    version="1.0",
    media=("image", "video"),
    input=InputSpec(kind="header"),
    params=RemoveOriginalParams,
    effect="delete-original",
)
def remove_original(inp: TaskInput, params: RemoveOriginalParams) -> dict[str, Any]:
    """Delete the original object (done by the sink)."""
    return {"action": "remove-original", "reason": params.reason}
