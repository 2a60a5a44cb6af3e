"""Webhook deliveries: payload, signing, an SSRF guard and one blocking HTTP POST.

This module is the pure HTTP/security layer; the outbox, the retry-tier topics and the dead
letters live in the delivery agent that calls :func:`deliver` (in a thread).

What a receiver gets
--------------------
Every delivery is an HTTP ``POST`` of a JSON body with these headers::

    Content-Type: application/json
    User-Agent: Darkroom-Webhooks/1
    Darkroom-Event: asset.completed
    Darkroom-Idempotency-Key: 3f9c0a...          (same for every retry of the same asset version)
    Darkroom-Timestamp: 1767225600                (unix seconds, new on every attempt)
    Darkroom-Signature: v1=5257a869e7ec...        (hex HMAC-SHA256, see below)

The body is canonical JSON (sorted keys, UTF-8, no NaN)::

    {"asset": {...}, "asset_id": "...", "event": "asset.completed", "version": 3}

The signature is ``v1=`` + hex HMAC-SHA256 keyed with the endpoint's secret over the bytes
``f"{timestamp}.".encode() + raw_body``. While a secret is being rotated the header carries one
``v1=`` value per secret, separated by commas (``v1=abc...,v1=def...``): accept the request if
any of them matches. Always verify over the RAW request body (never over re-serialised JSON), use
a constant-time comparison, and refuse timestamps more than a few minutes away from your clock
(that stops replays of a captured request).

Deliveries are retried (a non-2xx answer, a timeout or a connection error counts as a failure),
so the same event can arrive more than once: deduplicate by ``Darkroom-Idempotency-Key``. Answer
2xx quickly and do slow work afterwards. Redirects are not followed: a 3xx is a failure.

A receiver in Flask (any framework works the same way: raw bytes + headers)::

    import hashlib, hmac, json, time
    from flask import Flask, abort, request

    SECRET = "whsec_..."            # the secret configured for this endpoint
    app = Flask(__name__)
    seen: set[str] = set()          # in production: a table with a unique key

    def verify(raw: bytes, headers, secret: str, tolerance: int = 300) -> bool:
        ts = headers.get("Darkroom-Timestamp", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
            return False
        expected = hmac.new(secret.encode(), ts.encode() + b"." + raw, hashlib.sha256)
        want = b"v1=" + expected.hexdigest().encode()
        given = [p.strip().encode() for p in headers.get("Darkroom-Signature", "").split(",")]
        return any(hmac.compare_digest(want, g) for g in given)

    @app.post("/darkroom")
    def darkroom_webhook():
        raw = request.get_data()    # the RAW body, before any JSON parsing
        if not verify(raw, request.headers, SECRET):
            abort(401)
        key = request.headers["Darkroom-Idempotency-Key"]
        if key in seen:             # a retry of an event already handled
            return "", 200
        event = json.loads(raw)
        ...                         # event["event"], event["asset_id"], event["asset"]
        seen.add(key)
        return "", 204

Python receivers can instead call :func:`verify_signature` (bool) or :func:`check_signature`
(raises :class:`SignatureError` with the reason) from this module.

Where deliveries may go
-----------------------
:func:`check_url` resolves the host and refuses (``UnsafeURLError``) anything but http(s) URLs
without credentials whose every address is publicly routable: loopback, private, link-local
(cloud metadata included), CGNAT, unspecified, multicast, reserved and documentation ranges and
IPv6 forms embedding them are refused unless allowlisted. :func:`deliver` then connects to the very
address it checked (a second DNS answer cannot rebind it to an internal host), sends the original
``Host`` header, and for https sets TLS SNI and verifies the certificate against the original
hostname.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "HEADER_EVENT",
    "HEADER_IDEMPOTENCY_KEY",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SIGNATURE_SCHEME",
    "USER_AGENT",
    "DeliveryOutcome",
    "DeliveryStatus",
    "HostResolutionError",
    "SignatureError",
    "Target",
    "UnsafeURLError",
    "address_class",
    "build_payload",
    "build_request",
    "check_signature",
    "check_url",
    "deliver",
    "idempotency_key",
    "sign",
    "sign_standard",
    "standard_secret",
    "verify_signature",
    "webhook_headers",
]

HEADER_TIMESTAMP = "Darkroom-Timestamp"
HEADER_SIGNATURE = "Darkroom-Signature"
HEADER_IDEMPOTENCY_KEY = "Darkroom-Idempotency-Key"
HEADER_EVENT = "Darkroom-Event"
USER_AGENT = "Darkroom-Webhooks/1"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300

DeliveryStatus = Literal["delivered", "failed", "refused"]

# ---------------------------------------------------------------------------------------------
# payload
# ---------------------------------------------------------------------------------------------


def build_payload(asset_json: Mapping[str, Any], event: str, version: int) -> bytes:
    """Canonical JSON bytes of one event: sorted keys, compact, UTF-8, NaN/Infinity refused.

    ``{"asset": {...}, "asset_id": asset_json["asset_id"], "event": event, "version": version}``
    """
    asset_id = asset_json.get("asset_id")
    if not isinstance(asset_id, str) or not asset_id:
        raise ValueError("asset_json has no 'asset_id' string")
    doc = {"event": event, "asset_id": asset_id, "version": int(version), "asset": dict(asset_json)}
    try:
        text = json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as exc:  # NaN / Infinity
        raise ValueError(f"payload is not valid JSON: {exc}") from exc
    return text.encode("utf-8")


def idempotency_key(asset_id: str, version: int, event: str, url: str | None = None) -> str:
    """A stable key for one (asset, version, event[, url]): sha256 hex, first 32 characters.

    The same for every retry of the same delivery, so receivers can deduplicate with it.
    """
    parts = [asset_id, str(int(version)), event]
    if url is not None:
        parts.append(url)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


# ---------------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------------


class SignatureError(ValueError):
    """A webhook signature did not verify; ``reason`` says why (safe to log, not to return)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _secrets(secret: str | Sequence[str]) -> list[str]:
    found = [secret] if isinstance(secret, str) else list(secret)
    if not found or any(not isinstance(s, str) or not s for s in found):
        raise ValueError("a webhook secret must be a non-empty string")
    return found


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | Sequence[str], timestamp: int | None = None) -> dict[str, str]:
    """The ``Darkroom-Timestamp`` and ``Darkroom-Signature`` headers for ``body``.

    Several secrets (during a rotation) give one ``v1=`` value each, comma-separated.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("sign() needs the raw body bytes")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    raw = bytes(body)
    signature = ",".join(f"{SIGNATURE_SCHEME}={_digest(s, ts, raw)}" for s in _secrets(secret))
    return {HEADER_TIMESTAMP: str(ts), HEADER_SIGNATURE: signature}


HeaderStyle = Literal["darkroom", "standard", "both"]


def standard_secret(secret: str) -> str:
    """The ``whsec_<base64>`` form of a secret for Standard Webhooks receivers (the HMAC key is
    the secret's UTF-8 bytes, like the ``Darkroom-Signature``'s; a secret already in ``whsec_``
    form is used as it is)."""
    if secret.startswith("whsec_"):
        return secret
    return "whsec_" + base64.b64encode(secret.encode("utf-8")).decode("ascii")


def _standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):] + "==")
    return secret.encode("utf-8")


def sign_standard(body: bytes, secret: str | Sequence[str], msg_id: str,
                  timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks (standardwebhooks.com) headers: ``webhook-id``,
    ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of id.ts.body>``
    (one ``v1,`` value per secret during a rotation, space-separated)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{msg_id}.{ts}.".encode() + bytes(body)
    sigs = " ".join(
        "v1," + base64.b64encode(hmac.new(_standard_key(s), signed, hashlib.sha256).digest())
        .decode("ascii") for s in _secrets(secret))
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sigs}


def webhook_headers(
    body: bytes,
    secret: str | Sequence[str],
    *,
    event: str,
    idempotency_key: str,
    timestamp: int | None = None,
    style: HeaderStyle = "both",
) -> dict[str, str]:
    """Every header of one delivery attempt. Call it per attempt: the timestamp must be fresh.
    ``style`` picks today's ``Darkroom-*`` headers, the Standard Webhooks set (its
    ``webhook-id`` is the idempotency key, the same for every attempt), or both."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if style in ("darkroom", "both"):
        headers |= {HEADER_EVENT: event, HEADER_IDEMPOTENCY_KEY: idempotency_key,
                    **sign(body, secret, ts)}
    if style in ("standard", "both"):
        headers |= sign_standard(body, secret, f"msg_{idempotency_key}", ts)
    return headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def check_signature(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    tolerance: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Verify a received webhook; raise :class:`SignatureError` with the reason if it fails.

    ``body`` must be the raw request bytes. Header names are matched case-insensitively; any of
    the comma-separated ``v1=`` values may match any of the given secrets.
    """
    secrets = _secrets(secret)
    ts_text = _header(headers, HEADER_TIMESTAMP)
    sig_text = _header(headers, HEADER_SIGNATURE)
    if ts_text is None:
        raise SignatureError(f"missing {HEADER_TIMESTAMP} header")
    if sig_text is None:
        raise SignatureError(f"missing {HEADER_SIGNATURE} header")
    ts_text = ts_text.strip()
    if not (ts_text.isascii() and ts_text.isdigit()) or len(ts_text) > 12:
        raise SignatureError(f"malformed {HEADER_TIMESTAMP} header")
    ts = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise SignatureError(
            f"timestamp outside the tolerance ({int(current - ts)} s away, {tolerance} s allowed)"
        )
    prefix = SIGNATURE_SCHEME + "="
    given = [
        part.strip()[len(prefix):].encode("utf-8", "replace")
        for part in sig_text.split(",")
        if part.strip().startswith(prefix)
    ]
    if not given:
        raise SignatureError(f"no {SIGNATURE_SCHEME}= value in {HEADER_SIGNATURE}")
    raw = bytes(body)
    matched = False
    for s in secrets:  # no early exit: every comparison runs
        expected = _digest(s, ts, raw).encode("ascii")
        for candidate in given:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature mismatch")


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    tolerance: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when the webhook verifies (see :func:`check_signature` for the reason otherwise)."""
    try:
        check_signature(body, headers, secret, tolerance=tolerance, now=now)
    except SignatureError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# SSRF guard
# ---------------------------------------------------------------------------------------------


class UnsafeURLError(ValueError):
    """A webhook URL that must never be called (not retryable)."""


class HostResolutionError(OSError):
    """The webhook host did not resolve (retryable: DNS may recover)."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

_METADATA = {
    ipaddress.ip_address("169.254.169.254"): "cloud metadata address (link-local)",
    ipaddress.ip_address("169.254.170.2"): "cloud metadata address (link-local)",
    ipaddress.ip_address("100.100.100.200"): "cloud metadata address (CGNAT)",
    ipaddress.ip_address("fd00:ec2::254"): "cloud metadata address (unique local)",
}

_V4_CLASSES: tuple[tuple[_V4, str], ...] = (
    (_V4("0.0.0.0/32"), "unspecified address"),
    (_V4("0.0.0.0/8"), "'this network' address (0.0.0.0/8)"),
    (_V4("127.0.0.0/8"), "loopback address"),
    (_V4("10.0.0.0/8"), "private address (10.0.0.0/8)"),
    (_V4("172.16.0.0/12"), "private address (172.16.0.0/12)"),
    (_V4("192.168.0.0/16"), "private address (192.168.0.0/16)"),
    (_V4("100.64.0.0/10"), "CGNAT shared address (100.64.0.0/10)"),
    (_V4("169.254.0.0/16"), "link-local address"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment (192.0.0.0/24)"),
    (_V4("192.0.2.0/24"), "documentation address"),
    (_V4("198.51.100.0/24"), "documentation address"),
    (_V4("203.0.113.0/24"), "documentation address"),
    (_V4("198.18.0.0/15"), "benchmarking address"),
    (_V4("224.0.0.0/4"), "multicast address"),
    (_V4("255.255.255.255/32"), "broadcast address"),
    (_V4("240.0.0.0/4"), "reserved address"),
)

_V6_CLASSES: tuple[tuple[_V6, str], ...] = (
    (_V6("::/128"), "unspecified address"),
    (_V6("::1/128"), "loopback address"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 address"),
    (_V6("fc00::/7"), "private (unique local) address"),
    (_V6("fe80::/10"), "link-local address"),
    (_V6("fec0::/10"), "site-local address"),
    (_V6("ff00::/8"), "multicast address"),
    (_V6("2001:db8::/32"), "documentation address"),
    (_V6("2001::/32"), "Teredo address"),
    (_V6("100::/64"), "discard-only address"),
)
_V6_GLOBAL_UNICAST = _V6("2000::/3")
_NAT64 = _V6("64:ff9b::/96")


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    for net, name in _V4_CLASSES:
        if ip in net:
            return name
    if not ip.is_global:
        return "non-global address"
    return None


def address_class(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be called (e.g. ``"loopback address"``), or None when it is public."""
    if ip in _METADATA:
        return _METADATA[ip]
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    if ip.scope_id:
        return "scoped (zone) IPv6 address"
    mapped = ip.ipv4_mapped
    if mapped is not None:
        inner = address_class(mapped)
        return f"IPv4-mapped IPv6 form of a {inner}" if inner else None
    if ip in _NAT64:
        inner = address_class(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return f"NAT64 form of a {inner}" if inner else None
    if ip.sixtofour is not None:
        inner = address_class(ip.sixtofour)
        if inner:
            return f"6to4 form of a {inner}"
    for net, name in _V6_CLASSES:
        if ip in net:
            return name
    if ip not in _V6_GLOBAL_UNICAST:
        return "reserved address (outside 2000::/3)"
    if not ip.is_global:
        return "non-global address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: connect to ``ip`` (never re-resolve ``host``)."""

    url: str
    host: str  # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    ip: str
    scheme: str
    addresses: tuple[str, ...] = ()  # every address the host resolved to (all checked)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def connect_url(self) -> httpx.URL:
        """The URL to request: the original one with its host replaced by the checked IP."""
        return httpx.URL(self.url).copy_with(host=self.ip, port=self.port, fragment=None)


def _allowed(host: str, allow: Sequence[str]) -> tuple[bool, list[ipaddress.IPv4Network | _V6]]:
    """(host allowlisted by name, allowlisted networks)."""
    name = host.lower().rstrip(".")
    host_ok = False
    nets: list[ipaddress.IPv4Network | _V6] = []
    for entry in allow:
        item = entry.strip().strip("[]")
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        item = item.lower().rstrip(".")
        if item.startswith("*."):
            host_ok |= name.endswith(item[1:])
        else:
            host_ok |= name == item
    return host_ok, nets


def _in_nets(ip: IPAddress, nets: Sequence[ipaddress.IPv4Network | _V6]) -> bool:
    alt = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in net or (alt is not None and alt in net) for net in nets)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostResolutionError(f"cannot resolve {host!r}: {exc}") from exc
    found: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        text = str(sockaddr[0]).split("%", 1)[0]
        ip = ipaddress.ip_address(text)
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            ip = ipaddress.IPv6Address(f"{text}%{sockaddr[3]}")
        if ip not in found:
            found.append(ip)
    if not found:
        raise HostResolutionError(f"{host!r} resolved to no IPv4/IPv6 address")
    return found


def check_url(url: str, allow: Sequence[str] = ()) -> Target:
    """Check a webhook URL and resolve it; raise :class:`UnsafeURLError` if it must not be called.

    Refused: schemes other than http/https, credentials in the URL, no host, port 0, and hosts
    with ANY address that is not publicly routable (see :func:`address_class`). ``allow`` holds
    host names (``"hooks.internal"``, ``"*.internal"``), IPs or CIDRs (``"127.0.0.1"``,
    ``"10.0.0.0/8"``) that bypass the address check. DNS failures raise
    :class:`HostResolutionError` (retryable). The returned ``Target.ip`` is the address a
    delivery must connect to.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UnsafeURLError(f"refusing {url!r}: not a valid URL ({exc})") from exc
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"refusing {url!r}: scheme {scheme or '(none)'!r} is not http/https")
    if parsed.userinfo:
        raise UnsafeURLError(f"refusing {url!r}: credentials (user:password@) in the URL")
    try:
        host = parsed.raw_host.decode("ascii")
    except UnicodeDecodeError as exc:
        raise UnsafeURLError(f"refusing {url!r}: host is not ASCII/IDNA") from exc
    # "localhost." and "127.0.0.1." name the same hosts as without the dot (a resolver may not
    # know the dotted form and fail as if the name were just unknown: refuse, never retry)
    host = host.strip("[]").rstrip(".")
    if not host:
        raise UnsafeURLError(f"refusing {url!r}: no host")
    port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UnsafeURLError(f"refusing {url!r}: port {port} is not allowed")

    host_ok, nets = _allowed(host, allow)
    if not host_ok and (host.lower() == "localhost" or host.lower().endswith(".localhost")):
        raise UnsafeURLError(f"refusing {url!r}: {host} is a loopback name (RFC 6761)")
    addresses = _resolve(host, port)
    if not host_ok:
        for ip in addresses:
            if _in_nets(ip, nets):
                continue
            why = address_class(ip)
            if why:
                shown = host if host == str(ip) else f"{host} resolves to {ip}, which"
                raise UnsafeURLError(f"refusing {url!r}: {shown} is a {why}")
    first = addresses[0]
    ip_text = str(first).split("%", 1)[0] if first.version == 6 else str(first)
    return Target(
        url=url,
        host=host,
        port=port,
        ip=ip_text,
        scheme=scheme,
        addresses=tuple(str(a) for a in addresses),
    )


# ---------------------------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did. ``failed`` is retryable, ``refused`` (SSRF guard) is not."""

    status: DeliveryStatus
    http_status: int | None
    error: str | None
    duration_ms: float
    response_excerpt: str = ""

    @property
    def delivered(self) -> bool:
        return self.status == "delivered"

    @property
    def retryable(self) -> bool:
        return self.status == "failed"


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()

# Headers this module owns: callers cannot override them.
_OWNED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


def clear_tls_context() -> None:
    """Forget the cached TLS context (``agents.composition.reset_caches``)."""
    global _SSL_CONTEXT
    with _SSL_LOCK:
        _SSL_CONTEXT = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT


def _verify_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    if verify is True:
        return _ssl_context()
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return verify


def build_request(
    client: httpx.Client,
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
) -> httpx.Request:
    """The POST for ``target``: to the checked IP, original Host header, SNI = original host."""
    out: dict[str, str] = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    for key, value in headers.items():
        if key.lower() in _OWNED_HEADERS:
            continue
        out = {k: v for k, v in out.items() if k.lower() != key.lower()}
        out[key] = value
    out["Host"] = target.host_header
    out["Accept-Encoding"] = "identity"  # never decompress (no zip bombs); we read raw bytes
    # The pool of an httpx client is keyed by origin, here the IP: a kept-alive TLS connection
    # verified for one host name could carry a later delivery for another name on the same IP.
    # So no delivery leaves a connection behind.
    out["Connection"] = "close"
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        # httpcore passes this as server_hostname to wrap_socket: SNI + hostname verification
        extensions["sni_hostname"] = target.host
    return client.build_request(
        "POST",
        target.connect_url,
        headers=out,
        content=bytes(body),
        timeout=timeout,
        extensions=extensions,
    )


def _elapsed_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000.0, 3)


