"""The web console, served by the upload API at ``/``, and the API docs at ``/docs``, with every
file from this process: no CDN, no request leaves the API's origin (except media redirects to
the S3 endpoint when the storage is S3).

:func:`mount_console` adds, to the API app:

* the key-cookie middleware (:class:`agents.api.console.auth.CookieAuth`), outside the request
  guard, so the console's requests pass the ``/v1`` key check;
* ``/console/static`` (the console's CSS, its scripts and a BlurHash decoder) and
  ``/console/swagger`` (Swagger UI's files, from the ``swagger-ui-bundle-v2`` wheel);
* ``/docs``: Swagger UI on those files (FastAPI's own ``/docs`` loads it from a CDN, so the app
  is built with ``docs_url=None`` and ``redoc_url=None``), with the API key as an OpenAPI
  ``apiKey`` security scheme (the Authorize button) and a CSP that allows this origin only
  (plus the hash of Swagger UI's one inline start-up script);
* the pages (:mod:`agents.api.console.pages`, unless ``DARKROOM_API_CONSOLE=false``) and the
  JSON routes they call (:mod:`agents.api.console.ops`).

Pages are listed in :mod:`agents.api.console.nav`, which says how to add one.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from agents.api.console.auth import CookieAuth
from agents.api.console.pages import ConsoleState
from agents.api.console.render import STATIC, STATIC_URL, SWAGGER_URL, page_headers


def swagger_files() -> str:
    """The folder of Swagger UI's distribution files inside the installed wheel."""
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


def docs_page(app: FastAPI, settings: Any) -> HTMLResponse:
    """Swagger UI (local files) for the app's OpenAPI document."""
    html = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API docs",
        swagger_js_url=f"{SWAGGER_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_URL}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False,
                               "tryItOutEnabled": False},
    )
    body = bytes(html.body).decode()
    hashes = tuple(base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
                   for s in re.findall(r"<script>(.*?)</script>", body, re.S))
    return HTMLResponse(body, headers=page_headers(settings, script_hashes=hashes,
                                                   inline_styles=True))


def mount_console(app: FastAPI, settings: Any, get_state: Callable[[], ConsoleState],
                  auth: Sequence[Any]) -> None:
    """Add the console, the docs and their JSON routes to ``app`` (call it after the request
    guard was added: the cookie middleware must run before it)."""
    import agents.api.console.ops as ops
    import agents.api.console.pages as pages

    app.add_middleware(CookieAuth)
    app.mount(STATIC_URL, StaticFiles(directory=str(STATIC)), name="console-static")
    app.mount(SWAGGER_URL, StaticFiles(directory=swagger_files()), name="swagger-ui")

    async def docs(_request: Request) -> Response:
        return docs_page(app, settings)

    app.add_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.include_router(ops.make_router(lambda: get_state().root, auth))
    if settings.api_console:
        app.include_router(pages.make_router(get_state, settings))
