"""The facade the agents hold: writes go to the default backend, URI-taking calls to the backend
of the URI's scheme; :func:`build_storage` makes one from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sinks.objects.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectStorage,
    StorageError,
    _KeyHelpers,
    scheme_of,
)
from sinks.objects.local import LocalStorage

if TYPE_CHECKING:
    from sinks.objects.s3 import S3Storage


# --- the facade -------------------------------------------------------------------------------



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

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` in every backend (derived objects are written
        to the default one; a deployment that switched backends may hold some in the other)."""
        n = self.local.delete_prefix(prefix)
        if self.s3 is not None:
            n += self.s3.delete_prefix(prefix)
        return n

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

    from sinks.objects.s3 import S3Storage

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

