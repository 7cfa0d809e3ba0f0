"""POST /api/search: the ranked matches of one uploaded query image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from vladsearch.server.engine import SearchOptions
from vladsearch.server.models import ERRORS, SearchResponse

router = APIRouter(prefix="/api", tags=["search"])


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=ERRORS,
             summary="Search the index with an uploaded image")
async def search(request: Request,
                 image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, …)")],
                 top: Annotated[int, Query(ge=1, le=1000, description="matches to return")] = 10,
                 rerank: Annotated[int, Query(ge=0, le=1000, description="verify the N best candidates")] = 0,
                 verified_only: Annotated[bool, Query(description="with rerank: only verified matches")] = False,
                 query_expansion: Annotated[int, Query(ge=0, le=100, description="αQE with the N best")] = 0,
                 mirrored: Annotated[bool, Query(description="with rerank (SIFT): verify mirrored too")] = False,
                 ) -> dict:
    """Like `vladsearch search INDEX QUERY --json`, for one query: `{"query", "matches": [...]}` plus `seconds`."""
    engine = request.app.state.engine
    data = await image.read()
    options = SearchOptions(top, rerank, verified_only, query_expansion, mirrored)
    return await engine.searches.run(engine.search_upload, data, image.filename or "upload", options)
