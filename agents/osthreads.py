"""OS-level names for the worker's threads.

CPython names its threads only for itself: ``top -H``, ``ps -L``, ``/proc/<pid>/task/*/comm``,
perf and py-spy see every thread of a worker as ``python``. A worker names its own at the OS
level (Linux ``prctl(PR_SET_NAME)``, at most 15 bytes) so an operator, and
``benchmarks/pipeline.py``'s CPU breakdown, can tell the event loop from Faust's consumer thread,
a lane from the store's I/O pool; librdkafka names its own (``rdk:*``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from functools import cache
from typing import Any

PR_SET_NAME = 15


@cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread ``name`` (default: its Python name) at the OS level; a no-op
    where the platform has no such name."""
    libc = _libc()
    if libc is None:
        return
    name = name or threading.current_thread().name
    if name.startswith("darkroom-"):
        name = "dr-" + name[len("darkroom-"):]  # "darkroom-light-0" would lose its number
    raw = name.encode("ascii", "replace")[:15]
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def os_thread_name(tid: int | None = None) -> str | None:
    """The OS name of thread ``tid`` of this process (default: the calling thread)."""
    tid = threading.get_native_id() if tid is None else tid
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None
