"""Object storage as the agents see it: put originals, resolve a URI to a local file.

The embedded default is a local folder (``<data_dir>/objects``). Key layout:
``originals/<folder>/<asset_id>/<filename>`` for uploads and ``derived/<asset_id>/<task>/<name>``
for task outputs. ``file://`` URIs are only read inside the storage root and the extra roots
named in ``DARKROOM_FILE_ROOTS`` (a path-traversal guard: an event cannot make a worker read
/etc/passwd).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlparse

from processors.registry import ProcessorError


class StorageError(ProcessorError):
    """The object cannot be read: a permanent error unless marked transient."""


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def normalize_folder(folder: str) -> str:
    """'/users//42/' -> '/users/42'; refuses '..', control characters and backslashes."""
    if _UNSAFE.search(folder) or "\\" in folder:
        raise ValueError(f"folder {folder!r} contains control characters or backslashes")
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"folder {folder!r} must not contain '..'")
    return "/" + "/".join(parts)


def safe_filename(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    base = _UNSAFE.sub("", base).strip()
    if base in ("", ".", ".."):
        return "file"
    return base[:200]


class LocalStorage:
    def __init__(self, root: Path, extra_roots: Sequence[Path] = ()) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.roots = [self.root, *(Path(r).resolve() for r in extra_roots)]

    def original_key(self, asset_id: str, folder: str, filename: str) -> str:
        folder_part = normalize_folder(folder).strip("/")
        parts = ["originals", *([folder_part] if folder_part else []), asset_id,
                 safe_filename(filename)]
        return "/".join(parts)

    def _path_for_key(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    def put_file(self, src: Path, key: str) -> str:
        """Copy ``src`` under ``key`` atomically (temp file + rename); return its file:// URI."""
        dest = self._path_for_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self.uri_for(dest)

    def put_bytes(self, data: bytes, key: str) -> str:
        dest = self._path_for_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self.uri_for(dest)

    @staticmethod
    def uri_for(path: Path) -> str:
        return "file://" + quote(str(path.resolve()))

    def local_path(self, uri: str) -> Path:
        """Resolve a file:// URI to a path inside an allowed root, or raise StorageError."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}")
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI with a remote host is not allowed: {uri!r}")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(r) for r in self.roots):
            raise StorageError(f"{uri!r} is outside the allowed storage roots")
        if not path.is_file():
            raise StorageError(f"object not found: {uri}")
        return path

    def size(self, uri: str) -> int:
        return self.local_path(uri).stat().st_size
