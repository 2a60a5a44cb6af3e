"""What one hostile HTTP client can make the upload API spend, bounded below the application.

FastAPI resolves ``Form``/``File`` parameters (reading and spooling the whole body) before it runs
any dependency, and uvicorn's h11 server waits for headers and bodies for ever. So the guards
sit underneath, where they see every byte:

* :class:`RequestGuard` (pure ASGI middleware): request line + headers over
  ``max_header_bytes`` get 431; the API key of ``/v1`` routes is checked before a body byte is
  read (401); a ``Content-Length`` over the route's limit gets 413 at once; every
  body byte, chunked included, is counted (413 as soon as the count passes the limit); a body
  that stalls (``body_timeout_s`` without a byte) or drips (not complete after
  ``body_deadline_s``) gets 408. Refusals carry ``Connection: close``: the server stops reading
  instead of draining what the client still sends.
* :func:`h11_protocol`: a header deadline per request (slowloris: a client trickling header bytes
  holds a connection for ``header_timeout_s`` at most).
* :func:`parse_strict_form`: a streaming multipart parser (python-multipart) that decodes every
  field as strict UTF-8 (Starlette falls back to Latin-1: mojibake), bounds every field, part
  header and part count as the bytes arrive, and streams the one file part to a temp file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import h11
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

    from agents.settings import Settings

log = logging.getLogger("darkroom.api.guards")

MULTIPART_ALLOWANCE: Final = 1 << 20
"""Body bytes allowed on top of the upload's file limit: every form field at its maximum
(~330 KiB, see :data:`agents.api.app.FIELD_CAPS`), part headers (128 KiB) and boundaries."""
SMALL_BODY: Final = 64 * 1024
"""The body limit of routes that take no upload."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_protected(path: str) -> bool:
    """Every ``/v1`` route needs a key; ``/healthz``, ``/readyz``, ``/metrics``,
    ``/openapi.json`` and ``/docs`` stay open."""
    return path == "/v1" or path.startswith("/v1/")


def key_problem(key: str | None, authorization: str | None,
                key_hashes: frozenset[str]) -> str | None:
    """Why the request's key (``X-API-Key`` or ``Authorization: Bearer``) is refused, or None."""
    if key is None and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        return "missing API key (X-API-Key header)"
    digest = hash_key(key)
    if not any(hmac.compare_digest(digest, h) for h in key_hashes):
        return "invalid API key"
    return None


async def send_problem(send: Send, status: int, detail: str,
                       headers: Mapping[str, str] | None = None) -> None:
    """A ``{"detail": ...}`` JSON answer, the shape FastAPI gives its HTTPExceptions."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass(frozen=True)
class BodyLimit:
    """The most body bytes a route takes, and the 413 detail that names the limit."""

    max_bytes: int
    detail: str


@dataclass(frozen=True)
class GuardConfig:
    key_hashes: frozenset[str]
    body_limits: Mapping[tuple[str, str], BodyLimit]  # (method, path) -> limit
    default_limit: BodyLimit
    body_timeout_s: float
    body_deadline_s: float
    max_header_bytes: int = 16 * 1024

    def limit_for(self, scope: Scope) -> BodyLimit:
        return self.body_limits.get((scope["method"], scope["path"]), self.default_limit)


def _may_have_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


class _Reply:
    """The application's ``send``, unless the guard answered first: then the application's
    own answer (a 400 for the body it could not read, say) is dropped. An answer given before
    the body was read to its end closes the connection: uvicorn would otherwise read and
    discard the rest of it, however long the client keeps sending."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.refused = False
        self.body_complete: Callable[[], bool] = lambda: True

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            if not self.body_complete():
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"connection", b"close")]}
        await self._send(message)

    async def refuse(self, status: int, detail: str) -> None:
        if self.refused:
            return
        self.refused = True
        if not self.started:  # else the response is cut short and uvicorn closes
            await send_problem(self._send, status, detail, {"Connection": "close"})


