"""The console's navigation: one entry per page, in the order shown.

Adding a page (a moderation queue, say) is three things: a template under ``templates/`` that
extends ``base.html``, a route in a router that :func:`agents.api.console.mount_console`
includes (check the session with :func:`agents.api.console.auth.session_key` first, render with
:func:`agents.api.console.render.render`), and its entry here. JSON routes the page's script
calls go under ``/v1`` (the API key guard checks them; the console's cookie stands in for the
key, see :mod:`agents.api.console.auth`).
"""

from __future__ import annotations

from typing import Final, NamedTuple


class NavItem(NamedTuple):
    key: str
    label: str
    href: str


NAV: Final[tuple[NavItem, ...]] = (
    NavItem("assets", "Assets", "/"),
    NavItem("moderation", "Moderation", "/moderation"),
    NavItem("status", "Status", "/status"),
    NavItem("dead-letters", "Dead letters", "/dead-letters"),
    NavItem("faces", "Faces", "/faces"),
    NavItem("docs", "API docs", "/docs"),
)
