"""The upload API against hostile clients, over real HTTP against a real `darkroom api` process.

Each case of the attacker's corpus gets its exact answer (status and a detail naming the limit),
and every refused request leaves nothing behind: no object, no asset row, no spool file. The
API runs without a worker (it only needs the broker), with small timeouts so the stalling
clients are cheap to test: body 2 s, body deadline 6 s, headers 2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agents.api.app import guard_config
from agents.api.guards import MULTIPART_ALLOWANCE, RequestGuard, hash_key
from agents.policy import limits
from agents.settings import Settings
from sinks.store.metadata import MetadataStore, assets
from tests.conftest import ROOT, WorkerEnv
from tests.integration.api.test_api import KEY, Api, jpeg, stored_objects

pytestmark = pytest.mark.integration

MAX_UPLOAD = 300_000
MAX_PIXELS = 4_000_000
BODY_TIMEOUT_S = 2
BODY_DEADLINE_S = 6
HEADER_TIMEOUT_S = 2
BOUNDARY = "hostile-boundary"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hostile_env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> WorkerEnv:
    """The environment of a worker, but no worker: the API alone stores and publishes."""
    base = tmp_path_factory.mktemp("hostile")
    inbox = base / "inbox"
    inbox.mkdir()
    env = {
        **os.environ,
        "DARKROOM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DARKROOM_DATA_DIR": str(base / "data"),
        "DARKROOM_FILE_ROOTS": json.dumps([str(inbox)]),
        "DARKROOM_POSTPROCESS_CONFIG": str(ROOT / "tests/fixtures/pp_api.yaml"),
        "DARKROOM_TOPIC_PREFIX": "hostiletest",
        "DARKROOM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "DARKROOM_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
        "DARKROOM_API_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "DARKROOM_API_BODY_DEADLINE_S": str(BODY_DEADLINE_S),
        "DARKROOM_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "DARKROOM_LOG_LEVEL": "info",
    }
    return WorkerEnv(kafka_bootstrap, base / "data", inbox, env)


@pytest.fixture(scope="module")
def api(hostile_env: WorkerEnv) -> Iterator[Api]:
    a = Api(hostile_env, "hostile")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def store(api: Api, hostile_env: WorkerEnv) -> Iterator[MetadataStore]:
    s = hostile_env.store()
    yield s
    s.close()


def _asset_rows(store: MetadataStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(assets)).scalar_one())


def _spooled(env: WorkerEnv) -> list[Path]:
    return list((env.data_dir / "tmp").glob("upload-*"))


@pytest.fixture
def nothing_stored(api: Api, hostile_env: WorkerEnv, store: MetadataStore) -> Iterator[None]:
    """After the test: no new object, no new asset row, no spool file left."""
    objects, rows = set(stored_objects(hostile_env)), _asset_rows(store)
    yield
    deadline = time.monotonic() + 5  # a refused upload's temp file goes when its task ends
    while _spooled(hostile_env) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(stored_objects(hostile_env)) == objects
    assert _asset_rows(store) == rows
    assert not _spooled(hostile_env)


# ------------------------------------------------------------------------------- helpers
def multipart(parts: list[tuple[bytes, bytes, bytes | None]], *, close: bool = True) -> bytes:
    """A multipart/form-data body written byte for byte (invalid UTF-8 included)."""
    out = b""
    for name, value, filename in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += (b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition
                + b"\r\n\r\n" + value + b"\r\n")
    return out + (b"--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


def post_raw(api: Api, body: bytes, *, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if key is not None:
        headers["X-API-Key"] = key
    with httpx.Client(base_url=api.url, timeout=30) as c:
        return c.post("/v1/assets", content=body, headers=headers)


def request_head(api: Api, path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{api.port}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def connect(api: Api) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=10)


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def detail(self) -> str:
        return str(json.loads(self.body)["detail"])


def read_answer(sock: socket.socket, started: float, timeout: float = 15) -> RawAnswer:
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before an answer: {buf!r}"
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return RawAnswer(int(status_line.split()[1]), headers, body, time.monotonic() - started)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection (FIN or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def png_header(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A PNG whose header claims width x height RGB at bit_depth (the pixel data is a stub:
    only a decode would notice)."""
    def part(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + part(b"IHDR", ihdr)
            + part(b"IDAT", zlib.compress(b"\x00" * 4096)) + part(b"IEND", b""))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ------------------------------------------------------------------ form field limits: 400
