"""How the console authenticates: the API key, entered once in a login form, kept in a cookie.

* ``POST /login`` (a form: ``key``, ``next``) checks the key against ``DARKROOM_API_KEY_HASHES``
  like every API request and sets ``darkroom_key``: ``HttpOnly`` (page scripts never see it),
  ``SameSite=Strict`` (never sent with a request another site starts), ``Path=/``, ``Secure``
  with ``DARKROOM_API_CONSOLE_SECURE_COOKIE``; a session cookie (gone when the browser closes).
  The key travels in the POST body only, never in a URL, so it is in no access log. ``POST
  /logout`` deletes it.
* Pages check the cookie themselves (:func:`session_key`) and send the browser to ``/login``
  when it is missing or no longer valid.
* :class:`CookieAuth` (ASGI middleware, outside the API's request guard) lets the console's own
  requests through the ``/v1`` key check: a ``/v1`` request with no ``X-API-Key`` and no
  ``Authorization`` header but the cookie gets the cookie's key as ``X-API-Key`` before the
  guard sees it. ``<img>``/``<video>`` (which cannot send headers) and the pages' ``fetch``
  calls are authenticated that way. A state-changing request (anything but GET/HEAD) is only
  taken with the cookie when it also carries ``X-Darkroom-Console: 1`` and is not a cross-site
  request (``Sec-Fetch-Site``): a header that no cross-site form can send and no cross-site
  script may send without a CORS preflight this API never answers (CSRF).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from agents.api.guards import is_protected, key_problem

COOKIE: Final = "darkroom_key"
CONSOLE_HEADER: Final = "x-darkroom-console"
MAX_KEY_CHARS: Final = 1024
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def _cookie_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            try:
                found = cookie_parser(value.decode("latin-1")).get(COOKIE)
            except ValueError:
                return None
            if found and len(found) <= MAX_KEY_CHARS and found.isascii() \
                    and found.isprintable():
                return found
    return None


class CookieAuth:
    """The console cookie as the ``X-API-Key`` of ``/v1`` requests that carry no key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_protected(scope["path"]):
            headers: list[tuple[bytes, bytes]] = list(scope["headers"])
            names = {k.lower() for k, _ in headers}
            if b"x-api-key" not in names and b"authorization" not in names:
                key = _cookie_of(headers)
                if key is not None and _may_use_cookie(scope["method"], headers):
                    scope = {**scope, "headers": [*headers, (b"x-api-key", key.encode())]}
        await self.app(scope, receive, send)


def _may_use_cookie(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    found = {k.lower(): v for k, v in headers}
    site = found.get(b"sec-fetch-site")
    if site is not None and site not in (b"same-origin", b"none"):
        return False
    if method.upper() in SAFE_METHODS:
        return True
    return found.get(CONSOLE_HEADER.encode()) == b"1"


def session_key(request: Request, key_hashes: frozenset[str]) -> str | None:
    """The valid key of the console session, or None (then the page redirects to login)."""
    key = _cookie_of(request.scope["headers"])
    if key is None or key_problem(key, None, key_hashes) is not None:
        return None
    return key


def local_next(target: str | None) -> str:
    """Where to go after login: a path of this site only (no scheme, host or ``//``)."""
    if not target or len(target) > 2000 or not target.startswith("/") \
            or target.startswith("//") or "\\" in target or not target.isprintable():
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def login_next(request: Request) -> str:
    """The ``/login?next=`` URL for the page asked for."""
    from urllib.parse import quote

    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(local_next(path), safe="")


def parse_login(body: bytes) -> tuple[str, str]:
    """(key, next) of the login form (``application/x-www-form-urlencoded``, strict UTF-8)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "", "/"
    fields = parse_qs(text, keep_blank_values=True, max_num_fields=8)
    key = (fields.get("key") or [""])[0].strip()
    return key[:MAX_KEY_CHARS + 1], local_next((fields.get("next") or ["/"])[0])


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or
    ``Sec-Fetch-Site``): the login form is only taken from this site's own page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # null: a browser hiding it (referrer policy)
        return origin is None or site is not None
    return urlsplit(origin).netloc == request.headers.get("host", "")
