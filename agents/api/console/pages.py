"""The console's pages (server-rendered HTML, see :mod:`agents.api.console.render`).

=========================  ================================================================
``/``                      asset grid: blurhash placeholder, then the thumbnail; filters by
                           folder, status and tag; keyset pages (``cursor``)
``/assets/{id}``           one asset: original and derived outputs, results drawn (face, OCR,
                           plate and logo boxes over the picture, swatches, tags, scene, NSFW,
                           the video's unsafe segments on a timeline, HLS renditions), notices,
                           refusals, webhook deliveries, on_success outcome, moderation status
``/status``                per-task figures of ``darkroom status``, stalled agents, replays
                           with progress bars
``/dead-letters[/{name}]`` dead letters per topic, with requeue
``/faces[/{cluster}]``     face clusters (representative face, size, name), their faces
``/login``, ``/logout``    the key, entered once (:mod:`agents.api.console.auth`)
=========================  ================================================================

Pages read the store and storage of the API process directly and check the session first; the
scripts on them call the JSON routes under ``/v1`` (the cookie stands in for the key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from starlette.responses import FileResponse, RedirectResponse, Response

import agents.api.console.auth as auth
from agents.api.console.render import STATIC, render
from agents.api.console.views import asset_view, card_of
from agents.api.guards import key_problem
from agents.composition import Runtime
from agents.policy import limits
from sinks.objects.base import normalize_folder
from sinks.store import moderation
from sinks.store.metadata import FINAL_STATUSES, Asset, MetadataStore

PAGE_SIZE: Final = 48
TAG_SCAN: Final = 2000
"""Assets looked at for one page of a tag filter at most (the store has no tag index); the
page then offers to go on from where the scan stopped."""
STATUSES: Final = ("pending", *FINAL_STATUSES)


class ConsoleState(Protocol):
    """What the console needs of the API process (:class:`agents.api.app.ApiState`)."""

    @property
    def root(self) -> Runtime: ...

    @property
    def store(self) -> MetadataStore: ...


def grid_page(store: MetadataStore, folder: str | None, status: str | None, tag: str | None,
              limit: int, cursor: str | None) -> tuple[list[Asset], str | None, int]:
    """One page of the grid: (assets, next cursor, assets scanned). Without a tag this is one
    keyset query; with one, pages of the store are scanned (at most :data:`TAG_SCAN` assets)
    and filtered, case-insensitively."""
    if not tag:
        items = store.list_assets(folder, status, limit + 1, cursor)
        more = len(items) > limit
        items = items[:limit]
        return items, items[-1].asset_id if more and items else None, len(items)
    want = tag.casefold()
    found: list[Asset] = []
    after, scanned = cursor, 0
    while scanned < TAG_SCAN:
        batch = store.list_assets(folder, status, 200, after)
        for a in batch:
            after = a.asset_id
            scanned += 1
            if any(t.casefold() == want for t in a.tags):
                found.append(a)
                if len(found) == limit:
                    rest = store.list_assets(folder, status, 1, after)
                    return found, after if rest else None, scanned
            if scanned >= TAG_SCAN:
                break
        if len(batch) < 200:
            return found, None, scanned
    return found, after, scanned


def asset_json(st: ConsoleState, asset: Asset) -> dict[str, Any]:
    """The asset as ``GET /v1/assets/{id}`` answers it (the webhooks included)."""
    from agents.api.app import asset_out, public_delivery

    out = asset_out(asset)
    out.webhooks = [public_delivery(d) for d in st.store.deliveries_of(asset.asset_id)]
    return out.model_dump(mode="json")


def make_router(get_state: Callable[[], ConsoleState], settings: Any) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    key_hashes = frozenset(settings.api_keys())

    def session(request: Request) -> str | None:
        return auth.session_key(request, key_hashes)

    def to_login(request: Request) -> Response:
        return RedirectResponse(auth.login_next(request), status_code=303)

    def page(template: str, current: str, status_code: int = 200, **ctx: Any) -> Response:
        return render(settings, template, status_code, current=current, **ctx)

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return FileResponse(STATIC / "favicon.png", media_type="image/png",
                            headers={"Cache-Control": "public, max-age=86400"})

    # ------------------------------------------------------------------------ login
    @router.get("/login")
    async def login_form(request: Request, next: str = "/") -> Response:
        return page("login.html", "", next=auth.local_next(next), error="",
                    logged_in=session(request) is not None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        key, target = auth.parse_login(await request.body())
        if not auth.same_origin(request):
            return page("login.html", "", 403, next=target, logged_in=False,
                        error="the login form must be sent from this site")
        problem = "enter the API key" if not key else key_problem(key, None, key_hashes)
        if problem is not None:
            return page("login.html", "", 401, next=target, error=problem, logged_in=False)
        out = RedirectResponse(target, status_code=303)
        out.set_cookie(auth.COOKIE, key, httponly=True, samesite="strict", path="/",
                       secure=bool(settings.api_console_secure_cookie))
        return out

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        if not auth.same_origin(request):
            raise HTTPException(403, "the logout form must be sent from this site")
        out = RedirectResponse("/login", status_code=303)
        out.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict",
                          secure=bool(settings.api_console_secure_cookie))
        return out

    # ------------------------------------------------------------------------ assets
    @router.get("/")
    async def grid(request: Request, folder: str = "", status: str = "", tag: str = "",
                   cursor: str = "", limit: int = PAGE_SIZE) -> Response:
        if session(request) is None:
            return to_login(request)
        problems: list[str] = []
        folder_q = _folder_filter(folder, problems)
        status_q = status if status in STATUSES else None
        if status and status_q is None:
            problems.append(f"unknown status {status[:32]!r}")
        tag_q = tag.strip()[:limits.MAX_TAG] or None
        cursor_q = cursor[:limits.MAX_ASSET_ID] or None
        size = max(1, min(limit, 200))
        st = get_state()
        items, next_cursor, scanned = await asyncio.to_thread(
            grid_page, st.store, folder_q, status_q, tag_q, size, cursor_q)
        from agents.api.app import asset_out

        cards = [card_of(asset_out(a).model_dump(mode="json")) for a in items]
        return page("grid.html", "assets", cards=cards, folder=folder, status=status or "",
                    tag=tag, statuses=STATUSES, next_cursor=next_cursor, cursor=cursor_q,
                    problems=problems, scanned=scanned if tag_q else None, limit=size,
                    tag_scan=TAG_SCAN)

    @router.get("/assets/{asset_id}")
    async def asset_page(request: Request, asset_id: str = PathParam(
            min_length=1, max_length=limits.MAX_ASSET_ID)) -> Response:
        if session(request) is None:
            return to_login(request)
        st = get_state()
        found = await asyncio.to_thread(st.store.get_asset, asset_id)
        if found is None:
            return page("missing.html", "assets", 404, what=f"asset {asset_id}")
        data = await asyncio.to_thread(asset_json, st, found)
        return page("asset.html", "assets", asset=data, view=asset_view(data))

    @router.get("/moderation")
    async def moderation_page(request: Request, status: str = "pending", folder: str = "",
                              cursor: str = "") -> Response:
        if session(request) is None:
            return to_login(request)
        problems: list[str] = []
        folder_q = _folder_filter(folder, problems)
        if status not in moderation.STATUSES:
            problems.append(f"unknown moderation status {status[:32]!r}")
            status = "pending"
        after = _queue_after(cursor)
        items = await asyncio.to_thread(get_state().store.moderation_queue, status, folder_q,
                                        PAGE_SIZE + 1, after)
        more = len(items) > PAGE_SIZE
        items = items[:PAGE_SIZE]
        from agents.api.app import asset_out

        cards = [review_card_of(asset_out(a).model_dump(mode="json")) for a in items]
        next_cursor = f"{items[-1].created_at}:{items[-1].asset_id}" if more and items else None
        return page("moderation.html", "moderation", cards=cards, status=status,
                    folder=folder, statuses=moderation.STATUSES, problems=problems,
                    next_cursor=next_cursor)

    # ------------------------------------------------------------------------ operations
    @router.get("/status")
    async def status_page(request: Request) -> Response:
        if session(request) is None:
            return to_login(request)
        from agents.api.console.ops import replays
        from agents.operations import task_status

        root = get_state().root
        problems: list[str] = []
        try:
            figures = await asyncio.to_thread(task_status, root, 60.0)
        except Exception as exc:  # noqa: BLE001 - the broker may be down: say so on the page
            figures = {"tasks": [], "stalled": []}
            problems.append(f"the task figures could not be read: {exc}")
        found = await asyncio.to_thread(replays, root, 50)
        return page("status.html", "status", figures=figures, replays=found.items,
                    problems=problems)

    @router.get("/dead-letters")
    async def dead_letter_topics(request: Request) -> Response:
        if session(request) is None:
            return to_login(request)
        from agents.api.console.ops import dlq_names

        root = get_state().root
        stats = await asyncio.to_thread(root.store.task_stats, 0)
        topics = [(n, root.settings.topic("dlq", n),
                   stats.get(n, {}).get("failed") if n in root.processors else None)
                  for n in dlq_names(root)]
        return page("dead_letters.html", "dead-letters", topics=topics)

    @router.get("/dead-letters/{name}")
    async def dead_letter_list(request: Request, name: str = PathParam(max_length=128),
                               all: bool = False) -> Response:
        if session(request) is None:
            return to_login(request)
        from agents.api.console.ops import dead_letters

        try:
            found = await asyncio.to_thread(dead_letters, get_state().root, name, all)
        except HTTPException as exc:
            return page("missing.html", "dead-letters", exc.status_code, what=str(exc.detail))
        return page("dead_letter_list.html", "dead-letters", letters=found, show_all=all)

    # ------------------------------------------------------------------------ faces
    @router.get("/faces")
    async def faces_page(request: Request, offset: int = 0) -> Response:
        if session(request) is None:
            return to_login(request)
        offset = max(0, min(offset, 2**31 - 1))
        found = await asyncio.to_thread(face_clusters, get_state(), offset, PAGE_SIZE)
        return page("faces.html", "faces", offset=offset, size=PAGE_SIZE, **found)

    @router.get("/faces/{cluster_id}")
    async def cluster_page(request: Request, cluster_id: int = PathParam(
            ge=0, le=2**63 - 1)) -> Response:
        if session(request) is None:
            return to_login(request)
        found = await asyncio.to_thread(face_cluster, get_state(), cluster_id)
        if found is None:
            return page("missing.html", "faces", 404, what=f"face cluster {cluster_id}")
        return page("cluster.html", "faces", **found)

    return router


def _folder_filter(folder: str, problems: list[str]) -> str | None:
    """The page's folder filter, normalised; a bad one is a problem shown on the page."""
    if not folder:
        return None
    try:
        return normalize_folder(limits.folder(folder))
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _queue_after(cursor: str) -> tuple[int, str] | None:
    at, sep, aid = cursor[:limits.MAX_ASSET_ID + 24].partition(":")
    return (int(at), aid) if sep and at.isdigit() and aid else None