_NESTED = '{"a":' * 100_000 + '"x"' + "}" * 100_000
_LIMIT_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "folder-964-chars": ({"folder": "/" + "/".join(["f" * 30] * 31)},
                         "'folder' is more than 512 bytes long; the limit is 512"),
    "folder-300-char-segment": ({"folder": "/users/" + "s" * 300},
                                "is longer than 128 bytes"),
    "folder-33-levels": ({"folder": "/" + "/".join("d" * 33)}, "33 levels; the limit is 32"),
    "9900-tags-comma-separated": ({"tags": ",".join(f"t{i}" for i in range(9900))},
                                  "9900 tags; the limit is 100"),
    "150-tag-fields": ({"tags": [f"t{i}" for i in range(150)]}, "the limit is 100"),
    "9900-tag-fields": ({"tags": [f"t{i}" for i in range(9900)]}, "101 tags; the limit is 100"),
    "200-unknown-fields": ({"x": ["1"] * 200},
                           f"more than {limits.MAX_TAGS + limits.MAX_POSTPROCESS + 16} form parts"),
    "tag-257-chars": ({"tags": "x" * 257}, "257 characters long; the limit is 256"),
    "tag-control-char": ({"tags": "bell\x07"}, "contains control characters"),
    "context-100000-deep": ({"context": _NESTED},
                            "'context' is more than 131072 bytes long; the limit is 131072"),
    "context-30000-brackets": ({"context": '{"a":' + "[" * 30000 + "]" * 30000 + "}"},
                               "nests objects or arrays 30001 levels deep"),
    "context-nested-object": ({"context": '{"a": {"b": "c"}}'},
                              "must be a flat JSON object of strings"),
    "context-lone-surrogate": ({"context": '{"a":"\\udc80"}'}, "is not valid UTF-8 text"),
    "context-number": ({"context": '{"a": 1}'}, "value of 'a' must be a string"),
    "context-huge-integer": ({"context": '{"a": ' + "9" * 5000 + "}"}, "not valid JSON"),
    "context-101-entries": ({"context": json.dumps({f"k{i}": "v" for i in range(101)})},
                            "101 entries; the limit is 100"),
    "context-pairs-too-big": ({"context": "|".join(f"k{i}=" + "v" * 1000 for i in range(17))},
                              "the limit is 16384"),
    "context-not-pairs": ({"context": "novalue"}, "is not key=value"),
    "on-success-64KiB+1": ({"on_success": "x" * (64 * 1024 + 1)}, "the limit is 65536"),
    "51-postprocesses": ({"postprocess": ",".join(f"p{i}" for i in range(51))},
                         "51 postprocess names; the limit is 50"),
    "notification-url-percent-host": ({"notification_url": "http://%31%32%37.0.0.1/hook"},
                                      "notification_url host '%31%32%37.0.0.1' is not a valid "
                                      "DNS name or IP address"),
    "notification-url-scheme": ({"notification_url": "file:///etc/passwd"},
                                "must be an http:// or https:// URL"),
    "notification-url-ipv6-loopback": ({"notification_url": "http://[::1]/hook"},
                                       "::1 is a loopback address"),
    "notification-url-hex-loopback": ({"notification_url": "http://0x7f000001:9/hook"},
                                      "0x7f000001 resolves to 127.0.0.1, which is a loopback"),
    "notification-url-localhost": ({"notification_url": "http://LocalHost./hook"},
                                   "host 'localhost' is a loopback name"),
    "notification-url-metadata": ({"notification_url": "http://169.254.169.254/latest"},
                                  "169.254.169.254 is a"),
    "mode": ({"mode": "fast"}, "mode must be one of async, sync"),
    "unknown-field-too-big": ({"junk": "j" * 5000}, "'junk' is more than 4096 bytes long"),
}


