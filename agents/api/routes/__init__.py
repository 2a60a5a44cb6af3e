"""HTTP routes the registered tasks declare (``routes=`` of :func:`processors.registry.register`).

:func:`mount_task_routes` calls each task's route factories once, with a
:class:`processors.registry.RouteContext` (the API's services, its key-check dependencies and
settings), and includes the routers they return; the body limits they declare go to the API's
request guard. The modules of this package are the built-in tasks' factories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI

from agents.api.guards import BodyLimit
from agents.settings import Settings
from processors.registry import (
    Processor,
    RouteContext,
    Services,
    TaskRoutes,
    describe_ref,
    load_all,
    resolve,
)

log = logging.getLogger("darkroom.api")


def mount_task_routes(app: FastAPI, settings: Settings, get_engine: Callable[[], Any],
                      auth: Sequence[Any], processors: Mapping[str, Processor] | None = None,
                      ) -> dict[tuple[str, str], BodyLimit]:
    """Include the routes of every registered task (default: :func:`load_all`) in ``app``;
    returns their body limits by (method, path). ``get_engine`` gives the metadata database's
    engine once the API runs. A factory that fails is a startup error naming it."""
    ctx = RouteContext(
        services=lambda: Services(engine=get_engine(), data_dir=settings.data_dir,
                                  settings=settings),
        auth=tuple(auth), settings=settings)
    limits: dict[tuple[str, str], BodyLimit] = {}
    for proc in (load_all() if processors is None else processors).values():
        for ref in proc.routes:
            try:
                made = resolve(ref)(ctx)
            except Exception as exc:
                raise RuntimeError(f"the routes of task {proc.name!r} ({describe_ref(ref)}) "
                                   f"could not be built: {exc}") from exc
            routes = made if isinstance(made, TaskRoutes) else TaskRoutes(router=made)
            if not isinstance(routes.router, APIRouter):
                raise TypeError(f"the routes of task {proc.name!r} ({describe_ref(ref)}) are "
                                f"not an APIRouter: {type(routes.router).__name__}")
            app.include_router(routes.router)
            for (method, path), cap in routes.body_limits.items():
                limits[(method.upper(), path)] = BodyLimit(cap.max_bytes, cap.message)
    return limits
