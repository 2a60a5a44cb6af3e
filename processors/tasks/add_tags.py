"""``add-tags``: add configured tags to the asset (an action task).

``params: {tags: [nsfw, review]}``; the tags are merged after the asset's own, each once (the
task declares ``tags="tags"``: the sink merges them with the result). Typically ``after`` an
analysis ``when`` its result says so.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.registry import InputSpec, TaskInput, register


class AddTagsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(min_length=1, max_length=100)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            t = t.strip()
            if not t or len(t) > 256 or any(ord(c) < 32 for c in t):
                raise ValueError(f"invalid tag {t!r}: 1-256 characters, no control characters")
            out.append(t)
        return list(dict.fromkeys(out))


@register(
    "add-tags",
    version="1.0",
    media=("image", "video"),
    input=InputSpec(kind="header"),
    params=AddTagsParams,
    tags="tags",
)
def add_tags(inp: TaskInput, params: AddTagsParams) -> dict[str, Any]:
    """Add the configured tags to the asset."""
    return {"tags": list(params.tags)}
