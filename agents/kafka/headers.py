"""Kafka message headers: what every message Darkroom writes says about itself, and the trace.

Values are single-object Avro, opaque bytes to tools; the headers name them so Kafka UIs, Connect
and tracing can work without our code: ``content-type`` (``application/vnd.apache.avro``),
``darkroom-schema`` and ``darkroom-schema-fingerprint`` (the writer schema), ``darkroom-asset-id``,
and the W3C ``traceparent`` of the upload the message belongs to. The trace starts at the API
request (its own ``traceparent`` header, or a new one) and follows the upload event, its task
requests and results, the asset updates and the webhook deliveries, each hop a child span of the
one before, up to the webhook's HTTP request.

The current trace lives in a context variable (:data:`TRACE`): an agent sets it from the message it
handles (:func:`use`), and every send in that context carries it. Messages without headers are read
as before (a new trace starts).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

CONTENT_TYPE = "application/vnd.apache.avro"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

#: the W3C traceparent of the work in progress (None: none yet)
TRACE: ContextVar[str | None] = ContextVar("darkroom_trace", default=None)

Headers = list[tuple[str, bytes]]


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a version-00 W3C traceparent with non-zero ids, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(0)


def _span_id() -> str:
    # ids are random (W3C), not secret: the process's PRNG (reseeded after a fork) costs half
    # of os.urandom's system call, paid for every message a worker sends
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace() -> str:
    return f"00-{random.getrandbits(128) or 1:032x}-{_span_id()}-01"


def child(parent: str | None) -> str:
    """A new span of ``parent``'s trace (a new trace when there is none)."""
    found = valid_traceparent(parent)
    if found is None:
        return new_trace()
    _, trace_id, _span, flags = found.split("-")
    return f"00-{trace_id}-{_span_id()}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    found = valid_traceparent(traceparent)
    return found.split("-")[1] if found else None


def traceparent_of(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    for name, value in headers or ():
        if name.lower() == "traceparent" and value:
            with contextlib.suppress(UnicodeDecodeError):
                return valid_traceparent(value.decode("ascii"))
    return None


@contextlib.contextmanager
def use(traceparent: str | None) -> Iterator[str]:
    """Work on behalf of ``traceparent`` (a child span of it) for the block."""
    span = child(traceparent)
    token = TRACE.set(span)
    try:
        yield span
    finally:
        TRACE.reset(token)


def for_message(key: bytes | None, value: bytes | None) -> Headers:
    """The headers of one message Darkroom writes (the current trace included)."""
    import schemas

    out: Headers = []
    if value:
        name = schemas.schema_name_of(value)
        if name is not None:
            out += [("content-type", CONTENT_TYPE.encode()),
                    ("darkroom-schema", name.encode()),
                    ("darkroom-schema-fingerprint", value[2:10][::-1].hex().encode())]
    if key:
        out.append(("darkroom-asset-id", key))
    trace = TRACE.get()
    if trace:
        out.append(("traceparent", trace.encode()))
    return out
