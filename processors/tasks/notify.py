"""``notify``: send a signed webhook about the asset to a configured URL (an action task).

``params: {url: https://hooks.example.com/review, event: asset.flagged}``. The processor is pure:
it checks nothing but its parameters and returns the target; the delivery is the declared
``effect``: the sink records it in the webhook outbox (one delivery per asset, post-process and
URL: a duplicate or replayed result never sends a second one) and the webhook agents deliver it
like every other webhook — signed with ``DARKROOM_WEBHOOK_SECRET``, retried from Kafka, and
checked by the outgoing-URL SSRF guard (``DARKROOM_WEBHOOK_ALLOW``) before each attempt. The
payload is the asset's state when the result landed, with ``event`` as its event name.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.registry import InputSpec, TaskInput, register

EVENT_RE = re.compile(r"^[a-z][a-z0-9._-]{0,39}$")


class NotifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    event: str = "asset.workflow"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if any(ord(c) < 33 or ord(c) == 127 for c in v):
            raise ValueError("the url may not contain spaces or control characters")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL with a host")
        return v

    @field_validator("event")
    @classmethod
    def _event(cls, v: str) -> str:
        if not EVENT_RE.match(v):
            raise ValueError(f"invalid event name {v!r}: lower-case letters, digits, '.', '_',"
                             " '-', at most 40 characters, starting with a letter")
        return v


@register(
    "notify",
    version="1.0",
    media=("image", "video"),
    input=InputSpec(kind="header"),
    params=NotifyParams,
    effect="webhook",
)
def notify(inp: TaskInput, params: NotifyParams) -> dict[str, Any]:
    """Send a signed webhook to the configured URL (queued by the sink)."""
    return {"action": "notify", "url": params.url, "event": params.event}
