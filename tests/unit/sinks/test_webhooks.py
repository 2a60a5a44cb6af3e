"""Webhook signing, the SSRF guard and real deliveries to a loopback receiver.

No traffic leaves the machine: ``socket.getaddrinfo`` is replaced for every test by a resolver that
answers numeric addresses, ``localhost`` and a few fake names, and fails everything else; the
only address ever connected to is 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sinks.webhooks import (
    HEADER_EVENT,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    USER_AGENT,
    HostResolutionError,
    SignatureError,
    Target,
    UnsafeURLError,
    address_class,
    build_payload,
    build_request,
    check_signature,
    check_url,
    deliver,
    idempotency_key,
    sign,
    verify_signature,
    webhook_headers,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "whsec_test_secret"
LOOPBACK = ["127.0.0.1"]

# ---------------------------------------------------------------------------------------------
# a resolver that never asks DNS
# ---------------------------------------------------------------------------------------------

_real_getaddrinfo = socket.getaddrinfo


@dataclass
class FakeDNS:
    names: dict[str, list[str] | Callable[[], list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.calls.append(name)
        try:
            ipaddress.ip_address(name.split("%")[0])
            numeric = True
        except ValueError:
            numeric = False
        if numeric or _is_legacy_ipv4(name):
            return _real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        entry = self.names.get(name.lower())
        if entry is None and name.lower() == "localhost":
            entry = ["127.0.0.1", "::1"]
        if entry is None:
            raise socket.gaierror(socket.EAI_NONAME, f"fake DNS: no such name {name!r}")
        addrs = entry() if callable(entry) else entry
        out: list[Any] = []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            p = int(port or 0)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, p)))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, p, 0, 0)))
        return out


def _is_legacy_ipv4(name: str) -> bool:
    """127.1, 0x7f000001, 2130706433: inet_aton forms getaddrinfo accepts without DNS."""
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


# ---------------------------------------------------------------------------------------------
# a real receiver on loopback
# ---------------------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[Seen] = []
        self.sni: list[str | None] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                receiver.seen.append(Seen(self.path, dict(self.headers.items()), raw))
                route = self.path.split("?")[0]
                if route == "/ok":
                    ok = verify_signature(raw, dict(self.headers.items()), SECRET)
                    self._send(200 if ok else 401, b"thanks" if ok else b"bad signature")
                elif route == "/fail":
                    self._send(500, b"boom")
                elif route == "/slow":
                    receiver.release.wait(5)
                    self._send(200, b"late")
                elif route == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/ok")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route == "/huge":
                    total = 10 * 1024 * 1024
                    self.send_response(200)
                    self.send_header("Content-Length", str(total))
                    self.end_headers()
                    chunk = b"x" * 65536
                    try:
                        for _ in range(total // len(chunk)):
                            self.wfile.write(chunk)
                    except OSError:
                        pass  # the client stopped reading and closed: expected
                else:
                    self._send(404, b"no such route")

            def _send(self, code: int, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
                receiver.sni.append(name)

            tls.sni_callback = on_sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _signed(body: bytes, event: str = "asset.completed", key: str = "key-1") -> dict[str, str]:
    return webhook_headers(body, SECRET, event=event, idempotency_key=key)


BODY = build_payload({"asset_id": "a1", "width": 640, "tags": ["cat"]}, "asset.completed", 3)

# ---------------------------------------------------------------------------------------------
# payload and idempotency key
# ---------------------------------------------------------------------------------------------


def test_build_payload_is_canonical() -> None:
    body = build_payload({"width": 1, "asset_id": "a1", "name": "é"}, "asset.completed", 2)
    assert body == (
        '{"asset":{"asset_id":"a1","name":"é","width":1},"asset_id":"a1",'
        '"event":"asset.completed","version":2}'
    ).encode()
    assert json.loads(body)["asset"]["name"] == "é"
    assert build_payload({"asset_id": "a1", "b": 1, "a": 2}, "e", 1) == build_payload(
        {"a": 2, "b": 1, "asset_id": "a1"}, "e", 1
    )


def test_build_payload_refuses_nan_and_missing_id() -> None:
    with pytest.raises(ValueError, match="JSON"):
        build_payload({"asset_id": "a1", "score": float("nan")}, "asset.completed", 1)
    with pytest.raises(ValueError, match="asset_id"):
        build_payload({"width": 1}, "asset.completed", 1)


def test_idempotency_key_is_stable() -> None:
    key = idempotency_key("a1", 3, "asset.completed")
    assert key == idempotency_key("a1", 3, "asset.completed")
    assert len(key) == 32 and int(key, 16) >= 0
    others = {
        idempotency_key("a1", 4, "asset.completed"),
        idempotency_key("a1", 3, "asset.refused"),
        idempotency_key("a2", 3, "asset.completed"),
        idempotency_key("a1", 3, "asset.completed", url="https://x.example/hook"),
    }
    assert key not in others and len(others) == 4


# ---------------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    headers = sign(BODY, SECRET, timestamp=1_700_000_000)
    assert headers[HEADER_TIMESTAMP] == "1700000000"
    assert headers[HEADER_SIGNATURE].startswith("v1=")
    assert len(headers[HEADER_SIGNATURE]) == 3 + 64
    assert verify_signature(BODY, headers, SECRET, now=1_700_000_010)
    check_signature(BODY, headers, SECRET, now=1_700_000_010)
    # the documented construction, computed independently
    import hashlib
    import hmac

    mac = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert headers[HEADER_SIGNATURE] == f"v1={mac}"


def test_sign_defaults_to_now() -> None:
    headers = sign(BODY, SECRET)
    assert abs(int(headers[HEADER_TIMESTAMP]) - time.time()) < 5
    assert verify_signature(BODY, headers, SECRET)


def test_header_lookup_is_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign(BODY, SECRET).items()}
    assert verify_signature(BODY, headers, SECRET)
    headers = {k.upper(): v for k, v in sign(BODY, SECRET).items()}
    assert verify_signature(BODY, headers, SECRET)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b, h: (b + b" ", h), "mismatch"),
        (lambda b, h: (b.replace(b'"version":3', b'"version":4'), h), "mismatch"),
        (lambda b, h: (b, {**h, HEADER_TIMESTAMP: str(int(h[HEADER_TIMESTAMP]) + 1)}), "mismatch"),
        (lambda b, h: (b, {HEADER_SIGNATURE: h[HEADER_SIGNATURE]}), "missing Darkroom-Timestamp"),
        (lambda b, h: (b, {HEADER_TIMESTAMP: h[HEADER_TIMESTAMP]}), "missing Darkroom-Signature"),
        (lambda b, h: (b, {**h, HEADER_TIMESTAMP: "soon"}), "malformed"),
        (lambda b, h: (b, {**h, HEADER_TIMESTAMP: "-5"}), "malformed"),
        (lambda b, h: (b, {**h, HEADER_SIGNATURE: "v0=" + h[HEADER_SIGNATURE][3:]}), "no v1="),
        (lambda b, h: (b, {**h, HEADER_SIGNATURE: "v1=é"}), "mismatch"),
        (lambda b, h: (b, {**h, HEADER_SIGNATURE: h[HEADER_SIGNATURE][:-1]}), "mismatch"),
    ],
)
def test_tampering_is_detected(
    mutate: Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]], reason: str
) -> None:
    body, headers = mutate(BODY, sign(BODY, SECRET))
    assert not verify_signature(body, headers, SECRET)
    with pytest.raises(SignatureError, match=reason) as info:
        check_signature(body, headers, SECRET)
    assert reason in info.value.reason


def test_wrong_secret_is_refused() -> None:
    headers = sign(BODY, SECRET)
    assert not verify_signature(BODY, headers, "another-secret")


def test_stale_and_future_timestamps_are_refused() -> None:
    now = 1_700_000_000
    headers = sign(BODY, SECRET, timestamp=now)
    assert verify_signature(BODY, headers, SECRET, now=now + 300)
    assert verify_signature(BODY, headers, SECRET, now=now - 300)
    assert not verify_signature(BODY, headers, SECRET, now=now + 301)
    assert not verify_signature(BODY, headers, SECRET, now=now - 301)
    with pytest.raises(SignatureError, match="tolerance"):
        check_signature(BODY, headers, SECRET, now=now + 3600)
    assert verify_signature(BODY, headers, SECRET, tolerance=3600, now=now + 3600)


def test_rotated_secrets() -> None:
    both = sign(BODY, ["new-secret", "old-secret"], timestamp=1_700_000_000)
    assert both[HEADER_SIGNATURE].count("v1=") == 2
    for secret in ("new-secret", "old-secret"):
        assert verify_signature(BODY, both, secret, now=1_700_000_000)
    assert not verify_signature(BODY, both, "third-secret", now=1_700_000_000)
    # spaces after commas and unknown schemes are tolerated
    parts = both[HEADER_SIGNATURE].split(",")
    spaced = {**both, HEADER_SIGNATURE: f"v0=abc, {parts[0]} , {parts[1]}"}
    assert verify_signature(BODY, spaced, "old-secret", now=1_700_000_000)
    # the receiver may also hold both secrets during its own rotation
    one = sign(BODY, "old-secret", timestamp=1_700_000_000)
    assert verify_signature(BODY, one, ["new-secret", "old-secret"], now=1_700_000_000)


def test_docstring_receiver_snippet_verifies() -> None:
    """The receiver code in the module docstring (copied to the README) really works."""
    import hashlib
    import hmac
    import textwrap

    import sinks.webhooks as module

    doc = module.__doc__ or ""
    start = doc.index("    def verify(")
    end = doc.index("    @app.post", start)
    namespace: dict[str, Any] = {"hashlib": hashlib, "hmac": hmac, "time": time}
    exec(textwrap.dedent(doc[start:end]), namespace)
    verify = namespace["verify"]
    headers = sign(BODY, SECRET)
    assert verify(BODY, headers, SECRET)
    assert verify(BODY, sign(BODY, ["other", SECRET]), SECRET)
    assert not verify(BODY + b" ", headers, SECRET)
    assert not verify(BODY, headers, "wrong")
    assert not verify(BODY, sign(BODY, SECRET, timestamp=int(time.time()) - 301), SECRET)
    assert not verify(BODY, {HEADER_SIGNATURE: headers[HEADER_SIGNATURE]}, SECRET)


def test_empty_secret_is_an_error() -> None:
    with pytest.raises(ValueError):
        sign(BODY, "")
    with pytest.raises(ValueError):
        sign(BODY, [])


def test_webhook_headers() -> None:
    headers = webhook_headers(BODY, SECRET, event="asset.completed", idempotency_key="k1")
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT == "Darkroom-Webhooks/1"
    assert headers[HEADER_EVENT] == "asset.completed"
    assert headers[HEADER_IDEMPOTENCY_KEY] == "k1"
    assert verify_signature(BODY, headers, SECRET)


# ---------------------------------------------------------------------------------------------
# SSRF guard
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://localhost./hook", "loopback name"),
        ("http://api.localhost/hook", "loopback name"),
        ("http://127.0.0.1./hook", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[fd00::1]/", "unique local"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0.1.2.3/", "this network"),
        ("http://[::]/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped IPv6 form of a loopback"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped IPv6 form of a cloud metadata"),
        ("http://[64:ff9b::a00:1]/", "NAT64 form of a private"),
        ("http://[2002:c0a8:101::1]/", "6to4 form of a private"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://192.0.2.10/", "documentation"),
        ("ftp://x/", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://x/", "scheme"),
        ("http://user:pw@hooks.example.test/", "credentials"),
        ("http://user@hooks.example.test/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://hooks.example.test:0/", "port 0"),
        ("not a url", "scheme"),
    ],
)
def test_unsafe_urls_are_refused(url: str, why: str, dns: FakeDNS) -> None:
    dns.names["hooks.example.test"] = ["93.184.215.14"]
    with pytest.raises(UnsafeURLError, match=why):
        check_url(url)


def test_refusal_is_a_value_error() -> None:
    assert issubclass(UnsafeURLError, ValueError)


def test_name_resolving_to_loopback_is_refused(dns: FakeDNS) -> None:
    dns.names["evil.example.test"] = ["127.0.0.1"]
    with pytest.raises(UnsafeURLError, match=r"evil.example.test resolves to 127.0.0.1.*loopback"):
        check_url("https://evil.example.test/hook")


def test_any_unsafe_address_refuses_the_host(dns: FakeDNS) -> None:
    dns.names["mixed.example.test"] = ["93.184.215.14", "10.0.0.7"]
    with pytest.raises(UnsafeURLError, match=r"10\.0\.0\.7.*private"):
        check_url("https://mixed.example.test/hook")


def test_public_host_is_accepted(dns: FakeDNS) -> None:
    dns.names["hooks.example.test"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    target = check_url("https://hooks.example.test/a/b?c=1")
    assert target == Target(
        url="https://hooks.example.test/a/b?c=1",
        host="hooks.example.test",
        port=443,
        ip="93.184.215.14",
        scheme="https",
        addresses=("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    )
    assert target.host_header == "hooks.example.test"
    assert str(target.connect_url) == "https://93.184.215.14/a/b?c=1"
    other = check_url("http://hooks.example.test:8080/")
    assert (other.port, other.host_header) == (8080, "hooks.example.test:8080")


def test_idn_host_is_sent_as_punycode(dns: FakeDNS) -> None:
    dns.names["xn--bcher-kva.example"] = ["93.184.215.14"]
    target = check_url("https://bücher.example/hook")
    assert target.host == "xn--bcher-kva.example"
    assert dns.calls[-1] == "xn--bcher-kva.example"


def test_allowlist(dns: FakeDNS) -> None:
    dns.names["hooks.internal"] = ["10.0.0.5"]
    dns.names["a.svc.internal"] = ["10.0.0.6"]
    assert check_url("http://127.0.0.1:9/", allow=["127.0.0.1"]).ip == "127.0.0.1"
    assert check_url("http://127.0.0.2:9/", allow=["127.0.0.0/8"]).ip == "127.0.0.2"
    assert check_url("http://[::1]:9/", allow=["::1"]).ip == "::1"
    mapped = check_url("http://[::ffff:127.0.0.1]:9/", allow=["127.0.0.1"])
    assert ipaddress.ip_address(mapped.ip) == ipaddress.ip_address("::ffff:127.0.0.1")
    assert check_url("http://hooks.internal/", allow=["hooks.internal"]).ip == "10.0.0.5"
    assert check_url("http://hooks.internal/", allow=["10.0.0.0/8"]).ip == "10.0.0.5"
    assert check_url("http://a.svc.internal/", allow=["*.internal"]).ip == "10.0.0.6"
    with pytest.raises(UnsafeURLError, match="private"):
        check_url("http://10.0.0.1/", allow=["127.0.0.1"])
    with pytest.raises(UnsafeURLError, match="private"):
        check_url("http://hooks.internal/", allow=["other.internal", "127.0.0.0/8"])
    # the allowlist bypasses the address check, not the URL checks
    with pytest.raises(UnsafeURLError, match="credentials"):
        check_url("http://u:p@127.0.0.1/", allow=["127.0.0.1"])
    with pytest.raises(UnsafeURLError, match="scheme"):
        check_url("ftp://127.0.0.1/", allow=["127.0.0.1"])


def test_unresolvable_host_is_not_a_refusal() -> None:
    with pytest.raises(HostResolutionError):
        check_url("https://nowhere.example.test/")


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "64:ff9b::808:808"]
)
def test_public_addresses_have_no_class(ip: str) -> None:
    assert address_class(ipaddress.ip_address(ip)) is None


# ---------------------------------------------------------------------------------------------
# delivery to a real receiver
# ---------------------------------------------------------------------------------------------


def test_deliver_signs_and_receiver_verifies(receiver: Receiver, dns: FakeDNS) -> None:
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    key = idempotency_key("a1", 3, "asset.completed")
    url = receiver.url("/ok?tenant=7", host="hooks.example.test")
    outcome = deliver(url, BODY, _signed(BODY, key=key), allow=LOOPBACK)
    assert outcome.status == "delivered", outcome
    assert outcome.http_status == 200 and outcome.error is None
    assert outcome.response_excerpt == "thanks"
    assert outcome.delivered and not outcome.retryable
    assert 0 < outcome.duration_ms < 5000
    (seen,) = receiver.seen
    assert seen.path == "/ok?tenant=7"
    assert seen.body == BODY
    assert verify_signature(seen.body, seen.headers, SECRET)
    assert seen.headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert seen.headers[HEADER_IDEMPOTENCY_KEY] == key
    assert seen.headers[HEADER_EVENT] == "asset.completed"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "Darkroom-Webhooks/1"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert seen.headers["Connection"] == "close"


def test_deliver_to_allowlisted_ip(receiver: Receiver) -> None:
    outcome = deliver(receiver.url("/ok"), BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "delivered"
    assert receiver.seen[0].headers["Host"] == f"127.0.0.1:{receiver.port}"


def test_bad_header_value_is_refused_not_raised(receiver: Receiver) -> None:
    headers = {**_signed(BODY), HEADER_EVENT: "asset.complété"}
    outcome = deliver(receiver.url("/ok"), BODY, headers, allow=LOOPBACK)
    assert outcome.status == "refused" and receiver.seen == []


def test_caller_cannot_override_host(receiver: Receiver) -> None:
    headers = {**_signed(BODY), "Host": "internal.admin", "Content-Length": "1"}
    outcome = deliver(receiver.url("/ok"), BODY, headers, allow=LOOPBACK)
    assert outcome.status == "delivered"
    assert receiver.seen[0].headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert receiver.seen[0].body == BODY


def test_loopback_is_refused_without_allowlist(receiver: Receiver) -> None:
    outcome = deliver(receiver.url("/ok"), BODY, _signed(BODY))
    assert outcome.status == "refused" and not outcome.retryable
    assert outcome.http_status is None
    assert outcome.error is not None and "loopback" in outcome.error
    assert receiver.seen == []


def test_server_error_is_a_failure(receiver: Receiver) -> None:
    outcome = deliver(receiver.url("/fail"), BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "failed" and outcome.retryable
    assert outcome.http_status == 500
    assert outcome.error == "HTTP 500"
    assert outcome.response_excerpt == "boom"


def test_wrong_signature_is_a_failure(receiver: Receiver) -> None:
    headers = webhook_headers(BODY, "not-the-secret", event="asset.completed", idempotency_key="k")
    outcome = deliver(receiver.url("/ok"), BODY, headers, allow=LOOPBACK)
    assert (outcome.status, outcome.http_status) == ("failed", 401)


def test_slow_receiver_times_out(receiver: Receiver) -> None:
    started = time.monotonic()
    outcome = deliver(
        receiver.url("/slow"), BODY, _signed(BODY), allow=LOOPBACK, read_timeout=0.3
    )
    assert time.monotonic() - started < 2
    assert outcome.status == "failed" and outcome.http_status is None
    assert outcome.error is not None and "read timeout" in outcome.error


def test_huge_response_is_not_read(receiver: Receiver) -> None:
    started = time.monotonic()
    outcome = deliver(
        receiver.url("/huge"), BODY, _signed(BODY), allow=LOOPBACK, max_response_bytes=1024
    )
    assert time.monotonic() - started < 2
    assert outcome.status == "delivered"
    assert outcome.response_excerpt == "x" * 1024


def test_no_response_body_read_when_limit_is_zero(receiver: Receiver) -> None:
    outcome = deliver(receiver.url("/huge"), BODY, _signed(BODY), allow=LOOPBACK,
                      max_response_bytes=0)
    assert outcome.status == "delivered" and outcome.response_excerpt == ""


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    outcome = deliver(receiver.url("/redirect"), BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "failed" and outcome.http_status == 302
    assert outcome.error is not None and "redirects are not followed" in outcome.error
    assert [s.path for s in receiver.seen] == ["/redirect"]


def test_redirect_is_not_followed_even_by_a_following_client(receiver: Receiver) -> None:
    with httpx.Client(follow_redirects=True, trust_env=False) as client:
        outcome = deliver(
            receiver.url("/redirect"), BODY, _signed(BODY), allow=LOOPBACK, client=client
        )
    assert outcome.http_status == 302
    assert [s.path for s in receiver.seen] == ["/redirect"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connection_refused_is_a_failure() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    outcome = deliver(url, BODY, _signed(BODY), allow=LOOPBACK, connect_timeout=1)
    assert outcome.status == "failed" and outcome.retryable
    assert outcome.error is not None and outcome.error.startswith("connection failed")


def test_dns_failure_is_a_failure_not_a_refusal() -> None:
    outcome = deliver("https://nowhere.example.test/hook", BODY, _signed(BODY))
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.startswith("DNS:")


def test_unsafe_url_is_refused_before_any_request(dns: FakeDNS) -> None:
    for url in ("ftp://x/", "http://user:pw@host/", "http://169.254.169.254/"):
        outcome = deliver(url, BODY, _signed(BODY))
        assert outcome.status == "refused", url
    assert dns.calls == ["169.254.169.254"]  # only resolution, never a connection


def test_environment_proxies_are_ignored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    outcome = deliver(receiver.url("/ok"), BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "delivered"


def test_dns_rebinding_connects_to_the_checked_address(
    receiver: Receiver, dns: FakeDNS
) -> None:
    answers = iter([["127.0.0.1"]])

    def rebinding() -> list[str]:
        # first answer: the checked address; any later lookup would get nothing usable
        try:
            return next(answers)
        except StopIteration:
            raise socket.gaierror(socket.EAI_NONAME, "rebound") from None

    dns.names["rebind.example.test"] = rebinding
    url = receiver.url("/ok", host="rebind.example.test")
    outcome = deliver(url, BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "delivered", outcome
    assert dns.calls.count("rebind.example.test") == 1  # resolved once, by the check
    assert receiver.seen[0].headers["Host"] == f"rebind.example.test:{receiver.port}"


def test_rebinding_to_an_internal_address_is_checked_not_trusted(dns: FakeDNS) -> None:
    """The check and the connection use one resolution: an unsafe first answer is refused."""
    dns.names["rebind.example.test"] = ["10.0.0.1"]
    outcome = deliver("http://rebind.example.test/", BODY, _signed(BODY), allow=LOOPBACK)
    assert outcome.status == "refused"


# ---------------------------------------------------------------------------------------------
# https: IP pinning with SNI and certificate verification against the original name
# ---------------------------------------------------------------------------------------------


def test_https_request_is_pinned_with_sni() -> None:
    target = Target("https://hooks.example.test:8443/h?x=1", "hooks.example.test", 8443,
                    "93.184.215.14", "https")
    with httpx.Client(trust_env=False) as client:
        request = build_request(client, target, BODY, _signed(BODY), httpx.Timeout(1.0))
    assert str(request.url) == "https://93.184.215.14:8443/h?x=1"
    assert request.headers["Host"] == "hooks.example.test:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.test"
    assert request.content == BODY

    plain = Target("http://hooks.example.test/h", "hooks.example.test", 80, "93.184.215.14",
                   "http")
    with httpx.Client(trust_env=False) as client:
        request = build_request(client, plain, BODY, {}, httpx.Timeout(1.0))
    assert str(request.url) == "http://93.184.215.14/h"
    assert request.headers["Host"] == "hooks.example.test"
    assert "sni_hostname" not in request.extensions


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_delivery_uses_sni_and_verifies_the_original_name(
    tmp_path: Path, dns: FakeDNS
) -> None:
    cert, key = _self_signed(tmp_path, "hooks.example.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    receiver = Receiver(tls=server_ctx)
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    dns.names["other.example.test"] = ["127.0.0.1"]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        with httpx.Client(verify=client_ctx, trust_env=False) as client:
            url = receiver.url("/ok", host="hooks.example.test", scheme="https")
            outcome = deliver(url, BODY, _signed(BODY), allow=LOOPBACK, client=client)
            assert outcome.status == "delivered", outcome
            assert receiver.sni == ["hooks.example.test"]
            assert receiver.seen[0].headers["Host"] == f"hooks.example.test:{receiver.port}"
            assert verify_signature(receiver.seen[0].body, receiver.seen[0].headers, SECRET)

            # same IP, other name: the certificate does not cover it, so nothing is sent
            wrong = receiver.url("/ok", host="other.example.test", scheme="https")
            outcome = deliver(wrong, BODY, _signed(BODY), allow=LOOPBACK, client=client)
            assert outcome.status == "failed"
            assert outcome.error is not None and "certificate" in outcome.error.lower()
            assert len(receiver.seen) == 1

            # the bare IP is not a name the certificate holds either
            ip_url = receiver.url("/ok", scheme="https")
            outcome = deliver(ip_url, BODY, _signed(BODY), allow=LOOPBACK, client=client)
            assert outcome.status == "failed" and len(receiver.seen) == 1
    finally:
        receiver.close()


def test_https_one_shot_client_with_a_ca_file(tmp_path: Path, dns: FakeDNS) -> None:
    cert, key = _self_signed(tmp_path, "hooks.example.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    receiver = Receiver(tls=server_ctx)
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    try:
        url = receiver.url("/ok", host="hooks.example.test", scheme="https")
        outcome = deliver(url, BODY, _signed(BODY), allow=LOOPBACK, verify=str(cert))
        assert outcome.status == "delivered", outcome
        assert receiver.sni == ["hooks.example.test"]
        assert receiver.seen[0].headers["Host"] == f"hooks.example.test:{receiver.port}"
    finally:
        receiver.close()


def test_https_default_client_verifies_certificates(tmp_path: Path, dns: FakeDNS) -> None:
    """Without a client, the system CA bundle is used: a self-signed receiver fails."""
    cert, key = _self_signed(tmp_path, "hooks.example.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    receiver = Receiver(tls=server_ctx)
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    try:
        url = receiver.url("/ok", host="hooks.example.test", scheme="https")
        outcome = deliver(url, BODY, _signed(BODY), allow=LOOPBACK)
        assert outcome.status == "failed"
        assert outcome.error is not None and "certificate" in outcome.error.lower()
        assert receiver.sni == ["hooks.example.test"]
        assert receiver.seen == []
    finally:
        receiver.close()


def test_standard_webhooks_headers_verify_with_the_library() -> None:
    from standardwebhooks import Webhook

    from sinks.webhooks import standard_secret

    headers = webhook_headers(BODY, SECRET, event="asset.completed", idempotency_key="k1",
                              style="standard")
    assert "Darkroom-Signature" not in headers
    assert Webhook(standard_secret(SECRET)).verify(BODY, headers, json_parse=False) is None
    both = webhook_headers(BODY, [SECRET, "old-secret"], event="asset.completed",
                           idempotency_key="k1")
    assert verify_signature(BODY, both, SECRET)
    assert Webhook(standard_secret("old-secret")).verify(BODY, both, json_parse=False) is None
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(standard_secret("wrong")).verify(BODY, both)
    assert standard_secret("whsec_abc") == "whsec_abc"
