"""GET /api/info: the index, as `vladsearch info --json` describes it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from vladsearch.server.models import ERRORS, InfoResponse

router = APIRouter(prefix="/api", tags=["info"])


@router.get("/info", response_model=InfoResponse, responses=ERRORS, summary="Describe the index (info --json)")
async def info(request: Request) -> dict:
    engine = request.app.state.engine
    return await engine.light.run(engine.info)
