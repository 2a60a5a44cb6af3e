"""Object storage: the key layout, the errors and the interface every backend offers (put
objects, resolve a URI to bytes or a local file).

Two backends implement :class:`ObjectStorage`:

* :class:`LocalStorage` -- a folder (``<data_dir>/objects``), ``file://`` URIs;
* :class:`sinks.objects.s3.S3Storage` -- an S3 bucket through the ``minio`` client,
  ``s3://<bucket>/<key>`` URIs (the key percent-encoded, like the path of a file:// URI).

:class:`Storage` is the facade the agents hold: writes go to its ``default`` backend and every
URI-taking call goes to the backend of the URI's scheme, so file:// URIs named by producers keep
working when the default is S3. :func:`build_storage` makes one from the settings.

Key layout (one place, :func:`original_key` / :func:`derived_key` / :func:`quarantine_key`):
``originals/<folder>/<asset_id>/<filename>`` for uploads,
``derived/<asset_id>/<postprocess>/<name>`` for task outputs and ``quarantine/<original key>``
for objects set aside. Keys never contain ``..``, empty segments, backslashes or control
characters.

``file://`` URIs are only read inside the storage root and the extra roots named in
``DARKROOM_FILE_ROOTS`` (a path-traversal guard: an event cannot make a worker read
/etc/passwd); deletes and moves only happen inside the storage root (extra roots are read-only).

Errors are :class:`StorageError` (a :class:`ProcessorError`): ``permanent=True`` for a missing
object, a forbidden or outside-the-roots URI, a bad key; ``permanent=False`` for an unreachable
endpoint or a timeout, so the agents retry those.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from processors.registry import ProcessorError

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class StorageError(ProcessorError):
    """The object cannot be read or written: permanent unless ``permanent=False`` (transient)."""


class ObjectNotFoundError(StorageError):
    """The URI names no object (always permanent)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"object not found: {uri}", permanent=True)
        self.uri = uri


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


# --- keys: the one place that knows the layout ------------------------------------------------

MAX_KEY_LENGTH = 1024  # S3's limit, in UTF-8 bytes


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise StorageError (permanent).

    Refused: empty, leading '/', empty / '.' / '..' segments, backslashes, control characters,
    more than 1024 UTF-8 bytes.
    """
    if not key or key.startswith("/") or "\\" in key or _UNSAFE.search(key):
        raise StorageError(f"invalid object key {key!r}")
    if any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise StorageError(f"object key longer than {MAX_KEY_LENGTH} bytes: {key[:80]!r}...")
    return key


def _segment(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\\" in value or _UNSAFE.search(value):
        raise StorageError(f"invalid {what} {value!r} for an object key")
    return value


def original_key(asset_id: str, folder: str, filename: str) -> str:
    """``originals/<folder without leading slash>/<asset_id>/<safe filename>``."""
    try:
        folder_part = normalize_folder(folder).strip("/")
    except ValueError as exc:
        raise StorageError(str(exc)) from exc
    parts = ["originals", *([folder_part] if folder_part else []),
             _segment(asset_id, "asset id"), safe_filename(filename)]
    return validate_key("/".join(parts))


def derived_key(asset_id: str, postprocess: str, name: str) -> str:
    """``derived/<asset_id>/<postprocess>/<name>``; ``name`` may be a relative path of safe
    segments (an HLS rendition's ``720p/seg_001.ts``)."""
    # no sanitising here: validate_key refuses '..', backslashes and control characters outright
    return validate_key("/".join(["derived", _segment(asset_id, "asset id"),
                                  _segment(postprocess, "postprocess name"), name]))


QUARANTINE_PREFIX = "quarantine/"


def quarantine_key(key: str) -> str:
    """``quarantine/<key>`` (a key already under quarantine/ is returned unchanged)."""
    validate_key(key)
    return key if key.startswith(QUARANTINE_PREFIX) else QUARANTINE_PREFIX + key


# --- the interface ----------------------------------------------------------------------------


@runtime_checkable
class ObjectStorage(Protocol):
    """What every backend (and the :class:`Storage` facade) offers. All calls block."""

    def put_file(self, src: Path, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Store a copy of ``src`` under ``key`` atomically; return the object's URI."""
        ...

    def put_bytes(self, data: bytes, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        ...

    def delete(self, uri: str) -> None:
        """Remove the object; a missing object is fine."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the key prefix ``prefix``; returns how many."""
        ...

    def move(self, uri: str, key: str) -> str:
        """Rename the object to ``key`` (same backend); return the new URI."""
        ...

    def exists(self, uri: str) -> bool: ...

    def size(self, uri: str) -> int: ...

    def read_bytes(self, uri: str) -> bytes: ...

    def local_path(self, uri: str) -> Path:
        """A local file holding the object's bytes (do not modify it)."""
        ...

    def key_of(self, uri: str) -> str:
        """The object's key inside its backend."""
        ...

    def original_key(self, asset_id: str, folder: str, filename: str) -> str: ...

    def derived_key(self, asset_id: str, postprocess: str, name: str) -> str: ...

    def quarantine_key(self, key_or_uri: str) -> str: ...


class _KeyHelpers:
    """The key helpers as methods (they delegate to the module-level functions)."""

    def key_of(self, uri: str) -> str:
        raise NotImplementedError

    def original_key(self, asset_id: str, folder: str, filename: str) -> str:
        return original_key(asset_id, folder, filename)

    def derived_key(self, asset_id: str, postprocess: str, name: str) -> str:
        return derived_key(asset_id, postprocess, name)

    def quarantine_key(self, key_or_uri: str) -> str:
        key = self.key_of(key_or_uri) if "://" in key_or_uri else key_or_uri
        return quarantine_key(key)



def scheme_of(uri: str) -> str:
    return urlparse(uri).scheme.lower()