class _BodyMeter:
    """``receive`` with a byte count and timeouts while the body is incomplete; after a
    refusal the application sees a disconnect (and stops reading)."""

    def __init__(self, receive: Receive, reply: _Reply, limit: BodyLimit,
                 config: GuardConfig, *, has_body: bool) -> None:
        self._receive = receive
        self._reply = reply
        self._limit = limit
        self._idle_s = config.body_timeout_s
        self._deadline_s = config.body_deadline_s
        self._deadline = time.monotonic() + config.body_deadline_s
        self.count = 0
        self.complete = not has_body

    async def receive(self) -> Message:
        if self._reply.refused:
            return {"type": "http.disconnect"}
        if self.complete:
            return await self._receive()
        left = self._deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), min(self._idle_s, max(left, 0)))
        except TimeoutError:
            await self._reply.refuse(408, self._timeout_detail(left))
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.count += len(message.get("body", b""))
            if self.count > self._limit.max_bytes:
                await self._reply.refuse(413, self._limit.detail)
                return {"type": "http.disconnect"}
            self.complete = not message.get("more_body", False)
        return message

    def _timeout_detail(self, left: float) -> str:
        if left <= self._idle_s:
            return f"request body not complete within {self._deadline_s:g} s"
        return f"no request body bytes for {self._idle_s:g} s"


def _head_size(scope: Scope) -> int:
    """The request line and headers as sent, about: h11 bounds them only while they are
    incomplete, so a large head that arrives in one read would pass."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


class RequestGuard:
    """Key check, body size limit and body timeouts before the application reads a byte."""

    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.config.limit_for(scope)
        if await self._refused_early(scope, headers, limit, send):
            return
        reply = _Reply(send)
        meter = _BodyMeter(receive, reply, limit, self.config, has_body=_may_have_body(headers))
        reply.body_complete = lambda: meter.complete
        try:
            await self.app(scope, meter.receive, reply.send)
        except Exception:
            if not reply.refused:
                raise
            log.debug("%s %s ended after the guard answered", scope["method"], scope["path"],
                      exc_info=True)

    async def _refused_early(self, scope: Scope, headers: Headers, limit: BodyLimit,
                             send: Send) -> bool:
        """401 / 413 from the headers alone; ``Connection: close`` when a body may follow, so
        the server reads none of it."""
        close = {"Connection": "close"} if _may_have_body(headers) else {}
        size = _head_size(scope)
        if size > self.config.max_header_bytes:
            await send_problem(send, 431, f"request line and headers are {size} bytes; the "
                               f"limit is {self.config.max_header_bytes}", close)
            return True
        if is_protected(scope["path"]):
            problem = key_problem(headers.get("x-api-key"), headers.get("authorization"),
                                  self.config.key_hashes)
            if problem is not None:
                await send_problem(send, 401, problem, {"WWW-Authenticate": "Bearer", **close})
                return True
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit.max_bytes:
            await send_problem(send, 413, limit.detail, close)
            return True
        return False


# --- uvicorn: header deadline and server options -------------------------------------------

_HEADER_TIMEOUT_BODY: Final = b'{"detail": "request headers not complete in time"}'
HEADER_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_HEADER_TIMEOUT_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _HEADER_TIMEOUT_BODY)


def h11_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn arms no timer before the first request, and its keep-alive timer is cancelled by
    the first byte of the next one, so a client sending a header byte now and then holds the
    connection for good. The deadline runs from the connection (or the previous response) to
    the end of the headers, however the bytes trickle in; past it, 408 and close (silently if
    not a byte came: that is an idle connection, and a 408 could pass for the next answer).
    """

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _got_bytes = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._got_bytes = True
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request h11 cannot parse (a bad Content-Length, headers
            over DARKROOM_API_MAX_HEADER_BYTES), as JSON ``{"detail": ...}`` like the rest."""
            body = json.dumps({"detail": f"{msg} (malformed, or its request line and headers "
                               "are too large)"}).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._got_bytes = False
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._got_bytes:
                self.transport.write(HEADER_TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderDeadlineProtocol


def server_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.run`` options of the API's connection-level guards."""
    return {
        "http": h11_protocol(settings.api_header_timeout_s),
        "timeout_keep_alive": settings.api_keep_alive_s,
        "h11_max_incomplete_event_size": settings.api_max_header_bytes,
        "limit_concurrency": settings.api_limit_concurrency,
    }


# --- strict multipart ------------------------------------------------------------------------


