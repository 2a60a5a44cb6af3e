"""A small shared cache of decoded images, so that the tasks of one asset pay for ONE decode.

An upload usually triggers several cheap image tasks at once (validate, blurhash, dominant
colours, ...). Decoding a 12 MP JPEG costs far more than any of them, so the agent decodes once, at
a preview size large enough for all of them (``preview_side``, JPEG draft mode), and every task gets
its own shrink of that decode.

Properties:

* **single flight**: concurrent requests for the same key wait for the one decode in progress
  instead of starting their own; a failure is handed to every waiter and is *not* cached (the next
  request tries again, e.g. after a transient storage error);
* **bounded**: at most ``max_entries`` images and ``max_bytes`` of pixel data, least recently used
  evicted first;
* **never shares a mutable image**: ``get`` always returns a new image object the caller may
  modify; the cached one is only ever read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from processors.media.imaging import DEFAULT_MAX_DECODE_BYTES, Decoded, decode_with_info, shrink
from processors.registry import ProcessorError

Loader = Callable[[], bytes | Path]

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def _nbytes(img: Image.Image) -> int:
    return img.width * img.height * len(img.getbands())


def _covers(decoded: Decoded, max_side: int | None) -> bool:
    """Can ``decoded`` serve a request for ``max_side`` (``None`` = full size)?"""
    if decoded.full:
        return True
    return max_side is not None and max_side <= max(decoded.image.size)


@dataclass
class _Flight:
    """One decode in progress; waiters block on ``done``."""

    decode_side: int | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Decoded | None = None
    error: BaseException | None = None


def _rethrow(error: BaseException) -> BaseException:
    """A fresh exception per waiter for ours (raising one instance from many threads tangles its
    traceback); anything else is re-raised as is so its type survives for the caller."""
    if isinstance(error, ProcessorError):
        clone = ProcessorError(str(error), permanent=error.permanent)
        clone.__cause__ = error
        return clone
    return error


class DecodeCache:
    """Thread-safe, single-flight, memory-bounded LRU cache of decoded images.

    ``key`` is chosen by the caller and must identify the bytes (e.g. object URI + size or ETag);
    the cache adds the pixel ``mode`` to it. ``preview_side`` is the smallest size it decodes at,
    so that requests for 64 px and 256 px of one asset are both served by one 512 px decode.
    ``max_pixels`` and ``max_decode_bytes`` bound one decode (see ``decode_with_info``);
    ``max_bytes`` bounds what the cache keeps.
    """

    def __init__(
        self,
        max_entries: int = 8,
        preview_side: int = 512,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.preview_side = preview_side
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.max_decode_bytes = max_decode_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], Decoded] = OrderedDict()
        self._bytes = 0
        self._flights: dict[tuple[str, str], _Flight] = {}
        #: decodes started (a failed one counts too: it was paid for)
        self.decodes = 0
        #: requests served without decoding (from the cache or by waiting on another's decode)
        self.hits = 0

    # ----------------------------------------------------------------------------- public API
    def get(
        self,
        key: str,
        load: Loader,
        max_side: int | None,
        mode: str = "RGB",
        resample: str = "bilinear",
    ) -> Image.Image:
        """A new ``mode`` image of ``key`` whose longest side is at most ``max_side`` (see
        :meth:`get_decoded`)."""
        return self.get_decoded(key, load, max_side, mode, resample).image

    def get_decoded(
        self,
        key: str,
        load: Loader,
        max_side: int | None,
        mode: str = "RGB",
        resample: str = "bilinear",
    ) -> Decoded:
        """Return a new ``mode`` image of ``key`` whose longest side is at most ``max_side``,
        with the picture's true (upright) size and format as its file says; ``resample`` is the
        filter of that shrink (:func:`~processors.media.imaging.shrink`).

        ``load`` is called (at most once per decode, outside the cache lock) only on a miss.
        Decodes at ``max(max_side, preview_side)``, or full size when ``max_side`` is None.
        Raises whatever ``load`` or the decode raises (``ProcessorError`` for bad images).
        """
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        k = (key, mode)
        while True:
            with self._lock:
                entry = self._entries.get(k)
                if entry is not None and _covers(entry, max_side):
                    self._entries.move_to_end(k)
                    self.hits += 1
                    return self._serve(entry, max_side, resample)
                flight = self._flights.get(k)
                if flight is None:
                    decode_side = None if max_side is None else max(max_side, self.preview_side)
                    flight = self._flights[k] = _Flight(decode_side)
                    self.decodes += 1
                    leader = True
                else:
                    leader = False
            if leader:
                return self._lead(k, flight, load, max_side, mode, resample)
            flight.done.wait()
            if flight.error is not None:
                raise _rethrow(flight.error)
            assert flight.result is not None
            if _covers(flight.result, max_side):
                with self._lock:
                    self.hits += 1
                return self._serve(flight.result, max_side, resample)
            # The decode we waited for was too small for us: loop, and (most likely) lead a
            # larger one. Waiting first keeps one key from being decoded twice at the same time.

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Pixel bytes currently held."""
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "decodes": self.decodes,
                "hits": self.hits,
            }

    # ------------------------------------------------------------------------------ internals
    @staticmethod
    def _serve(decoded: Decoded, max_side: int | None, resample: str = "bilinear") -> Decoded:
        # shrink() always returns a new image (a copy when no shrink is needed), so callers may
        # mutate what they get without corrupting the cached decode. Reading one Pillow image from
        # several threads at once is safe: resize/copy only read the source.
        return Decoded(shrink(decoded.image, max_side, resample), decoded.original_size,
                       decoded.format)

    def _lead(
        self,
        k: tuple[str, str],
        flight: _Flight,
        load: Loader,
        max_side: int | None,
        mode: str,
        resample: str = "bilinear",
    ) -> Decoded:
        try:
            decoded = decode_with_info(
                load(),
                flight.decode_side,
                mode=mode,
                max_pixels=self.max_pixels,
                max_decode_bytes=self.max_decode_bytes,
            )
        except BaseException as exc:
            with self._lock:
                del self._flights[k]
            flight.error = exc
            flight.done.set()
            raise
        with self._lock:
            del self._flights[k]
            self._store(k, decoded)
        flight.result = decoded
        flight.done.set()
        return self._serve(decoded, max_side, resample)

    def _store(self, k: tuple[str, str], decoded: Decoded) -> None:
        """Insert under the lock and evict least-recently-used entries past the bounds."""
        old = self._entries.pop(k, None)
        if old is not None:
            self._bytes -= _nbytes(old.image)
        size = _nbytes(decoded.image)
        if size > self.max_bytes:
            return  # larger than the whole budget: serve it, don't keep it
        self._entries[k] = decoded
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted.image)
