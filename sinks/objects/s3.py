"""The S3 backend of :mod:`agents.storage`, through the ``minio`` client.

URIs are ``s3://<bucket>/<percent-encoded key>``; only the configured bucket is served (an
event cannot make a worker read another bucket the credentials reach). ``local_path`` downloads
into a bounded cache folder (see :class:`S3Storage`). All calls block; callers use threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NoReturn
from urllib.parse import quote, unquote, urlparse

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Object
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from sinks.objects.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectNotFoundError,
    StorageError,
    _KeyHelpers,
    validate_key,
)

log = logging.getLogger("darkroom.s3storage")

_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound", "NoSuchVersion"}
_FORBIDDEN = {"AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}
_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
              "RequestTimeTooSkewed", "ExpiredToken", "OperationAborted"}
_MAX_COPY = 5 << 30  # copy_object's limit; larger objects use compose_object (multipart copy)
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,12}$")


def http_client(connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                retries: int = 2, maxsize: int = 16) -> urllib3.PoolManager:
    """The urllib3 pool minio talks through, with bounded timeouts and retries."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=maxsize,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries, connect=retries, read=retries, backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504], raise_on_status=False,
        ),
    )


class S3Storage(_KeyHelpers):
    """Objects in one S3 bucket.

    ``endpoint`` is ``http://host:port`` / ``https://host`` (the scheme decides TLS) or a bare
    ``host:port`` (TLS unless ``secure=False``).

    Cache for :meth:`local_path`: files in ``cache_dir`` named by a hash of the URI and the
    object's ETag (or size), so an overwritten object is fetched again; each call costs one
    HEAD. Written atomically (temp file + rename); a hit refreshes the file's mtime; after each
    download the oldest files (by mtime) go until at most ``cache_max_entries`` files and
    ``cache_max_bytes`` bytes remain, except files used within ``cache_grace_s`` seconds (they
    may be open in a processor) and the file just downloaded.
    """

    scheme = "s3"

    def __init__(
        self,
        endpoint: str,
        *,
        bucket: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = "us-east-1",
        secure: bool | None = None,
        cache_dir: Path,
        cache_max_entries: int = 512,
        cache_max_bytes: int = 2 << 30,
        cache_grace_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        retries: int = 2,
        client: Minio | None = None,
    ) -> None:
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        if parsed.scheme not in ("", "http", "https") or not parsed.netloc:
            raise ValueError(f"invalid S3 endpoint {endpoint!r} (want http(s)://host:port)")
        if parsed.path not in ("", "/"):
            raise ValueError(f"S3 endpoint {endpoint!r} must not have a path")
        if secure is None:
            secure = parsed.scheme != "http"
        self.endpoint = parsed.netloc
        self.bucket = bucket
        self.client = client or Minio(
            self.endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
            region=region,
            http_client=http_client(connect_timeout_s, read_timeout_s, retries),
        )
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self.cache_grace_s = cache_grace_s
        self.downloads = 0  # objects fetched into the cache (a hook for tests and metrics)
        self.cache_hits = 0
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # --- URIs and keys ----------------------------------------------------------------------

    def uri_for_key(self, key: str) -> str:
        return f"s3://{self.bucket}/{quote(validate_key(key), safe='/')}"

    def key_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme.lower() != "s3":
            raise StorageError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}")
        if parsed.netloc != self.bucket:
            raise StorageError(f"{uri!r} is outside the allowed storage roots "
                               f"(bucket {self.bucket!r} only)")
        if parsed.query or parsed.fragment or parsed.params:
            raise StorageError(f"S3 URI with a query or fragment: {uri!r} (percent-encode keys)")
        return validate_key(unquote(parsed.path.removeprefix("/")))

    # --- errors -----------------------------------------------------------------------------

    def _raise(self, exc: Exception, what: str) -> NoReturn:
        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = exc.response.status if exc.response is not None else 0
            if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
                raise ObjectNotFoundError(what) from exc
            if code == "NoSuchBucket":
                raise StorageError(f"bucket {self.bucket!r} not found ({what})") from exc
            if code in _FORBIDDEN or status == 403:
                raise StorageError(f"access to {what} forbidden: {code}") from exc
            transient = code in _TRANSIENT or status >= 500 or status in (408, 429)
            raise StorageError(f"S3 error on {what}: {code} {exc.message}",
                               permanent=not transient) from exc
        if isinstance(exc, ServerError):
            raise StorageError(f"S3 server error on {what}: {exc}",
                               permanent=exc.status_code < 500 and exc.status_code != 429) from exc
        if isinstance(exc, InvalidResponseError | MinioException):
            raise StorageError(f"S3 bad response on {what}: {exc}", permanent=False) from exc
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            raise StorageError(f"S3 endpoint {self.endpoint} unreachable ({what}): {exc}",
                               permanent=False) from exc
        raise exc

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, what)

    # --- bucket -----------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (a concurrent creator is fine)."""
        with self._errors(f"bucket {self.bucket}"):
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # --- objects ----------------------------------------------------------------------------

    def put_file(self, src: Path, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """One upload (fput_object goes multipart above 5 MiB parts): atomic for readers."""
        uri = self.uri_for_key(key)
        if not Path(src).is_file():
            raise StorageError(f"source file not found: {src}")
        with self._errors(uri):
            self.client.fput_object(self.bucket, key, str(src), content_type=content_type)
        return uri

    def put_bytes(self, data: bytes, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        uri = self.uri_for_key(key)
        with self._errors(uri):
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                   content_type=content_type)
        return uri

    def stat(self, uri: str) -> Object:
        key = self.key_of(uri)
        with self._errors(uri):
            return self.client.stat_object(self.bucket, key)

    def delete(self, uri: str) -> None:
        key = self.key_of(uri)
        with self._errors(uri):
            self.client.remove_object(self.bucket, key)  # S3 deletes are idempotent

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the key ``prefix``; returns how many."""
        validate_key(prefix.rstrip("/"))
        n = 0
        with self._errors(f"s3://{self.bucket}/{prefix}"):
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name:
                    self.client.remove_object(self.bucket, obj.object_name)
                    n += 1
        return n

    def move(self, uri: str, key: str) -> str:
        """Server-side copy to ``key``, then remove the source."""
        src_key = self.key_of(uri)
        new_uri = self.uri_for_key(key)
        if src_key == key:
            self.stat(uri)  # not found -> ObjectNotFoundError, like the local backend
            return new_uri
        size = self.size(uri)
        with self._errors(uri):
            if size <= _MAX_COPY:
                self.client.copy_object(self.bucket, key, CopySource(self.bucket, src_key))
            else:
                self.client.compose_object(self.bucket, key,
                                           [ComposeSource(self.bucket, src_key)])
            self.client.remove_object(self.bucket, src_key)
        return new_uri

    def exists(self, uri: str) -> bool:
        try:
            self.stat(uri)
        except ObjectNotFoundError:
            return False
        return True

    def size(self, uri: str) -> int:
        st = self.stat(uri)
        return int(st.size or 0)

    def read_bytes(self, uri: str) -> bytes:
        key = self.key_of(uri)
        with self._errors(uri):
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    # --- local files (the download cache) ---------------------------------------------------

    def _cache_name(self, uri: str, st: Object) -> str:
        version = (st.etag or "").strip('"') or f"size={st.size}"
        digest = hashlib.sha256(f"{uri}\0{version}".encode()).hexdigest()[:40]
        suffix = PurePosixPath(self.key_of(uri)).suffix
        return digest + (suffix.lower() if _SUFFIX.match(suffix) else "")

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(name)
            if lock is None:
                if len(self._locks) > 4096:
                    self._locks = {k: v for k, v in self._locks.items() if v.locked()}
                lock = self._locks[name] = threading.Lock()
            return lock

    def local_path(self, uri: str) -> Path:
        """A cached local copy of the object (downloaded once per ETag). Do not modify it."""
        key = self.key_of(uri)
        st = self.stat(uri)
        path = self.cache_dir / self._cache_name(uri, st)
        with self._lock_for(path.name):
            if path.is_file():
                with contextlib.suppress(OSError):
                    os.utime(path)  # LRU: a hit counts as a use
                self.cache_hits += 1
                return path
            tmp = self.cache_dir / f".{path.name}.{uuid.uuid4().hex}.tmp"
            try:
                with self._errors(uri):
                    response = self.client.get_object(self.bucket, key)
                    try:
                        with open(tmp, "wb") as fh:
                            for chunk in response.stream(1 << 20):
                                fh.write(chunk)
                    finally:
                        response.close()
                        response.release_conn()
                got = tmp.stat().st_size
                if st.size is not None and got != st.size:
                    raise StorageError(f"short download of {uri}: {got} of {st.size} bytes",
                                       permanent=False)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self.downloads += 1
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        now = time.time()
        entries: list[tuple[float, int, Path]] = []
        with contextlib.suppress(OSError), os.scandir(self.cache_dir) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.name.startswith("."):
                    if e.name.endswith(".tmp") and now - st.st_mtime > 3600:
                        Path(e.path).unlink(missing_ok=True)  # left by a crashed download
                    continue
                if e.is_file(follow_symlinks=False):
                    entries.append((st.st_mtime, st.st_size, Path(e.path)))
        count = len(entries)
        total = sum(size for _, size, _ in entries)
        for mtime, size, p in sorted(entries):
            if count <= self.cache_max_entries and total <= self.cache_max_bytes:
                break
            if p == keep or now - mtime < self.cache_grace_s:
                continue
            try:
                p.unlink(missing_ok=True)
            except OSError:
                log.debug("cannot evict %s", p, exc_info=True)
                continue
            count -= 1
            total -= size
