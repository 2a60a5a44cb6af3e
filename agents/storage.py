"""Object storage as the agents see it: put objects, resolve a URI to bytes or a local file.

Two backends implement :class:`ObjectStorage`:

* :class:`LocalStorage` -- a folder (``<data_dir>/objects``), ``file://`` URIs;
* :class:`agents.s3storage.S3Storage` -- an S3 bucket through the ``minio`` client,
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

import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlparse

from processors.registry import ProcessorError

if TYPE_CHECKING:
    from agents.s3storage import S3Storage

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


# --- local folder -----------------------------------------------------------------------------


class LocalStorage(_KeyHelpers):
    """Objects as files under ``root``; ``file://`` URIs (percent-encoded absolute paths)."""

    scheme = "file"

    def __init__(self, root: Path, extra_roots: Sequence[Path] = ()) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.roots = [self.root, *(Path(r).resolve() for r in extra_roots)]

    def _path_for_key(self, key: str) -> Path:
        validate_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    @staticmethod
    def uri_for(path: Path) -> str:
        return "file://" + quote(str(Path(path).resolve()))

    def uri_for_key(self, key: str) -> str:
        return self.uri_for(self._path_for_key(key))

    def _resolve(self, uri: str) -> Path:
        """The path a file:// URI names, checked against the allowed roots (may not exist)."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}")
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI with a remote host is not allowed: {uri!r}")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(r) for r in self.roots):
            raise StorageError(f"{uri!r} is outside the allowed storage roots")
        return path

    def _writable(self, uri: str) -> Path:
        path = self._resolve(uri)
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"{uri!r} is outside the storage root (extra roots are read-only)")
        return path

    def _write_atomic(self, dest: Path, fill: Callable[[Path], object]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            fill(tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc}", permanent=False) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, src: Path, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Copy ``src`` under ``key`` atomically (temp file + rename); return its file:// URI."""
        dest = self._path_for_key(key)
        if not Path(src).is_file():
            raise StorageError(f"source file not found: {src}")
        self._write_atomic(dest, lambda tmp: shutil.copyfile(src, tmp))
        return self.uri_for(dest)

    def put_bytes(self, data: bytes, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        dest = self._path_for_key(key)
        self._write_atomic(dest, lambda tmp: tmp.write_bytes(data))
        return self.uri_for(dest)

    def delete(self, uri: str) -> None:
        path = self._writable(uri)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError as exc:
            raise StorageError(f"{uri!r} is a folder, not an object") from exc
        except OSError as exc:
            raise StorageError(f"cannot delete {uri}: {exc}", permanent=False) from exc
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty by a delete or move, up to (not including) the root, so a
        refused upload leaves no trace of its folder either."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or gone): stop
            folder = folder.parent

    def move(self, uri: str, key: str) -> str:
        src = self._writable(uri)
        if not src.is_file():
            raise ObjectNotFoundError(uri)
        dest = self._path_for_key(key)
        if dest == src:
            return self.uri_for(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise StorageError(f"cannot move {uri}: {exc}", permanent=False) from exc
            self._write_atomic(dest, lambda tmp: shutil.copyfile(src, tmp))
            src.unlink(missing_ok=True)
        self._prune(src.parent)
        return self.uri_for(dest)

    def exists(self, uri: str) -> bool:
        return self._resolve(uri).is_file()

    def local_path(self, uri: str) -> Path:
        """Resolve a file:// URI to a path inside an allowed root, or raise StorageError."""
        path = self._resolve(uri)
        if not path.is_file():
            raise ObjectNotFoundError(uri)
        return path

    def size(self, uri: str) -> int:
        try:
            return self.local_path(uri).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(uri) from exc

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self.local_path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(uri) from exc

    def key_of(self, uri: str) -> str:
        path = self._resolve(uri)
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"{uri!r} is outside the storage root: it has no key")
        return path.relative_to(self.root).as_posix()


# --- the facade -------------------------------------------------------------------------------


def scheme_of(uri: str) -> str:
    return urlparse(uri).scheme.lower()


class Storage(_KeyHelpers):
    """Writes go to ``default``; URI-taking calls go to the backend of the URI's scheme.

    The local backend is always present (file:// URIs from producers); the S3 one when
    configured. ``move`` stays inside the URI's own backend (a rename, not a transfer).
    """

    def __init__(self, local: LocalStorage, s3: S3Storage | None = None,
                 default: Literal["local", "s3"] = "local") -> None:
        if default == "s3" and s3 is None:
            raise ValueError("default='s3' needs an S3 backend")
        self.local = local
        self.s3 = s3
        self.default: ObjectStorage = s3 if default == "s3" and s3 is not None else local

    def backend_for(self, uri: str) -> ObjectStorage:
        scheme = scheme_of(uri)
        if scheme == "file":
            return self.local
        if scheme == "s3":
            if self.s3 is None:
                raise StorageError(f"no S3 storage configured for {uri}")
            return self.s3
        raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")

    def put_file(self, src: Path, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        return self.default.put_file(src, key, content_type)

    def put_bytes(self, data: bytes, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        return self.default.put_bytes(data, key, content_type)

    def delete(self, uri: str) -> None:
        self.backend_for(uri).delete(uri)

    def move(self, uri: str, key: str) -> str:
        return self.backend_for(uri).move(uri, key)

    def exists(self, uri: str) -> bool:
        return self.backend_for(uri).exists(uri)

    def size(self, uri: str) -> int:
        return self.backend_for(uri).size(uri)

    def read_bytes(self, uri: str) -> bytes:
        return self.backend_for(uri).read_bytes(uri)

    def local_path(self, uri: str) -> Path:
        return self.backend_for(uri).local_path(uri)

    def key_of(self, uri: str) -> str:
        return self.backend_for(uri).key_of(uri)


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)
    return str(get() if callable(get) else value)


def build_storage(settings: Any) -> Storage:
    """The facade from the settings: LocalStorage always, S3Storage when an endpoint is set.

    With ``s3_create_bucket`` the bucket is created when missing (this talks to the endpoint:
    an unreachable one raises StorageError(permanent=False)).
    """
    local = LocalStorage(settings.storage_dir, getattr(settings, "file_roots", []))
    backend = getattr(settings, "storage_backend", "local")
    if backend not in ("local", "s3"):
        raise ValueError(f"unknown storage_backend {backend!r}")
    endpoint = getattr(settings, "s3_endpoint", None)
    if backend == "s3" and not endpoint:
        raise ValueError("storage_backend='s3' needs s3_endpoint (DARKROOM_S3_ENDPOINT)")
    if not endpoint:
        return Storage(local)

    from agents.s3storage import S3Storage

    s3 = S3Storage(
        endpoint,
        bucket=getattr(settings, "s3_bucket", "darkroom"),
        access_key=getattr(settings, "s3_access_key", None),
        secret_key=_secret(getattr(settings, "s3_secret_key", None)),
        region=getattr(settings, "s3_region", "us-east-1"),
        cache_dir=Path(settings.data_dir) / "cache" / "s3",
        cache_max_entries=getattr(settings, "s3_cache_max_entries", 512),
        cache_max_bytes=getattr(settings, "s3_cache_max_bytes", 2 << 30),
        connect_timeout_s=getattr(settings, "s3_connect_timeout_s", 5.0),
        read_timeout_s=getattr(settings, "s3_read_timeout_s", 60.0),
        retries=getattr(settings, "s3_retries", 2),
    )
    if getattr(settings, "s3_create_bucket", True):
        s3.ensure_bucket()
    return Storage(local, s3, default="s3" if backend == "s3" else "local")
