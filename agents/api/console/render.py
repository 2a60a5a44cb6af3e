"""HTML rendering of the console: one Jinja2 environment with autoescaping, the security
headers of every page, and the template filters.

Every value that reaches a page is escaped by Jinja2 (``autoescape`` is on for every template,
``|tojson`` for JSON embedded in ``<script type="application/json">`` escapes ``<``, ``>``,
``&`` and ``'``). Nothing is marked safe by hand. Pages run no inline script and no inline
style: the Content-Security-Policy allows scripts, styles, images and media from this origin
only (plus the S3 endpoint for media when the storage is S3, since the media routes redirect
there), so a value that escaped anyway could still not run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlparse

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

HERE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = HERE / "templates"
STATIC: Final = HERE / "static"
STATIC_URL: Final = "/console/static"
SWAGGER_URL: Final = "/console/swagger"


def media_origin(settings: Any) -> str | None:
    """The origin the media routes redirect to (the S3 endpoint), or None for local storage."""
    endpoint = getattr(settings, "s3_endpoint", None)
    if not endpoint:
        return None
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not parsed.netloc or any(c in parsed.netloc for c in " ;,'\""):
        return None
    return f"{parsed.scheme}://{parsed.netloc}"


def csp(settings: Any, *, script_hashes: tuple[str, ...] = (),
        inline_styles: bool = False) -> str:
    media = " ".join(filter(None, ("'self'", media_origin(settings))))
    scripts = " ".join(("'self'", *(f"'sha256-{h}'" for h in script_hashes)))
    styles = "'self' 'unsafe-inline'" if inline_styles else "'self'"
    return (f"default-src 'self'; script-src {scripts}; style-src {styles}; "
            f"img-src {media} data: blob:; media-src {media} blob:; connect-src 'self'; "
            "font-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")


def page_headers(settings: Any, **csp_options: Any) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(settings, **csp_options),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


# ------------------------------------------------------------------------------ filters
def fmt_time(ms: Any) -> str:
    """Milliseconds since the epoch as ``2025-01-31 12:00:00 UTC``."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not math.isfinite(ms) \
            or ms <= 0:
        return "—"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "—"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool) or n < 0:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def fmt_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        return "—"
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def pretty_json(value: Any) -> str:
    """JSON for a ``<pre>`` (escaped by autoescape like every value)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def query(base: str, params: Mapping[str, Any]) -> str:
    """``base?k=v&...`` with the empty parameters left out."""
    kept = {k: v for k, v in params.items() if v not in (None, "", False)}
    return f"{base}?{urlencode(kept)}" if kept else base


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, bytes=fmt_bytes, num=fmt_number, pretty=pretty_json)
    env.globals.update(static=STATIC_URL, query=query)
    return env


ENV: Final = _environment()


def render(settings: Any, template: str, status_code: int = 200, *,
           headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    """The page ``template`` with ``context`` (and the navigation), with the security
    headers."""
    from agents.api.console.nav import NAV

    html = ENV.get_template(template).render(nav=NAV, **context)
    return HTMLResponse(html, status_code=status_code,
                        headers={**page_headers(settings), **(headers or {})})
