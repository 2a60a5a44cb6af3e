"""processors.media.decode_cache: one decode per asset, shared safely between tasks and threads."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from processors.media.decode_cache import DecodeCache
from processors.registry import ProcessorError


def jpeg(size: tuple[int, int], color: tuple[int, int, int] = (200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Loader:
    """A ``load`` callable that counts its calls and can be slowed down or made to fail."""

    def __init__(self, data: bytes | Path, delay: float = 0.0, error: Exception | None = None):
        self.data = data
        self.delay = delay
        self.error = error
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> bytes | Path:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.data


def run_threads(n: int, fn: Callable[[], object]) -> tuple[list[object], list[BaseException]]:
    """Start ``fn`` in ``n`` threads released together; collect results and exceptions."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def target() -> None:
        barrier.wait()
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - hand any failure to the main thread
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return results, errors


def test_two_tasks_share_one_decode() -> None:
    cache = DecodeCache(preview_side=512)
    load = Loader(jpeg((2000, 1500)))
    small = cache.get("a", load, 64)
    medium = cache.get("a", load, 256)
    assert small.size == (64, 48) and medium.size == (256, 192)
    assert (cache.decodes, cache.hits, load.calls) == (1, 1, 1)
    preview = cache.get("a", load, 512)
    assert preview.size == (512, 384)
    assert (cache.decodes, cache.hits) == (1, 2)


def test_every_get_returns_a_new_mutable_image() -> None:
    cache = DecodeCache(preview_side=64)
    load = Loader(jpeg((64, 48), (10, 20, 30)))
    first = cache.get("a", load, 64)
    first.paste((255, 255, 255), (0, 0, 64, 48))
    second = cache.get("a", load, 64)
    assert second is not first
    r, g, b = second.getpixel((5, 5))  # type: ignore[misc]
    assert abs(r - 10) < 8 and abs(g - 20) < 8 and abs(b - 30) < 8
    assert cache.decodes == 1


def test_larger_request_decodes_again_and_replaces() -> None:
    cache = DecodeCache(preview_side=256)
    load = Loader(jpeg((2000, 1000)))
    assert cache.get("a", load, 64).size == (64, 32)
    assert cache.get("a", load, 1000).size == (1000, 500)
    assert cache.decodes == 2
    assert cache.get("a", load, 800).size == (800, 400)  # served by the 1000 px decode
    assert cache.get("a", load, None).size == (2000, 1000)  # full size was never decoded
    assert cache.decodes == 3
    assert cache.get("a", load, 1500).size == (1500, 750)
    assert cache.decodes == 3 and len(cache) == 1


def test_small_image_decode_is_full_and_serves_everything() -> None:
    cache = DecodeCache(preview_side=512)
    load = Loader(jpeg((300, 200)))
    assert cache.get("a", load, 64).size == (64, 43)
    assert cache.get("a", load, None).size == (300, 200)
    assert cache.get("a", load, 4000).size == (300, 200)
    assert cache.decodes == 1


def test_single_flight_under_eight_threads() -> None:
    cache = DecodeCache(preview_side=256)
    load = Loader(jpeg((1024, 768)), delay=0.05)
    sides = [64, 256, 64, 128, 256, 32, 200, 100]
    it = iter(sides)
    lock = threading.Lock()

    def task() -> Image.Image:
        with lock:
            side = next(it)
        return cache.get("asset", load, side)

    results, errors = run_threads(8, task)
    assert errors == []
    assert load.calls == 1 and cache.decodes == 1 and cache.hits == 7
    images = [r for r in results if isinstance(r, Image.Image)]
    assert sorted(max(im.size) for im in images) == sorted(sides)
    assert len({id(im) for im in images}) == 8


def test_different_keys_and_modes_are_separate() -> None:
    cache = DecodeCache()
    data = jpeg((100, 100))
    cache.get("a", Loader(data), 64)
    cache.get("b", Loader(data), 64)
    gray = cache.get("a", Loader(data), 64, mode="L")
    assert gray.mode == "L"
    assert cache.decodes == 3 and len(cache) == 3


def test_lru_eviction() -> None:
    cache = DecodeCache(max_entries=2, preview_side=32)
    data = jpeg((64, 64))
    for key in ("a", "b"):
        cache.get(key, Loader(data), 32)
    cache.get("a", Loader(data), 32)  # touch a: b is now least recently used
    cache.get("c", Loader(data), 32)
    assert len(cache) == 2 and cache.decodes == 3
    cache.get("a", Loader(data), 32)
    assert cache.decodes == 3  # a survived
    cache.get("b", Loader(data), 32)
    assert cache.decodes == 4  # b had been evicted


def test_memory_bound() -> None:
    per_image = 64 * 64 * 3
    cache = DecodeCache(max_entries=100, preview_side=64, max_bytes=2 * per_image)
    for key in "abcd":
        cache.get(key, Loader(jpeg((64, 64))), 64)
    assert len(cache) == 2 and cache.nbytes == 2 * per_image
    huge = DecodeCache(preview_side=64, max_bytes=per_image - 1)
    assert huge.get("x", Loader(jpeg((64, 64))), 64).size == (64, 64)  # served, not kept
    assert len(huge) == 0


def test_errors_are_not_cached() -> None:
    cache = DecodeCache()
    data = jpeg((100, 100))
    with pytest.raises(ProcessorError, match="corrupt"):
        cache.get("a", Loader(data[: len(data) // 2]), 64)
    with pytest.raises(ConnectionError):
        cache.get("a", Loader(data, error=ConnectionError("storage down")), 64)
    assert len(cache) == 0
    assert cache.get("a", Loader(data), 64).size == (64, 64)
    assert cache.decodes == 3


def test_error_reaches_every_waiter_once_decoded() -> None:
    cache = DecodeCache()
    data = jpeg((400, 300))
    load = Loader(data[: len(data) // 2], delay=0.05)
    results, errors = run_threads(6, lambda: cache.get("bad", load, 64))
    assert results == []
    assert len(errors) == 6
    assert all(isinstance(e, ProcessorError) and e.permanent for e in errors)
    assert load.calls == 1 and cache.decodes == 1
    assert len(cache) == 0


def test_loader_may_return_a_path(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg((640, 480)))
    cache = DecodeCache(preview_side=128)
    assert cache.get(str(path), Loader(path), 100).size == (100, 75)
    assert cache.stats() == {"entries": 1, "bytes": 128 * 96 * 3, "decodes": 1, "hits": 0}


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DecodeCache(max_entries=0)
    with pytest.raises(ValueError):
        DecodeCache().get("a", Loader(b""), 0)


def test_max_pixels_is_enforced() -> None:
    cache = DecodeCache(max_pixels=1000)
    with pytest.raises(ProcessorError, match="over the limit of 1000"):
        cache.get("a", Loader(jpeg((100, 100))), 64)
