"""Upload presets: ``upload_preset=<name>`` on an upload selects a named set of post-processes
and defaults of the upload's fields, as Cloudinary's upload presets do.

A preset is stored over ``/v1/presets`` (:mod:`sinks.store.definitions`, kind ``preset``; its
shape and checks: :class:`agents.policy.definitions.Preset`). :func:`apply_preset` resolves it
when the upload is accepted (the API before it decides whether to wait for sync results, ingest
for the command line), reading the database, so a preset written on any API replica applies to
the next upload on every replica. What the upload itself sets wins: ``folder``, ``mode``,
``notification_url`` and ``on_success`` come from the preset only when the upload gives none;
``tags`` and ``postprocess`` are the preset's followed by the upload's (each once), ``context``
the preset's updated with the upload's.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from agents.ingest import IngestUnavailable, InvalidUpload, UploadFields
from agents.policy.definitions import Preset

if TYPE_CHECKING:
    from agents.composition import Runtime


def _union(first: list[str], then: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in (*first, *then):
        if item.casefold() not in seen:
            seen.add(item.casefold())
            out.append(item)
    return out


def find_preset(root: Runtime, name: str) -> Preset:
    """Blocking: the stored preset ``name`` (:class:`InvalidUpload` naming the known ones when
    there is none)."""
    from sinks.store import definitions as store

    try:
        found = store.get(root.store.engine, "preset", name)
        known = [] if found is not None else [
            p.name for p in store.list_all(root.store.engine, "preset")]
    except Exception as exc:
        raise IngestUnavailable("the upload presets cannot be read") from exc
    if found is None:
        raise InvalidUpload(f"unknown upload_preset {name!r}; known: "
                            f"{', '.join(sorted(known, key=str.casefold)) or '(none)'}")
    return Preset.model_validate(found.body)


def apply_preset(root: Runtime, fields: UploadFields) -> UploadFields:
    """``fields`` with the preset it names applied (see the module docstring); the copy names
    no preset, so applying again changes nothing."""
    if not fields.upload_preset:
        return fields
    p = find_preset(root, fields.upload_preset)
    given = fields.given or {
        name for name, default in (("folder", "/"), ("mode", "async"),
                                   ("notification_url", None), ("on_success", None))
        if getattr(fields, name) != default}
    changes: dict[str, object] = {
        "upload_preset": None,
        "postprocess": _union(p.postprocesses, fields.postprocess),
        "tags": _union(p.tags, fields.tags),
        "context": {**p.context, **fields.context},
    }
    if p.folder is not None and "folder" not in given:
        changes["folder"] = p.folder
    if p.mode is not None and "mode" not in given:
        changes["mode"] = p.mode
    if p.notification_url is not None and "notification_url" not in given:
        changes["notification_url"] = p.notification_url
    if p.on_success is not None and "on_success" not in given:
        changes["on_success"] = p.on_success
    return dataclasses.replace(fields, **changes)  # type: ignore[arg-type]