def _excerpt(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow: Sequence[str] = (),
    connect_timeout: float = 5,
    read_timeout: float = 10,
    max_response_bytes: int = 64 * 1024,
    client: httpx.Client | None = None,
    verify: ssl.SSLContext | str | bool = True,
) -> DeliveryOutcome:
    """POST ``body`` to ``url`` once (blocking) and say how it went. Never raises for I/O.

    ``headers`` are sent as given (build them with :func:`webhook_headers` per attempt); Host,
    Content-Length, Connection and Accept-Encoding are this function's. The URL passes
    :func:`check_url` first (refusal = ``refused``, nothing sent); the connection goes to the
    checked IP; redirects are not followed; at most ``max_response_bytes`` of the response body
    are read. 2xx = ``delivered``; anything else = ``failed``.

    Without ``client`` a one-shot client is used: no environment proxies, certificates checked
    against ``verify`` (True = the certifi bundle, or a CA file path / an ``ssl.SSLContext``).
    Every request says ``Connection: close``. A passed ``client`` (HTTP/1.1) must not use
    proxies (they would defeat the IP pinning) and should serve deliveries only: its pool is
    keyed by IP, so an idle connection it opened for something else could be picked up.
    """
    start = time.monotonic()
    try:
        target = check_url(url, allow)
    except UnsafeURLError as exc:
        return DeliveryOutcome("refused", None, str(exc), _elapsed_ms(start), "")
    except HostResolutionError as exc:
        return DeliveryOutcome("failed", None, f"DNS: {exc}", _elapsed_ms(start), "")

    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
    )
    owned = client is None
    http = client or httpx.Client(
        verify=_verify_context(verify),
        trust_env=False,
        follow_redirects=False,
        timeout=timeout,
    )
    # the body is informational: stop reading it once this budget is spent
    body_deadline = start + connect_timeout + read_timeout
    try:
        request = build_request(http, target, body, headers, timeout)
        response = http.send(request, stream=True, follow_redirects=False)
        try:
            status = response.status_code
            data = bytearray()
            if max_response_bytes > 0:
                try:
                    for chunk in response.iter_raw():
                        data += chunk[: max_response_bytes - len(data)]
                        if len(data) >= max_response_bytes or time.monotonic() > body_deadline:
                            break
                except httpx.HTTPError:
                    pass  # the status line decided the outcome; the excerpt is best effort
            location = response.headers.get("location")
        finally:
            response.close()  # an unread rest closes the connection instead of draining it
    except (httpx.InvalidURL, UnicodeError) as exc:  # e.g. non-ASCII header values: permanent
        return DeliveryOutcome("refused", None, f"cannot build the request: {exc}",
                               _elapsed_ms(start))
    except httpx.TimeoutException as exc:
        kind = {
            httpx.ConnectTimeout: f"connect timeout after {connect_timeout:g} s",
            httpx.ReadTimeout: f"read timeout after {read_timeout:g} s",
            httpx.WriteTimeout: f"write timeout after {read_timeout:g} s",
            httpx.PoolTimeout: "no free connection in the pool",
        }.get(type(exc), f"timeout: {exc}")
        return DeliveryOutcome("failed", None, kind, _elapsed_ms(start), "")
    except httpx.HTTPError as exc:
        what = "connection failed" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
        return DeliveryOutcome("failed", None, f"{what}: {exc}", _elapsed_ms(start), "")
    except OSError as exc:  # socket errors httpx did not wrap
        return DeliveryOutcome("failed", None, f"{type(exc).__name__}: {exc}", _elapsed_ms(start))
    finally:
        if owned:
            http.close()

    excerpt = _excerpt(bytes(data))
    duration = _elapsed_ms(start)
    if 200 <= status < 300:
        return DeliveryOutcome("delivered", status, None, duration, excerpt)
    if 300 <= status < 400:
        where = f" (Location: {location[:200]})" if location else ""
        error = f"HTTP {status}: redirects are not followed{where}"
        return DeliveryOutcome("failed", status, error, duration, excerpt)
    return DeliveryOutcome("failed", status, f"HTTP {status}", duration, excerpt)
