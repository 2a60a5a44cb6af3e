"""``/v1/postprocesses/{name}`` and ``/v1/presets``: post-process definitions and upload presets
over HTTP (stored by :mod:`sinks.store.definitions`, merged and checked by
:mod:`agents.policy.definitions`, applied to uploads by :mod:`agents.presets`).

Writes need an API key; where ``DARKROOM_API_ADMIN_KEY_HASHES`` lists keys, only those (403 for
the others). Every body is a JSON object, checked before anything is stored: a definition by the
YAML file's checker against the whole merged set (422 with the checker's messages, by field path,
without lines), a preset by its model and the upload limits (422). Every write moves the
definitions counter in its transaction; the answer carries it (``definitions_version``), and an
upload accepted after the answer is planned with the write on every worker.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Security
from fastapi import Path as PathParam
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.responses import Response

from agents.api.guards import hash_key
from agents.policy import limits
from agents.policy.definitions import (
    MAX_DEFINITIONS,
    DefinitionProblem,
    check_preset,
    definition_body,
)
from agents.settings import Settings

if TYPE_CHECKING:
    from agents.composition import Runtime
    from sinks.store.definitions import Stored

_KEY: Final = APIKeyHeader(name="X-API-Key", auto_error=False)

_JSON_OBJECT: Final[dict[str, Any]] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": True}}}}}
_PP_DOC: Final = ("a post-process as in the YAML file: name, task, enabled, mode, params, "
                  "trigger, validation")
_PRESET_DOC: Final = ("name, postprocesses (names), folder, tags, context (object of strings), "
                      "mode (async|sync), notification_url, on_success")

Name = Annotated[str, PathParam(min_length=1, max_length=limits.MAX_NAME)]


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail)


MAX_BODY_DEPTH: Final = 32
"""How deep a definition's JSON may nest (rules nest; 32 is far more than any needs)."""


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _problem(422, f"the body must be a JSON object: {exc}") from exc
    if limits.json_depth(text) > MAX_BODY_DEPTH:
        raise _problem(422, f"the body nests deeper than {MAX_BODY_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _problem(422, f"the body must be a JSON object: {exc}") from exc


def _out(stored: Stored, source: str, counter: int) -> dict[str, Any]:
    return {**stored.to_json(), "source": source, "definitions_version": counter}


def mount_definitions(app: FastAPI, root: Callable[[], Runtime], settings: Settings,
                      auth: Sequence[DependsParam], errors: dict[int | str, dict[str, Any]]
                      ) -> None:
    """Add the routes of the module docstring to ``app``."""
    from sinks.store import definitions as store

    admins = frozenset(h.strip().rpartition(":")[2].lower()  # "name:digest" or "digest"
                       for h in settings.api_admin_key_hashes)
    write_lock = threading.Lock()  # one checked write at a time in this process

    async def require_admin(
        x_api_key: Annotated[str | None, Security(_KEY)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        if not admins:
            return
        key = x_api_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        digest = hash_key(key or "")
        if not any(hmac.compare_digest(digest, h) for h in admins):
            raise _problem(403, "this key may not write definitions "
                           "(DARKROOM_API_ADMIN_KEY_HASHES)")

    admin = [*auth, Depends(require_admin)]
    answers: dict[int | str, dict[str, Any]] = {
        k: v for k, v in errors.items() if k in (401, 408, 413, 422, 503)}
    answers |= {403: errors[401], 404: errors[401], 409: errors[401]}

    def engine() -> Any:
        return root().store.engine

    # ------------------------------------------------------------------ post-processes
    def pp_create(body: Any) -> tuple[Stored, int]:
        d = definition_body(body)
        live = root().definitions
        with write_lock:
            if store.get(engine(), "postprocess", d["name"]) is not None \
                    or live.in_bootstrap(d["name"]) is not None:
                raise _problem(409, f"post-process {d['name']!r} exists; PUT "
                               f"/v1/postprocesses/{d['name']} replaces it")
            if len(store.list_all(engine(), "postprocess")) >= MAX_DEFINITIONS:
                raise _problem(409, f"at most {MAX_DEFINITIONS} stored post-processes")
            live.candidate(d["name"], d)
            try:
                made = store.create(engine(), "postprocess", d["name"], d)
            except store.DefinitionExists as exc:
                raise _problem(409, str(exc)) from exc
        live.refresh(made[1])
        return made

    def pp_replace(name: str, body: Any) -> tuple[Stored, int, bool]:
        d = definition_body(body, name)
        live = root().definitions
        with write_lock:
            old = store.get(engine(), "postprocess", name)
            if old is None and live.in_bootstrap(name) is None:
                raise _problem(404, f"no post-process {name!r}; POST /v1/postprocesses "
                               "creates one")
            live.candidate(d["name"], d)
            made = store.replace(engine(), "postprocess", d["name"], d, create_missing=True)
        live.refresh(made[1])
        return made[0], made[1], old is None

    def pp_delete(name: str) -> int:
        live = root().definitions
        with write_lock:
            if store.get(engine(), "postprocess", name) is None:
                if live.in_bootstrap(name) is not None:
                    raise _problem(409, f"post-process {name!r} is defined by the YAML "
                                   "bootstrap only; PUT replaces it, the file removes it")
                raise _problem(404, f"no post-process {name!r}")
            using = [p.name for p in store.list_all(engine(), "preset")
                     if name.casefold() in {n.casefold() for n in
                                            p.body.get("postprocesses", [])}]
            try:
                after = live.candidate(name, None)
            except DefinitionProblem as exc:
                raise _problem(409, f"removing {name!r} leaves the set invalid: {exc}") from exc
            gone = after.get(name) is None
            if using and gone:
                raise _problem(409, f"post-process {name!r} is used by the presets "
                               f"{', '.join(using)}")
            counter = store.delete(engine(), "postprocess", name)
        live.refresh(counter)
        return counter

    def pp_get(name: str) -> dict[str, Any]:
        live = root().definitions
        counter = live.accepting_version()
        found = store.get(engine(), "postprocess", name)
        if found is not None:
            return _out(found, "api", counter)
        item = live.in_bootstrap(name)
        if item is not None:
            return {"name": str(item.get("name") or item.get("task")), "version": 0,
                    "definition": item, "source": "yaml", "created_at": None,
                    "updated_at": None, "definitions_version": counter}
        pp = live.config.get(name)
        if pp is not None:
            return {"name": pp.name, "version": 0, "definition": {"name": pp.name,
                    "task": pp.task, "enabled": False}, "source": "registered",
                    "created_at": None, "updated_at": None, "definitions_version": counter}
        raise _problem(404, f"no post-process {name!r}")

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        import sqlalchemy as sa

        try:
            return await asyncio.to_thread(fn, *args)
        except DefinitionProblem as exc:
            raise _problem(422, str(exc)) from exc
        except sa.exc.DBAPIError as exc:
            raise _problem(503, "the database is unavailable; try again") from exc

    @app.post("/v1/postprocesses", dependencies=admin, status_code=201,
              openapi_extra=_JSON_OBJECT, responses=answers, description=_PP_DOC)
    async def create_postprocess(request: Request) -> JSONResponse:
        """Create a post-process (201); 409 when the name exists, 422 with the checker's
        messages."""
        made, counter = await run(pp_create, await _json_body(request))
        return JSONResponse(_out(made, "api", counter), status_code=201,
                            headers={"Location": f"/v1/postprocesses/{made.name}"})

    @app.get("/v1/postprocesses/{name}", dependencies=auth, responses=answers)
    async def get_postprocess(name: Name) -> dict[str, Any]:
        """A post-process: its definition, version and source (api, yaml, registered)."""
        result: dict[str, Any] = await run(pp_get, name)
        return result

    @app.put("/v1/postprocesses/{name}", dependencies=admin, openapi_extra=_JSON_OBJECT,
             responses=answers, description=_PP_DOC)
    async def replace_postprocess(name: Name, request: Request) -> JSONResponse:
        """Replace a post-process (version + 1; a YAML one gets a stored override)."""
        made, counter, new = await run(pp_replace, name, await _json_body(request))
        return JSONResponse(_out(made, "api", counter), status_code=201 if new else 200)

    @app.delete("/v1/postprocesses/{name}", dependencies=admin, status_code=204,
                responses=answers)
    async def delete_postprocess(name: Name) -> Response:
        """Remove a stored post-process (a YAML entry it replaced comes back)."""
        counter = await run(pp_delete, name)
        return Response(status_code=204, headers={"Darkroom-Definitions-Version": str(counter)})

    # ------------------------------------------------------------------ presets
    def preset_write(name: str | None, body: Any) -> tuple[Stored, int, bool]:
        live = root().definitions
        live.accepting_version()
        preset = check_preset(body, live.config, settings.webhook_allow, name)
        data = preset.model_dump(exclude_none=True)
        with write_lock:
            if name is None:
                if len(store.list_all(engine(), "preset")) >= MAX_DEFINITIONS:
                    raise _problem(409, f"at most {MAX_DEFINITIONS} presets")
                try:
                    made = store.create(engine(), "preset", preset.name, data)
                except store.DefinitionExists as exc:
                    raise _problem(409, f"preset {preset.name!r} exists; PUT "
                                   f"/v1/presets/{preset.name} replaces it") from exc
                return made[0], made[1], True
            try:
                made = store.replace(engine(), "preset", preset.name, data)
            except store.DefinitionMissing as exc:
                raise _problem(404, f"no preset {name!r}; POST /v1/presets creates one") \
                    from exc
        return made[0], made[1], False

    def preset_get(name: str) -> dict[str, Any]:
        found = store.get(engine(), "preset", name)
        if found is None:
            raise _problem(404, f"no preset {name!r}")
        return _out(found, "api", store.current_version(engine()))

    def preset_list() -> dict[str, Any]:
        return {"items": [p.to_json() for p in store.list_all(engine(), "preset")],
                "definitions_version": store.current_version(engine())}

    def preset_delete(name: str) -> int:
        try:
            return store.delete(engine(), "preset", name)
        except store.DefinitionMissing as exc:
            raise _problem(404, f"no preset {name!r}") from exc

    @app.post("/v1/presets", dependencies=admin, status_code=201, openapi_extra=_JSON_OBJECT,
              responses=answers, description=_PRESET_DOC)
    async def create_preset(request: Request) -> JSONResponse:
        """Create an upload preset (201); 409 when the name exists, 422 when a field is
        refused."""
        made, counter, _new = await run(preset_write, None, await _json_body(request))
        return JSONResponse(_out(made, "api", counter), status_code=201,
                            headers={"Location": f"/v1/presets/{made.name}"})

    @app.get("/v1/presets", dependencies=auth, responses=answers)
    async def list_presets() -> dict[str, Any]:
        """Every upload preset."""
        result: dict[str, Any] = await run(preset_list)
        return result

    @app.get("/v1/presets/{name}", dependencies=auth, responses=answers)
    async def get_preset(name: Name) -> dict[str, Any]:
        """An upload preset and its version."""
        result: dict[str, Any] = await run(preset_get, name)
        return result

    @app.put("/v1/presets/{name}", dependencies=admin, openapi_extra=_JSON_OBJECT,
             responses=answers, description=_PRESET_DOC)
    async def replace_preset(name: Name, request: Request) -> JSONResponse:
        """Replace an upload preset (version + 1)."""
        made, counter, _new = await run(preset_write, name, await _json_body(request))
        return JSONResponse(_out(made, "api", counter))

    @app.delete("/v1/presets/{name}", dependencies=admin, status_code=204, responses=answers)
    async def delete_preset(name: Name) -> Response:
        """Remove an upload preset."""
        counter = await run(preset_delete, name)
        return Response(status_code=204, headers={"Darkroom-Definitions-Version": str(counter)})
