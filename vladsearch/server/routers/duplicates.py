"""GET /api/duplicates: the groups of near-duplicate images, as `vladsearch duplicates --json` prints them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from vladsearch.server.models import ERRORS

router = APIRouter(prefix="/api", tags=["duplicates"])


@router.get("/duplicates", responses=ERRORS,
            summary="Duplicate groups of the whole index (duplicates --json); one computation at a time, "
                    "kept until the next commit")
async def duplicates(request: Request, min_inliers: int | None = Query(None, ge=4, le=10_000),
                     neighbors: int | None = Query(None, ge=1, le=100)) -> dict[str, Any]:
    engine = request.app.state.engine
    return await engine.whole.run(engine.duplicates, min_inliers, neighbors)