def review_card_of(asset: dict[str, Any]) -> dict[str, Any]:
    """A grid card plus the moderation's reasons (the rules that held the asset)."""
    found = asset.get("moderation")
    reasons = found.get("reasons") if isinstance(found, dict) else None
    return {**card_of(asset),
            "reasons": [r[:200] for r in (reasons or [])[:5] if isinstance(r, str)]}


def _crop(asset: Asset | None, box: Any) -> dict[str, Any] | None:
    """How to show a face: the asset's picture in an SVG whose viewBox is the face box (its
    thumbnail when there is one, else the original), in the picture's pixels."""
    from agents.api.media import media_urls, original_url

    if asset is None or not isinstance(box, list) or len(box) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    width, height = asset.info.get("width"), asset.info.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        return None
    urls = media_urls(asset)
    href = urls.info.get("thumbnail") or (original_url(asset.asset_id) if asset.uri else None)
    if href is None:
        return None
    pad = 0.15 * max(w, h)
    return {"href": href, "width": width, "height": height,
            "viewbox": f"{x - pad:g} {y - pad:g} {w + 2 * pad:g} {h + 2 * pad:g}"}


def face_clusters(st: ConsoleState, offset: int, size: int) -> dict[str, Any]:
    from sinks.indexes.face_names import names
    from sinks.indexes.faces import index_for

    engine = st.store.engine
    idx = index_for(engine)
    clusters, total = idx.clusters(size, offset), idx.cluster_count()
    reps = [c["representative"] for c in clusters if c.get("representative")]
    found = st.store.get_assets([r["asset_id"] for r in reps])
    named = names(engine, [c["cluster_id"] for c in clusters])
    items = []
    for c in clusters:
        rep = c.get("representative") or {}
        items.append({"cluster_id": c["cluster_id"], "size": c["size"],
                      "name": named.get(c["cluster_id"]),
                      "asset_id": rep.get("asset_id"),
                      "crop": _crop(found.get(rep.get("asset_id", "")), rep.get("box"))})
    return {"clusters": items, "total": total}


def face_cluster(st: ConsoleState, cluster_id: int) -> dict[str, Any] | None:
    from sinks.indexes.face_names import names
    from sinks.indexes.faces import index_for

    engine = st.store.engine
    found = index_for(engine).cluster(cluster_id, 500)
    if found is None:
        return None
    assets = st.store.get_assets(sorted({f["asset_id"] for f in found["faces"]}))
    faces = [{**f, "crop": _crop(assets.get(f["asset_id"]), f.get("box"))}
             for f in found["faces"]]
    return {"cluster_id": cluster_id, "size": found["size"], "faces": faces,
            "name": names(engine, [cluster_id]).get(cluster_id)}