@pytest.mark.parametrize("case", list(_LIMIT_CASES))
def test_form_field_over_its_limit_is_400_naming_it(api: Api, nothing_stored: None,
                                                    case: str) -> None:
    form, detail = _LIMIT_CASES[case]
    r = api.upload(jpeg(64, 64), **form)
    assert r.status_code == 400, r.text
    assert detail in r.json()["detail"], r.json()


@pytest.mark.parametrize("field", [b"folder", b"tags", b"context", b"postprocess", b"mode"])
def test_invalid_utf8_in_a_field_is_400(api: Api, nothing_stored: None, field: bytes) -> None:
    value = b'{"a":"\xff\xfe"}' if field == b"context" else b"caf\xe9"
    r = post_raw(api, multipart([(field, value, None), (b"file", jpeg(32, 32), b"x.jpg")]))
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(f"form field '{field.decode()}' is not valid UTF-8")


def test_invalid_utf8_in_a_file_or_field_name_is_400(api: Api, nothing_stored: None) -> None:
    r = post_raw(api, multipart([(b"file", jpeg(32, 32), b"caf\xe9.jpg")]))
    assert r.status_code == 400 and "the file name is not valid UTF-8" in r.json()["detail"]
    r = post_raw(api, multipart([(b"fol\xffder", b"/x", None),
                                 (b"file", jpeg(32, 32), b"x.jpg")]))
    assert r.status_code == 400 and "a form field name is not valid UTF-8" in r.json()["detail"]


@pytest.mark.parametrize(("name", "detail"), [
    ("é" * 150 + ".jpg", "filename is longer than 255 bytes"),  # 154 characters, 304 bytes
    # 218 bytes: local storage writes .<name>.<32 hex>.tmp first (this was a 500)
    ("é" * 106 + "xx.jpg", f"filename is 218 bytes long; the limit is "
     f"{limits.MAX_STORED_FILENAME_BYTES}"),
])
def test_file_name_too_long_to_store_is_400(api: Api, nothing_stored: None, name: str,
                                            detail: str) -> None:
    r = api.upload(jpeg(32, 32), name=name)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == detail


