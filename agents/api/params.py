"""Query parameters that several routes read the same way."""

from __future__ import annotations

from fastapi import HTTPException

from agents.policy import limits
from sinks.objects.base import normalize_folder


def folder_query(folder: str | None) -> str | None:
    """A ``folder`` filter, normalised (``/a/b``); 400 naming the limit it breaks."""
    if folder is None:
        return None
    try:
        return normalize_folder(limits.folder(folder))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