class FormError(Exception):
    """A refused form: the status (400, 413, 415) and a detail naming the limit."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class FormSpec:
    """What :func:`parse_strict_form` admits. ``field_caps`` bound the raw bytes of each named
    field (all its repetitions together); other names get ``other_cap``; ``max_text_bytes``
    bounds every non-file byte (part headers included)."""

    file_field: str
    max_file_bytes: int
    field_caps: Mapping[str, int]
    other_cap: int
    max_text_bytes: int
    max_parts: int
    spool_dir: Path


@dataclass
class FilePart:
    path: Path
    size: int
    filename: str | None


@dataclass
class StrictForm:
    fields: list[tuple[str, str]] = field(default_factory=list)
    file: FilePart | None = None


def strict_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormError(400, f"{what} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"{exc.start})") from exc


class _StrictMultipart:
    """python-multipart callbacks that enforce a :class:`FormSpec` as the bytes arrive."""

    def __init__(self, spec: FormSpec, on_field: Callable[[str, str], None]) -> None:
        self.spec = spec
        self.on_field = on_field
        self.form = StrictForm()
        self.ended = False
        self.pending: list[bytes] = []  # file bytes parsed but not yet written
        self._fd: int | None = None
        self._parts = 0
        self._text_bytes = 0
        self._field_bytes: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_end": self.end}

    def _count_text(self, n: int) -> None:
        self._text_bytes += n
        if self._text_bytes > self.spec.max_text_bytes:
            raise FormError(400, f"the form fields hold more than {self.spec.max_text_bytes} "
                            "bytes; that is the limit")

    def part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.spec.max_parts:
            raise FormError(400, f"more than {self.spec.max_parts} form parts; that is the limit")
        self._reset()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_text(end - start)
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_text(end - start)
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise FormError(400, 'a form part has no Content-Disposition "name"')
        self._name = strict_utf8(options[b"name"], "a form field name")
        if self._name != self.spec.file_field:
            return
        if self.form.file is not None:
            raise FormError(400, f"more than one {self.spec.file_field!r} part")
        raw_name = options.get(b"filename")
        filename = None if raw_name is None else strict_utf8(raw_name, "the file name")
        self._fd, name = tempfile.mkstemp(dir=self.spec.spool_dir, prefix="upload-")
        self.form.file = FilePart(Path(name), 0, filename)
        self._is_file = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._file_data(data[start:end])
            return
        cap = self.spec.field_caps.get(self._name, self.spec.other_cap)
        size = self._field_bytes.get(self._name, 0) + end - start
        if size > cap:
            raise FormError(400, f"form field {self._name[:40]!r} is more than {cap} bytes "
                            f"long; the limit is {cap}")
        self._field_bytes[self._name] = size
        self._count_text(end - start)
        self._data += data[start:end]

    def _file_data(self, chunk: bytes) -> None:
        assert self.form.file is not None
        self.form.file.size += len(chunk)
        if self.form.file.size > self.spec.max_file_bytes:
            raise FormError(413, f"upload larger than {self.spec.max_file_bytes} bytes")
        self.pending.append(chunk)

    def part_end(self) -> None:
        if self._is_file:
            return
        value = strict_utf8(bytes(self._data), f"form field {self._name[:40]!r}")
        try:
            self.on_field(self._name, value)
        except ValueError as exc:  # limits.LimitError and normalize_folder's refusals
            raise FormError(400, str(exc)) from exc
        self.form.fields.append((self._name, value))

    def end(self) -> None:
        self.ended = True

    async def flush(self, force: bool = False) -> None:
        """Write parsed file bytes to the spool file (in a thread once a MiB has gathered)."""
        if self._fd is None or not self.pending:
            return
        if force or sum(map(len, self.pending)) >= 1 << 20:
            data, self.pending = b"".join(self.pending), []
            await asyncio.to_thread(_write_all, self._fd, data)

    def close(self, *, discard: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if discard and self.form.file is not None:
            self.form.file.path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _multipart_parser(headers: Headers, callbacks: MultipartCallbacks) -> MultipartParser:
    ctype, params = parse_options_header(headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise FormError(415, "the body must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError(400, "the multipart/form-data Content-Type has no boundary")
    try:
        return MultipartParser(boundary, callbacks)
    except FormParserError as exc:
        raise FormError(400, f"malformed multipart/form-data: {exc}") from exc


async def parse_strict_form(headers: Headers, stream: AsyncIterator[bytes], spec: FormSpec,
                            on_field: Callable[[str, str], None]) -> StrictForm:
    """Parse a multipart body under ``spec``; ``on_field(name, value)`` sees each text field as
    soon as its part ends (so a bad field is refused before the file behind it is read) and may
    raise ValueError (400). The caller owns (and deletes) the returned file; on any error it is
    already gone."""
    state = _StrictMultipart(spec, on_field)
    parser = _multipart_parser(headers, state.callbacks())
    try:
        async for chunk in stream:
            if state.ended:  # an epilogue: read to the end (bounded by the guard), keep-alive
                continue
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise FormError(400, f"malformed multipart/form-data: {exc}") from exc
            await state.flush()
        if not state.ended:
            raise FormError(400, "the multipart body ended before its closing boundary")
        await state.flush(force=True)
    except BaseException:
        state.close(discard=True)
        raise
    state.close(discard=False)
    return state.form
