"""Network helpers of the hostile runner: a raw HTTP/1.1 client (requests exactly as the corpus
describes them, no client-side normalisation), the loopback tripwire listener and the allowlisted
webhook receiver."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.hostile.corpus import BOUNDARY, Http, _multipart

# ------------------------------------------------------------------------------ raw client


@dataclass
class HttpResult:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None
    elapsed_s: float = 0.0
    sent_bytes: int = 0

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def detail(self) -> str | None:
        """The JSON ``detail``; for a non-JSON answer (a protocol error the server answers
        before the application sees the request) its non-empty text."""
        data = self.json()
        if isinstance(data, dict) and data.get("detail") not in (None, "", []):
            d = data["detail"]
            return d if isinstance(d, str) else json.dumps(d)[:400]
        if data is None and self.body.strip():
            return self.body.strip()[:400].decode(errors="replace")
        return None

    def summary(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        detail = self.detail()
        text = detail if detail is not None else self.body[:160].decode(errors="replace")
        return f"HTTP {self.status}: {text[:240]}"


def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i: i + size]


def build_request(req: Http, host: str, key: str) -> tuple[bytes, Iterator[bytes], bool]:
    """(head, body parts, chunked) for ``req``."""
    headers: list[tuple[str, bytes]] = [("Host", host.encode()), ("Connection", b"close")]
    body = req.body
    if req.parts is not None:
        body = _multipart(req.parts, BOUNDARY)
        headers.append(("Content-Type", b"multipart/form-data; boundary=" + BOUNDARY))
    headers += list(req.headers)
    if req.auth:
        headers.append(("X-API-Key", key.encode()))
    extra = req.stream_extra
    if req.chunked:
        headers.append(("Transfer-Encoding", b"chunked"))
    elif req.content_length is not None:
        headers.append(("Content-Length", req.content_length))
    elif body or extra or req.method in ("POST", "PUT"):
        headers.append(("Content-Length", str(len(body) + extra).encode()))
    head = f"{req.method} {req.target} HTTP/1.1\r\n".encode()
    head += b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"

    def enc(p: bytes) -> bytes:
        return (f"{len(p):x}\r\n".encode() + p + b"\r\n") if req.chunked else p

    def parts() -> Iterator[bytes]:
        for p in _chunks(body):
            yield enc(p)
        left = extra
        while left > 0:
            n = min(left, 1 << 20)
            left -= n
            yield enc(b"\0" * n)
        if req.chunked:
            yield b"0\r\n\r\n"

    return head, parts(), req.chunked


def exchange(req: Http, host: str, port: int, key: str, timeout: float = 20.0) -> HttpResult:
    """Send ``req`` (the body from a thread, so an early answer is seen) and read the answer."""
    started = time.monotonic()
    head, parts, _ = build_request(req, f"{host}:{port}", key)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return HttpResult(None, {}, b"", f"connect: {exc}")
    sent = [0]
    stop = threading.Event()

    def send() -> None:
        try:
            sock.sendall(head)
            sent[0] += len(head)
            for p in parts:
                if stop.is_set():
                    return
                sock.sendall(p)
                sent[0] += len(p)
        except OSError:
            pass  # the server answered and closed early: fine

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    buf = b""
    try:
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in buf:
            got = sock.recv(65536)
            if not got:
                break
            buf += got
        if b"\r\n\r\n" not in buf:
            return HttpResult(None, {}, buf, "connection closed before an answer",
                              time.monotonic() - started, sent[0])
        raw_head, rest = buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
        status = int(m.group(1)) if m else None
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        length = hdrs.get("content-length")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if length is not None and length.isdigit() and len(rest) >= int(length):
                break
            if hdrs.get("transfer-encoding") == "chunked" and rest.endswith(b"0\r\n\r\n"):
                break
            try:
                got = sock.recv(65536)
            except OSError:
                break
            if not got:
                break
            rest += got
        if hdrs.get("transfer-encoding") == "chunked":
            rest = _dechunk(rest)
        return HttpResult(status, hdrs, rest, None, time.monotonic() - started, sent[0])
    except TimeoutError:
        return HttpResult(None, {}, buf, f"no answer within {timeout:g}s (hang)",
                          time.monotonic() - started, sent[0])
    except OSError as exc:
        return HttpResult(None, {}, buf, f"{type(exc).__name__}: {exc}",
                          time.monotonic() - started, sent[0])
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.close()


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        line, _, data = data.partition(b"\r\n")
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            return out + line + data
        if n == 0:
            break
        out += data[:n]
        data = data[n + 2:]
    return out


# ------------------------------------------------------------------------------ tripwire


@dataclass
class Hit:
    at: float
    peer: str
    first_bytes: bytes

    def case_aid(self) -> str | None:
        m = re.search(rb"/(?:hook|redirected|svg|js|seg\.ts|c\.mp4|x\.jpg)/?([A-Za-z0-9._:-]*)",
                      self.first_bytes)
        return m.group(1).decode() if m and m.group(1) else None


class Tripwire:
    """A TCP listener on 127.0.0.1 and [::1] (same port): any connection is a failure."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        for _ in range(20):
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            try:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::1", port))
            except OSError:
                v4.close()
                continue
            self.socks = [v4, v6]
            self.port = port
            break
        else:
            raise RuntimeError("no port free on both 127.0.0.1 and ::1")
        for s in self.socks:
            s.listen(64)
            s.settimeout(0.2)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = s.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(1.0)
            data = b""
            with contextlib.suppress(OSError):
                data = conn.recv(4096)
            self.hits.append(Hit(time.time(), str(peer), data))
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                conn.close()

    def close(self) -> None:
        self._stop.set()
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------------ receiver


@dataclass
class Received:
    path: str
    body: bytes
    at: float = field(default_factory=time.time)


class AllowedReceiver:
    """An allowlisted webhook receiver on 127.0.0.2: /ok/<aid> 200, /fail/<aid> 500,
    /redirect/<aid> 302 to the tripwire, /redirect-localhost/<aid> 302 to localhost:<tripwire>,
    /redirect-private/<aid> 302 to the cloud metadata address."""

    def __init__(self, tripwire_port: int, host: str = "127.0.0.2") -> None:
        self.received: list[Received] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                rec.received.append(Received(self.path, body))
                route = self.path.split("/")[1] if self.path.count("/") >= 1 else ""
                aid = self.path.rsplit("/", 1)[-1]
                location = {
                    "redirect": f"http://127.0.0.1:{tripwire_port}/redirected/{aid}",
                    "redirect-localhost": f"http://localhost:{tripwire_port}/redirected/{aid}",
                    "redirect-private": "http://169.254.169.254/latest/meta-data/",
                }.get(route)
                if location:
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 500 if route == "fail" else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def got(self, path: str) -> bool:
        return any(r.path == path for r in self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
