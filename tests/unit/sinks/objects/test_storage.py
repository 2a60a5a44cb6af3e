"""Object storage: one behavioural suite over both backends (a folder, and S3 on a real moto
server through the minio client), the facade's routing, key layout and the guards."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agents.kafka.broker import free_port
from sinks.objects.base import (
    ObjectNotFoundError,
    ObjectStorage,
    StorageError,
    derived_key,
    original_key,
    quarantine_key,
)
from sinks.objects.facade import Storage, build_storage
from sinks.objects.local import LocalStorage
from tests.conftest import docker_available


def make_s3(endpoint: str, tmp_path: Path, **kw: Any) -> Any:
    from sinks.objects.s3 import S3Storage

    s3 = S3Storage(endpoint, bucket=f"t-{uuid.uuid4().hex[:16]}", access_key="test",
                   secret_key="test-secret", cache_dir=tmp_path / "cache" / "s3", **kw)
    s3.ensure_bucket()
    return s3


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    return make_s3(request.getfixturevalue("moto_endpoint"), tmp_path)


def assert_permanent(exc: pytest.ExceptionInfo[StorageError], permanent: bool = True) -> None:
    assert exc.value.permanent is permanent, exc.value


# --- the shared behaviour ---------------------------------------------------------------------


def test_is_an_object_storage(backend: Any) -> None:
    assert isinstance(backend, ObjectStorage)


def test_put_bytes_read_size_exists(backend: Any) -> None:
    key = backend.original_key("a1", "/users/42", "hello world.txt")
    uri = backend.put_bytes(b"hello", key, "text/plain")
    assert uri.startswith(f"{backend.scheme}://")
    assert backend.key_of(uri) == key == "originals/users/42/a1/hello world.txt"
    assert backend.exists(uri)
    assert backend.size(uri) == 5
    assert backend.read_bytes(uri) == b"hello"
    # overwrite in place
    assert backend.put_bytes(b"hello again", key) == uri
    assert backend.read_bytes(uri) == b"hello again"


def test_put_file_round_trip(backend: Any, tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    src.write_bytes(os.urandom(100_000))
    uri = backend.put_file(src, backend.original_key("a2", "/", src.name), "image/jpeg")
    assert backend.key_of(uri) == "originals/a2/src.jpg"
    assert backend.read_bytes(uri) == src.read_bytes()
    assert backend.size(uri) == 100_000
    assert backend.local_path(uri).read_bytes() == src.read_bytes()
    assert not list(tmp_path.rglob("*.tmp")), "no temp files left behind"


def test_put_file_missing_source(backend: Any, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as exc:
        backend.put_file(tmp_path / "nope", "originals/x/nope")
    assert_permanent(exc)


def test_delete_is_idempotent(backend: Any) -> None:
    uri = backend.put_bytes(b"x", backend.derived_key("a3", "thumbs", "small.webp"))
    backend.delete(uri)
    assert not backend.exists(uri)
    backend.delete(uri)  # again: fine
    for call in (backend.size, backend.read_bytes, backend.local_path):
        with pytest.raises(StorageError) as exc:
            call(uri)
        assert isinstance(exc.value, ObjectNotFoundError)
        assert_permanent(exc)
        assert "object not found" in str(exc.value)


def test_delete_prefix_removes_one_assets_derived_objects(backend: Any) -> None:
    mine = [backend.put_bytes(b"x", derived_key("a1", pp, name))
            for pp, name in (("eager", "thumb.jpg"), ("eager", "720p/seg_001.ts"),
                             ("cutout", "bg.png"))]
    other = backend.put_bytes(b"y", derived_key("a10", "eager", "thumb.jpg"))
    assert backend.delete_prefix("derived/a1/eager/") == 2
    assert [backend.exists(u) for u in mine] == [False, False, True]
    assert backend.delete_prefix("derived/a1/") == 1
    assert not backend.exists(mine[2]) and backend.exists(other)  # a1 is not a prefix of a10
    assert backend.delete_prefix("derived/a1/") == 0  # idempotent
    with pytest.raises(StorageError):
        backend.delete_prefix("../escape/")


def test_move(backend: Any) -> None:
    key = backend.original_key("a4", "/in", "bad.png")
    uri = backend.put_bytes(b"payload", key)
    new = backend.move(uri, backend.quarantine_key(uri))
    assert backend.key_of(new) == "quarantine/originals/in/a4/bad.png"
    assert not backend.exists(uri)
    assert backend.read_bytes(new) == b"payload"
    assert backend.move(new, backend.key_of(new)) == new  # onto itself: a no-op
    with pytest.raises(StorageError) as exc:
        backend.move(uri, "elsewhere/x")
    assert_permanent(exc)


def test_local_path_is_reused(backend: Any) -> None:
    uri = backend.put_bytes(b"\x89PNG data", backend.original_key("a5", "/", "p.PNG"))
    first = backend.local_path(uri)
    mtime = first.stat().st_mtime_ns
    second = backend.local_path(uri)
    assert first == second and second.read_bytes() == b"\x89PNG data"
    if backend.scheme == "s3":
        assert first.suffix == ".png"  # processors that sniff suffixes still work
        assert backend.downloads == 1 and backend.cache_hits == 1
        assert first.stat().st_mtime_ns >= mtime
        backend.put_bytes(b"changed!", backend.key_of(uri))  # a new ETag: fetched again
        third = backend.local_path(uri)
        assert third != first and third.read_bytes() == b"changed!"
        assert backend.downloads == 2
    else:
        assert first.stat().st_mtime_ns == mtime  # the object itself, untouched


def test_key_layout_and_folder_normalisation(backend: Any) -> None:
    assert backend.original_key("id", "/users//42/./", "../x/photo.jpg") == (
        "originals/users/42/id/photo.jpg")
    assert backend.original_key("id", "", "a\\b\\c.txt") == "originals/id/c.txt"
    assert backend.original_key("id", "/", "..") == "originals/id/file"
    assert backend.derived_key("id", "thumbs", "dir/s.webp") == "derived/id/thumbs/dir/s.webp"
    for bad in ("../s.webp", "dir/../../x", "a\\b", "/abs"):
        with pytest.raises(StorageError):
            backend.derived_key("id", "thumbs", bad)
    assert backend.quarantine_key("originals/id/x") == "quarantine/originals/id/x"
    assert backend.quarantine_key("quarantine/originals/id/x") == "quarantine/originals/id/x"
    # the methods and the module-level helpers are the same thing
    assert original_key("i", "/f", "n") == backend.original_key("i", "/f", "n")
    assert derived_key("i", "p", "n") == backend.derived_key("i", "p", "n")
    assert quarantine_key("k/x") == backend.quarantine_key("k/x")


@pytest.mark.parametrize("key", [
    "originals/../../etc/passwd", "../x", "/abs/key", "a//b", "a/./b", "a\\b", "a\x00b", "",
    "x/..", "k" * 1100,
])
def test_bad_keys_refused(backend: Any, key: str) -> None:
    with pytest.raises(StorageError) as exc:
        backend.put_bytes(b"x", key)
    assert_permanent(exc)


@pytest.mark.parametrize("make", [
    lambda b: b.original_key("..", "/", "f.jpg"),
    lambda b: b.original_key("a/b", "/", "f.jpg"),
    lambda b: b.original_key("", "/", "f.jpg"),
    lambda b: b.original_key("id", "/a/../b", "f.jpg"),
    lambda b: b.original_key("id", "/a\\b", "f.jpg"),
    lambda b: b.derived_key("..", "p", "f.jpg"),
    lambda b: b.derived_key("id", "..", "f.jpg"),
    lambda b: b.derived_key("id", "p/q", "f.jpg"),
    lambda b: b.quarantine_key("../x"),
])
def test_bad_key_parts_refused(backend: Any, make: Any) -> None:
    with pytest.raises(StorageError) as exc:
        make(backend)
    assert_permanent(exc)


def test_many_threads_one_object(backend: Any) -> None:
    uri = backend.put_bytes(os.urandom(300_000), backend.original_key("a6", "/", "b.bin"))
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(backend.local_path(uri)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1
    if backend.scheme == "s3":
        assert backend.downloads == 1


# --- local backend: roots ---------------------------------------------------------------------


def test_file_uri_outside_roots_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "up.jpg").write_bytes(b"j")
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    store = LocalStorage(tmp_path / "objects", [inbox])
    (store.root / "link").symlink_to(secret)
    link = f"file://{store.root}/link"  # a symlink inside the root, pointing outside
    for uri in ("file:///etc/passwd", f"file://{store.root}/../secret.txt",
                f"file://{store.root}/%2E%2E/secret.txt", link):
        for call in (store.local_path, store.read_bytes, store.exists, store.delete):
            with pytest.raises(StorageError, match="outside the allowed storage roots") as exc:
                call(uri)
            assert_permanent(exc)
    with pytest.raises(StorageError, match="remote host"):
        store.local_path("file://evil.example/etc/passwd")
    # extra roots are readable but read-only
    up = LocalStorage.uri_for(inbox / "up.jpg")
    assert store.read_bytes(up) == b"j" and store.local_path(up) == (inbox / "up.jpg").resolve()
    with pytest.raises(StorageError, match="read-only"):
        store.delete(up)
    with pytest.raises(StorageError, match="read-only"):
        store.move(up, "originals/x/up.jpg")
    assert secret.exists() and (inbox / "up.jpg").exists()


def test_local_path_fast_way_agrees_with_realpath(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """local_path resolves an existing file through its descriptor (one open and a readlink)
    where it can; every answer, path or error, is the one os.path.realpath gives."""
    import os

    from sinks.objects import local

    store = LocalStorage(tmp_path / "objects", [tmp_path / "inbox"])
    (tmp_path / "inbox").mkdir()
    (store.root / "a" / "b").mkdir(parents=True)
    (store.root / "a" / "b" / "x.jpg").write_bytes(b"x")
    (store.root / "dirlink").symlink_to(store.root / "a")  # a link inside the root
    (store.root / "filelink.jpg").symlink_to(store.root / "a" / "b" / "x.jpg")
    (tmp_path / "outside.jpg").write_bytes(b"o")
    (store.root / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    os.mkfifo(store.root / "pipe")
    (store.root / "gone.jpg").symlink_to(store.root / "missing.jpg")
    names = ["a/b/x.jpg", "dirlink/b/x.jpg", "filelink.jpg", "a/b/../b/x.jpg",
             "dirlink/../a/b/x.jpg", "a%2Fb%2Fx.jpg", "out.jpg", "pipe", "gone.jpg", "a/b",
             "missing.jpg", "a/b/x.jpg/more", "../outside.jpg"]

    def answers() -> list[object]:
        out: list[object] = []
        for name in names:
            try:
                out.append(store.local_path(f"file://{store.root}/{name}"))
            except StorageError as exc:
                out.append((type(exc), str(exc)))
        return out

    assert local._FD_NAMES, "this test needs /proc/self/fd (Linux)"
    fast = answers()
    with monkeypatch.context() as m:  # an existing file inside the roots: no realpath at all
        m.setattr(local.os.path, "realpath", lambda *_: pytest.fail("realpath was called"))
        assert store.local_path(f"file://{store.root}/dirlink/b/x.jpg") == fast[0]
    monkeypatch.setattr(local, "_FD_NAMES", False)
    assert fast == answers()
    assert fast[:5] == [(store.root / "a" / "b" / "x.jpg").resolve()] * 5
    assert all(isinstance(a, tuple) for a in fast[6:])  # refused or not found, as before


def test_local_compat_api(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "objects")
    key = store.original_key("a", "/f", "n.txt")
    uri = store.put_file(Path(__file__), key)  # positional, no content type: old callers
    assert uri == LocalStorage.uri_for(store.root / key) == store.uri_for_key(key)
    assert store.size(uri) == Path(__file__).stat().st_size


# --- S3 specifics -----------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_other_bucket_refused(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = make_s3(moto_endpoint, tmp_path)
    other = make_s3(moto_endpoint, tmp_path)
    uri = other.put_bytes(b"x", "k/x")
    with pytest.raises(StorageError, match="outside the allowed storage roots") as exc:
        s3.read_bytes(uri)
    assert_permanent(exc)
    with pytest.raises(StorageError):
        s3.key_of("s3://" + s3.bucket + "/k/x?versionId=1")


@pytest.mark.integration
def test_s3_percent_encoded_keys(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = make_s3(moto_endpoint, tmp_path)
    key = s3.original_key("a", "/f", "weird #1 ?& é%.jpg")
    uri = s3.put_bytes(b"w", key)
    assert "#" not in uri and "?" not in uri and " " not in uri
    assert s3.key_of(uri) == key and s3.read_bytes(uri) == b"w"


@pytest.mark.integration
def test_s3_20mb_multipart_round_trip(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = make_s3(moto_endpoint, tmp_path)
    src = tmp_path / "big.bin"
    data = os.urandom(20 * 1024 * 1024)
    src.write_bytes(data)
    uri = s3.put_file(src, s3.original_key("big", "/", "big.bin"))
    st = s3.stat(uri)
    assert st.size == len(data)
    assert "-" in (st.etag or ""), f"expected a multipart ETag, got {st.etag}"
    local = s3.local_path(uri)
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(data).digest()
    moved = s3.move(uri, s3.quarantine_key(uri))
    assert s3.size(moved) == len(data) and not s3.exists(uri)


@pytest.mark.integration
def test_s3_cache_is_bounded(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = make_s3(moto_endpoint, tmp_path, cache_max_entries=2, cache_max_bytes=10_000,
                 cache_grace_s=0)
    uris = [s3.put_bytes(os.urandom(3000), f"k/{i}.bin") for i in range(5)]
    for uri in uris:
        s3.local_path(uri)
        time.sleep(0.01)
    files = [p for p in s3.cache_dir.iterdir() if not p.name.startswith(".")]
    assert len(files) == 2
    assert s3.local_path(uris[-1]) in files  # the newest stayed
    # a big object alone exceeds max bytes: it is kept (it was just fetched), others go
    big = s3.put_bytes(os.urandom(20_000), "k/big.bin")
    path = s3.local_path(big)
    assert [p for p in s3.cache_dir.iterdir() if not p.name.startswith(".")] == [path]


@pytest.mark.integration
def test_s3_grace_keeps_recent_files(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = make_s3(moto_endpoint, tmp_path, cache_max_entries=1, cache_grace_s=60)
    for i in range(3):
        s3.local_path(s3.put_bytes(b"x" * i, f"g/{i}"))
    assert len(list(s3.cache_dir.iterdir())) == 3  # all in use within the grace period


def test_s3_unreachable_is_transient_and_quick(tmp_path: Path) -> None:
    from sinks.objects.s3 import S3Storage

    s3 = S3Storage(f"http://127.0.0.1:{free_port()}", bucket="nowhere", access_key="a",
                   secret_key="b", cache_dir=tmp_path / "c", connect_timeout_s=0.5, retries=1)
    started = time.monotonic()
    for call in (lambda: s3.exists("s3://nowhere/k"), lambda: s3.put_bytes(b"x", "k"),
                 lambda: s3.local_path("s3://nowhere/k"), s3.ensure_bucket):
        with pytest.raises(StorageError, match="unreachable") as exc:
            call()
        assert_permanent(exc, False)
    assert time.monotonic() - started < 5


@pytest.mark.integration
def test_s3_missing_bucket_is_permanent(moto_endpoint: str, tmp_path: Path) -> None:
    from sinks.objects.s3 import S3Storage

    s3 = S3Storage(moto_endpoint, bucket=f"missing-{uuid.uuid4().hex[:8]}", access_key="a",
                   secret_key="b", cache_dir=tmp_path / "c")
    with pytest.raises(StorageError, match="not found") as exc:
        s3.put_bytes(b"x", "k")
    assert_permanent(exc)


def test_s3_endpoint_forms(tmp_path: Path) -> None:
    from sinks.objects.s3 import S3Storage

    plain = S3Storage("http://h:9000", bucket="b", cache_dir=tmp_path)
    tls = S3Storage("https://h", bucket="b", cache_dir=tmp_path)
    bare = S3Storage("h:9000", bucket="b", cache_dir=tmp_path)
    assert plain.endpoint == "h:9000" and not plain.client._base_url.is_https
    assert tls.client._base_url.is_https and bare.client._base_url.is_https
    for bad in ("ftp://h", "http://h/path", "http://"):
        with pytest.raises(ValueError):
            S3Storage(bad, bucket="b", cache_dir=tmp_path)


# --- the facade -------------------------------------------------------------------------------


@pytest.mark.integration
def test_facade_routes_by_scheme_and_writes_to_default(moto_endpoint: str,
                                                       tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "objects")
    s3 = make_s3(moto_endpoint, tmp_path)
    storage = Storage(local, s3, default="s3")
    assert isinstance(storage, ObjectStorage) and storage.default is s3
    s3_uri = storage.put_bytes(b"to s3", storage.original_key("f1", "/", "a.txt"))
    assert s3_uri.startswith(f"s3://{s3.bucket}/")
    file_uri = local.put_bytes(b"on disk", "originals/f2/b.txt")  # a producer's file:// URI
    for uri, data in ((s3_uri, b"to s3"), (file_uri, b"on disk")):
        assert storage.exists(uri) and storage.size(uri) == len(data)
        assert storage.read_bytes(uri) == data and storage.local_path(uri).read_bytes() == data
    assert storage.local_path(file_uri) == local.root / "originals/f2/b.txt"
    assert storage.local_path(s3_uri).is_relative_to(s3.cache_dir)
    # move stays in the URI's backend; quarantine keys come from the URI's key
    moved = storage.move(file_uri, storage.quarantine_key(file_uri))
    assert moved.startswith("file://") and moved.endswith("/quarantine/originals/f2/b.txt")
    moved_s3 = storage.move(s3_uri, storage.quarantine_key(s3_uri))
    assert storage.key_of(moved_s3) == "quarantine/originals/f1/a.txt"
    storage.delete(moved)
    storage.delete(moved_s3)
    assert not storage.exists(moved) and not storage.exists(moved_s3)
    # default local: writes are file://, s3:// still readable
    both = Storage(local, s3)
    assert both.put_bytes(b"l", "k/l").startswith("file://")
    assert both.read_bytes(s3.put_bytes(b"s", "k/s")) == b"s"


def test_facade_without_s3(tmp_path: Path) -> None:
    storage = Storage(LocalStorage(tmp_path / "objects"))
    assert storage.put_bytes(b"x", "k/x").startswith("file://")
    with pytest.raises(StorageError, match="no S3 storage configured for s3://b/k") as exc:
        storage.read_bytes("s3://b/k")
    assert_permanent(exc)
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.local_path("http://example.com/x")
    with pytest.raises(ValueError):
        Storage(LocalStorage(tmp_path / "objects"), None, default="s3")


def settings_ns(tmp_path: Path, **kw: Any) -> SimpleNamespace:
    data = tmp_path / "data"
    return SimpleNamespace(data_dir=data, storage_dir=data / "objects", file_roots=[], **kw)


def test_build_storage_local_default(tmp_path: Path) -> None:
    storage = build_storage(settings_ns(tmp_path))  # before the s3_* settings exist
    assert storage.s3 is None and storage.default is storage.local
    assert storage.local.root == (tmp_path / "data" / "objects").resolve()
    from agents.settings import Settings

    real = build_storage(Settings(data_dir=tmp_path / "d2", file_roots=[tmp_path]))
    assert real.default is real.local and tmp_path.resolve() in real.local.roots


@pytest.mark.integration
def test_build_storage_s3(moto_endpoint: str, tmp_path: Path) -> None:
    from pydantic import SecretStr

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    storage = build_storage(settings_ns(
        tmp_path, storage_backend="s3", s3_endpoint=moto_endpoint, s3_bucket=bucket,
        s3_access_key="k", s3_secret_key=SecretStr("s"), s3_region="us-east-1",
        s3_create_bucket=True))
    assert storage.s3 is not None and storage.default is storage.s3
    assert storage.s3.client.bucket_exists(bucket)
    assert storage.s3.cache_dir == tmp_path / "data" / "cache" / "s3"
    assert storage.put_bytes(b"x", "k/x") == f"s3://{bucket}/k/x"
    with pytest.raises(ValueError, match="s3_endpoint"):
        build_storage(settings_ns(tmp_path, storage_backend="s3"))


# --- a real MinIO, when a Docker engine answers ----------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers: MinIO via "
                    "testcontainers skipped (moto covers the S3 API)")
def test_minio_testcontainers(tmp_path: Path) -> None:
    from testcontainers.community.minio import MinioContainer

    from sinks.objects.s3 import S3Storage

    with MinioContainer() as minio:
        cfg = minio.get_config()
        s3 = S3Storage(f"http://{cfg['endpoint']}", bucket="darkroom",
                       access_key=cfg["access_key"], secret_key=cfg["secret_key"],
                       cache_dir=tmp_path / "cache")
        s3.ensure_bucket()
        uri = s3.put_bytes(b"minio", s3.original_key("m", "/", "m.txt"))
        assert s3.read_bytes(uri) == b"minio" and s3.local_path(uri).read_bytes() == b"minio"
        moved = s3.move(uri, s3.quarantine_key(uri))
        s3.delete(moved)
        s3.delete(moved)
        assert not s3.exists(moved)
