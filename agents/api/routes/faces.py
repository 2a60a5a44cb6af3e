"""Read API of the face-cluster index (:mod:`sinks.indexes.faces`).

``GET /v1/faces/clusters`` pages through the clusters, largest first, each with a representative
face; ``GET /v1/faces/clusters/{cluster_id}`` lists a cluster's faces (404 when unknown). The
routes ``index-faces`` declares (``routes="agents.api.routes.faces:task_routes"``): the upload
API mounts them with its key check (:func:`agents.api.routes.mount_task_routes`); directly::

    app.include_router(make_router(lambda: st.store.engine, auth))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from processors.registry import RouteContext
from sinks.indexes.faces import index_for

MAX_OFFSET: Final = 2**31 - 1
"""Paging past two billion clusters is no use; an unbounded offset overflowed the database's
64-bit integer (a 500)."""


class FaceRef(BaseModel):
    asset_id: str
    postprocess: str
    face_no: int = Field(description="index of the face in the asset's index-faces result")
    box: list[int] = Field(description="[x, y, width, height] in the asset's upright pixels")
    confidence: float


class ClusterSummary(BaseModel):
    cluster_id: int
    size: int = Field(description="number of faces in the cluster")
    representative: FaceRef | None = Field(
        default=None, description="the member face with the highest detection confidence")


class ClusterPage(BaseModel):
    items: list[ClusterSummary]
    total: int = Field(description="number of clusters in the index")
    limit: int
    offset: int


class ClusterDetail(BaseModel):
    cluster_id: int
    size: int
    faces: list[FaceRef]


class _Problem(BaseModel):
    detail: str


def make_router(get_engine: Callable[[], Engine], auth: Sequence[Any]) -> APIRouter:
    """The face-index routes; ``auth`` are the dependencies every route runs (the API key)."""
    router = APIRouter(prefix="/v1/faces", tags=["faces"], dependencies=list(auth))

    @router.get("/clusters", response_model=ClusterPage)
    async def list_clusters(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> ClusterPage:
        def read() -> tuple[list[dict[str, Any]], int]:
            idx = index_for(get_engine())
            return idx.clusters(limit, offset), idx.cluster_count()

        items, total = await asyncio.to_thread(read)
        return ClusterPage(items=[ClusterSummary.model_validate(c) for c in items],
                           total=total, limit=limit, offset=offset)

    @router.get("/clusters/{cluster_id}", response_model=ClusterDetail,
                responses={404: {"model": _Problem}})
    async def get_cluster(
        cluster_id: Annotated[int, Path(ge=0, le=2**63 - 1)],
        limit: Annotated[int, Query(ge=1, le=10_000, description="faces listed at most")]
        = 1000,
    ) -> ClusterDetail:
        def read() -> dict[str, Any] | None:
            return index_for(get_engine()).cluster(cluster_id, limit)

        found = await asyncio.to_thread(read)
        if found is None:
            raise HTTPException(404, f"no face cluster {cluster_id}")
        return ClusterDetail.model_validate(found)

    return router


def task_routes(ctx: RouteContext) -> APIRouter:
    """The route factory ``index-faces`` declares."""
    return make_router(lambda: ctx.services().engine, ctx.auth)
