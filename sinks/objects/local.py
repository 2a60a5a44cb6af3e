"""The local-folder backend: ``file://`` URIs inside the storage root and the read-only extra
roots (a path-traversal guard: an event cannot make a worker read /etc/passwd)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from sinks.objects.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectNotFoundError,
    StorageError,
    _KeyHelpers,
    validate_key,
)

# --- local folder -----------------------------------------------------------------------------

#: the kernel names an open descriptor's file under /proc/self/fd (Linux)
_FD_NAMES = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


def _real_file(path: str) -> str | None:
    """The real path of the regular file at ``path`` as the kernel resolved it: one open
    (``O_PATH``: nothing is read, a FIFO does not block) and a readlink of the descriptor, where
    ``os.path.realpath`` makes an lstat per component in Python (2.5x the cost, once per upload
    event in the router and once per task). None where that cannot say (missing, not a regular
    file, a name the kernel marks as deleted or unreachable): the caller then takes the long way.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    return real if real.startswith(os.sep) and not real.endswith(" (deleted)") else None



class LocalStorage(_KeyHelpers):
    """Objects as files under ``root``; ``file://`` URIs (percent-encoded absolute paths)."""

    scheme = "file"

    def __init__(self, root: Path, extra_roots: Sequence[Path] = ()) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.roots = [self.root, *(Path(r).resolve() for r in extra_roots)]
        self._root_strs = [str(r).rstrip(os.sep) or os.sep for r in self.roots]

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

    def _named(self, uri: str) -> str:
        """The path a file:// URI names, as written (not resolved, not checked)."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}")
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI with a remote host is not allowed: {uri!r}")
        return unquote(parsed.path)

    def _inside(self, uri: str, real: str) -> Path:
        # os.path on strings: Path.resolve + is_relative_to per root cost more than the lstat
        # calls themselves on the router's hot path (one per upload event)
        if not any(real == r or real.startswith(r + os.sep) or r == os.sep
                   for r in self._root_strs):
            raise StorageError(f"{uri!r} is outside the allowed storage roots")
        return Path(real)

    def _resolve(self, uri: str) -> Path:
        """The path a file:// URI names, checked against the allowed roots (may not exist)."""
        return self._inside(uri, os.path.realpath(self._named(uri)))

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

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with the folder ``prefix`` (``derived/<asset>/``);
        returns how many. Idempotent (nothing there: 0)."""
        folder = self._path_for_key(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        files = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {prefix}: {exc}", permanent=False) from exc
        self._prune(folder.parent)
        return len(files)

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
        real = _real_file(self._named(uri)) if _FD_NAMES else None
        if real is not None:
            return self._inside(uri, real)  # the same real path realpath finds, found cheaper
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