@pytest.mark.parametrize(("body", "ctype", "code", "detail"), [
    (b"folder=/x", "application/x-www-form-urlencoded", 415, "must be multipart/form-data"),
    (b"", "multipart/form-data", 400, "has no boundary"),
    (multipart([(b"folder", b"/x", None)]), None, 422, "the form has no 'file' part"),
    (multipart([(b"file", b"abc", b"a"), (b"file", b"abc", b"b")]), None, 400,
     "more than one 'file' part"),
    (multipart([(b"file", jpeg(16, 16), b"x.jpg")], close=False), None, 400,
     "ended before its closing boundary"),
    (b"garbage without any boundary", None, 400, "malformed multipart/form-data"),
])
def test_malformed_forms_are_4xx(api: Api, nothing_stored: None, body: bytes, ctype: str | None,
                                 code: int, detail: str) -> None:
    headers = {"X-API-Key": KEY,
               "Content-Type": ctype or f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(base_url=api.url, timeout=30) as c:
        r = c.post("/v1/assets", content=body, headers=headers)
    assert r.status_code == code, r.text
    assert detail in r.json()["detail"]


def test_notification_url_allowlist_exempts_literals() -> None:
    from agents.api.app import notification_url

    assert notification_url("http://127.0.0.1:9/h", ["127.0.0.1"]) == "http://127.0.0.1:9/h"
    assert notification_url("http://localhost/h", ["localhost"]) == "http://localhost/h"
    assert notification_url("https://hooks.example.com/h", []) == "https://hooks.example.com/h"
    with pytest.raises(limits.LimitError, match="private address"):
        notification_url("http://10.1.2.3/h", ["127.0.0.1"])


@pytest.mark.parametrize(("head", "code", "detail"), [
    (b"POST /v1/assets HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     "Invalid HTTP request received. (malformed, or"),
    # one read holds it all: h11 parses it, the guard counts it
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431,
     "the limit is 16384"),
    # still incomplete past h11's buffer limit
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 300_000, 400, "too large"),
])
def test_unparsable_or_huge_request_heads_get_a_json_4xx(api: Api, head: bytes, code: int,
                                                         detail: str) -> None:
    sock = connect(api)
    started = time.monotonic()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(head)  # the server may answer and close while we are still sending
    answer = read_answer(sock, started)
    assert answer.status == code and detail in answer.detail
    assert answer.headers["content-type"] == "application/json" and closed_within(sock, 15)
    sock.close()


# --------------------------------------------------------------- valid uploads at the limits
def _at_limit(size: int) -> bytes:
    data = jpeg(64, 64)
    return data + b"\0" * (size - len(data))  # bytes after the JPEG's end: still a JPEG


def test_uploads_with_every_field_at_its_limit_are_accepted(api: Api, store: MetadataStore
                                                             ) -> None:
    folder = "/" + "/".join(["f" * 127] * 4)  # 512 bytes, 128-byte levels
    tags = [f"{i:03d}" + "t" * 253 for i in range(100)]  # 100 tags of 256 characters
    context = {f"k{i:02d}": "é" * 80 for i in range(100)}  # 100 entries, 16,300 bytes
    # 50 names (the limit), each one this deployment knows: unknown names are refused
    names = ["blurhash", "Dominant-Colors", "validate-image", "BLURHASH", "nsfw"] * 10
    url = "https://example.com/" + "u" * (limits.MAX_URL - 20)
    form = {"folder": folder, "tags": tags, "context": json.dumps(context),
            "postprocess": names, "on_success": "x" * limits.MAX_ON_SUCCESS_BYTES,
            "notification_url": url, "mode": "async"}
    name = "é" * 106 + "x.jpg"  # 217 bytes
    r = api.upload(_at_limit(MAX_UPLOAD), name=name, **form)
    assert r.status_code == 202, r.text
    got = api.client.get(r.json()["location"]).json()
    assert got["folder"] == folder and got["tags"] == tags and got["context"] == context
    assert got["filename"] == name and got["size_bytes"] == MAX_UPLOAD


def test_escaped_context_and_deepest_folder_at_their_limits_are_accepted(api: Api) -> None:
    context = {f"c{i:02d}": "\x01" * 1024 for i in range(15)}  # 15,405 bytes, ~92 KB as JSON
    folder = "/" + "/".join("d" * 32)
    r = api.upload(jpeg(80, 60), folder=folder, context=json.dumps(context),
                   tags=",".join(f"t{i}" for i in range(100)))
    assert r.status_code == 202, r.text
    got = api.client.get(r.json()["location"]).json()
    assert got["context"] == context and got["folder"] == folder and len(got["tags"]) == 100


def test_pipe_context_is_still_accepted(api: Api) -> None:
    r = api.upload(jpeg(40, 40), context="source=cam|owner=ana=b")
    assert r.status_code == 202, r.text
    got = api.client.get(r.json()["location"]).json()
    assert got["context"] == {"source": "cam", "owner": "ana=b"}


# ------------------------------------------------------- key before body, body byte count
@pytest.mark.parametrize("path", ["/v1/assets", "/v1/similar"])
def test_unauthenticated_chunked_upload_gets_401_before_the_body(api: Api, nothing_stored: None,
                                                                 path: str) -> None:
    """The attacker's 115 MB without Content-Length: answered from the headers alone."""
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, path, {
        "Transfer-Encoding": "chunked",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
    sent = 0
    piece = chunk(b"\0" * 65536)
    while sent < 115_000_000 and not readable(sock, 0.2):
        sock.sendall(piece)
        sent += len(piece)
    answer = read_answer(sock, started)
    assert answer.status == 401
    assert answer.detail == "missing API key (X-API-Key header)"
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.headers["connection"] == "close"
    assert sent <= len(piece), f"the server let {sent} body bytes come before answering"
    assert closed_within(sock, 15)
    sock.close()


def test_wrong_key_with_a_huge_content_length_gets_401_at_once(api: Api,
                                                               nothing_stored: None) -> None:
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, "/v1/assets", {
        "X-API-Key": "nope", "Content-Length": "115000000",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
    answer = read_answer(sock, started)
    assert answer.status == 401 and answer.detail == "invalid API key"
    assert answer.elapsed < 10
    assert closed_within(sock, 15)
    sock.close()


def test_announced_oversize_body_gets_413_before_reading(api: Api, nothing_stored: None) -> None:
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, "/v1/assets", {
        "X-API-Key": KEY, "Content-Length": str(MAX_UPLOAD + MULTIPART_ALLOWANCE + 1),
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
    answer = read_answer(sock, started)
    assert answer.status == 413 and answer.detail == f"upload larger than {MAX_UPLOAD} bytes"
    assert answer.elapsed < 10 and closed_within(sock, 15)
    sock.close()


@pytest.mark.parametrize(("path", "detail"), [
    ("/v1/assets", f"upload larger than {MAX_UPLOAD} bytes"),
    ("/v1/similar", f"query image larger than {MAX_UPLOAD} bytes"),
])
def test_chunked_oversize_upload_gets_413_once_past_the_limit(
        api: Api, nothing_stored: None, path: str, detail: str) -> None:
    """With a key, a chunked body is counted byte by byte: 413 soon after the limit, not after
    the 27 MB that used to be spooled first."""
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, path, {
        "X-API-Key": KEY, "Transfer-Encoding": "chunked",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
    sock.sendall(chunk(multipart([(b"file", b"", b"big.jpg")], close=False)[:-2]))
    sent = 0
    piece = chunk(b"\xff" * 65536)
    try:
        while sent < 27_000_000 and not readable(sock, 0.01):
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = read_answer(sock, started)
    assert answer.status == 413 and answer.detail == detail
    assert answer.headers["connection"] == "close"
    assert sent < MAX_UPLOAD + MULTIPART_ALLOWANCE + 4 * 2**20, sent  # + socket buffers
    sock.close()


# ---------------------------------------------------------------------------- timeouts
def test_lying_content_length_costs_the_body_timeout(api: Api, nothing_stored: None) -> None:
    """Content-Length promises 100 kB more than is sent: 408 after the body timeout."""
    body = multipart([(b"folder", b"/x", None), (b"file", jpeg(32, 32), b"x.jpg")], close=False)
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, "/v1/assets", {
        "X-API-Key": KEY, "Content-Length": str(len(body) + 100_000),
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}) + body)
    answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.detail == f"no request body bytes for {BODY_TIMEOUT_S} s"
    assert BODY_TIMEOUT_S <= answer.elapsed < BODY_TIMEOUT_S + 15, answer.elapsed
    assert closed_within(sock, 15)
    sock.close()


def test_dripping_body_is_cut_at_the_deadline(api: Api, nothing_stored: None) -> None:
    """A byte every half second never trips the idle timeout; the deadline ends it."""
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(request_head(api, "/v1/assets", {
        "X-API-Key": KEY, "Content-Length": "100000",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        + multipart([(b"file", b"", b"x.jpg")], close=False)[:-2])
    while not readable(sock, 0.5):
        sock.sendall(b"x")
        assert time.monotonic() - started < BODY_DEADLINE_S + 3, "no answer"
    answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.detail == f"request body not complete within {BODY_DEADLINE_S} s"
    assert BODY_DEADLINE_S <= answer.elapsed < BODY_DEADLINE_S + 15, answer.elapsed
    assert closed_within(sock, 15)
    sock.close()


def test_slowloris_headers_are_cut_at_the_header_timeout(api: Api) -> None:
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(b"POST /v1/assets HTTP/1.1\r\nHost: x\r\n")
    n = 0
    while not readable(sock, 0.25):
        sock.sendall(f"X-Slow-{n}: a\r\n".encode())
        n += 1
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3, "still open"
    answer = read_answer(sock, started)
    assert answer.status == 408 and answer.detail == "request headers not complete in time"
    assert HEADER_TIMEOUT_S <= answer.elapsed < HEADER_TIMEOUT_S + 15, answer.elapsed
    assert closed_within(sock, 15)
    sock.close()


def test_silent_connection_is_closed_at_the_header_timeout(api: Api) -> None:
    sock = connect(api)
    started = time.monotonic()
    assert closed_within(sock, HEADER_TIMEOUT_S + 15)
    assert HEADER_TIMEOUT_S <= time.monotonic() - started < HEADER_TIMEOUT_S + 1.5
    sock.close()


def test_keep_alive_still_serves_several_requests(api: Api) -> None:
    with httpx.Client(base_url=api.url, headers={"X-API-Key": KEY}, timeout=10) as c:
        first = c.get("/healthz")
        time.sleep(HEADER_TIMEOUT_S / 2)
        r = c.post("/v1/assets", files={"file": ("k.jpg", jpeg(20, 20))})
        assert first.status_code == 200 and r.status_code == 202, r.text
        assert r.headers.get("connection") != "close"


# ------------------------------------------------------------------- similarity, faces
def test_similarity_query_refuses_a_100mp_16bit_png_before_decoding(api: Api) -> None:
    peak = peak_rss_kib(api.proc.pid)
    r = api.client.post("/v1/similar", files={"file": ("bomb.png", png_header(10_000, 10_000))})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == ("query image is 10000x10000 = 100000000 pixels, over the "
                                  f"limit of {MAX_PIXELS} (decompression bomb guard)")
    assert peak_rss_kib(api.proc.pid) - peak < 100 * 1024, "the API decoded the pixels"


@pytest.mark.parametrize(("query", "code"), [
    ("offset=120158013307999799060944489731837657088", 422), (f"offset={2**31}", 422),
    ("offset=-1", 422), (f"offset={2**31 - 1}", 200), ("limit=501", 422),
])
def test_face_cluster_paging_is_bounded(api: Api, query: str, code: int) -> None:
    r = api.client.get(f"/v1/faces/clusters?{query}")
    assert r.status_code == code, r.text
    if code == 200:
        assert r.json()["items"] == []


@pytest.mark.parametrize(("params", "code"), [
    ({"cursor": "c" * 129}, 422), ({"folder": "/" + "x" * 600}, 422),
    ({"folder": "/" + "/".join("d" * 33)}, 400), ({"status": "s" * 33}, 422),
])
def test_asset_listing_bounds_its_query(api: Api, params: dict[str, str], code: int) -> None:
    assert api.client.get("/v1/assets", params=params).status_code == code


def test_open_routes_need_no_key(api: Api) -> None:
    with httpx.Client(base_url=api.url, timeout=10) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 200, path
        r = c.get("/v1/faces/clusters")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "missing API key (X-API-Key header)"}


# ---------------------------------------------- the guard itself, byte-exact, without HTTP
def _guard_settings() -> Settings:
    return Settings(max_upload_bytes=MAX_UPLOAD, api_key_hashes=[hash_key(KEY)],
                    api_body_timeout_s=1, api_body_deadline_s=5)


async def _drive(headers: list[tuple[bytes, bytes]], path: str = "/v1/assets"
                 ) -> tuple[int, list[dict[str, Any]]]:
    """Run the guard over an app that reads the whole body from an endless 64 KiB-chunk
    client; return how many chunks the client was asked for, and what was sent."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, rcv: Any, snd: Any) -> None:
        while (await rcv())["type"] == "http.request":
            pass
        await snd({"type": "http.response.start", "status": 400, "headers": []})
        await snd({"type": "http.response.body", "body": b"{}"})

    guard = RequestGuard(app, guard_config(_guard_settings()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await guard(scope, receive, send)
    return pulled, sent


async def test_guard_reads_no_body_byte_without_a_key() -> None:
    pulled, sent = await _drive([(b"transfer-encoding", b"chunked")])
    assert pulled == 0
    assert sent[0]["status"] == 401 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"detail": "missing API key (X-API-Key header)"}


async def test_guard_counts_chunked_bytes_to_the_limit() -> None:
    pulled, sent = await _drive([(b"x-api-key", KEY.encode()),
                                 (b"transfer-encoding", b"chunked")])
    limit = MAX_UPLOAD + MULTIPART_ALLOWANCE
    assert pulled == limit // 65536 + 1  # the first chunk past the limit, not one more
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": f"upload larger than {MAX_UPLOAD} bytes"}


def test_limits_context_json_has_no_recursion() -> None:
    deep = "[" * 1_000_000
    with pytest.raises(limits.LimitError, match="the limit is 131072"):
        limits.context_json(deep)
    assert limits.json_depth(deep) == 1_000_000
    assert limits.json_depth('{"a\\"{[": "]}\\\\", "b": "c"}') == 1
    assert limits.context_json('{"a": "\\u0001"}') == {"a": "\x01"}

