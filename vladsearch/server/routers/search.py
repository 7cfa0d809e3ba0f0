"""POST /api/search: the answer for one uploaded query image (its confirmed matches, or "not in the collection")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from vladsearch.query.search import SearchOptions
from vladsearch.server.models import ERRORS, SearchResponse

router = APIRouter(prefix="/api", tags=["search"])
DEFAULTS = SearchOptions()  # the CLI's and the Python API's defaults


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=ERRORS,
             summary="Is this image in the collection? Search the index with an uploaded image")
async def search(request: Request,
                 image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, …)")],
                 top: Annotated[int, Query(ge=1, le=1000, description="matches to return")] = DEFAULTS.top,
                 rerank: Annotated[int, Query(ge=0, le=1000, description="VLAD candidates to verify (0: none, "
                                              "the plain VLAD neighbours)")] = DEFAULTS.rerank,
                 unverified: Annotated[bool, Query(description="also list the candidates that were not confirmed, "
                                                   "after the confirmed ones")] = DEFAULTS.unverified,
                 min_confidence: Annotated[float, Query(ge=0.0, le=1.0, description="drop confirmed matches below "
                                                        "this measured precision")] = DEFAULTS.min_confidence,
                 query_expansion: Annotated[int, Query(ge=0, le=100, description="αQE with the N best")] =
                 DEFAULTS.query_expansion,
                 mirrored: Annotated[bool | None, Query(description="search and verify the mirrored query too "
                                                        "(default: where the feature allows it)")] = DEFAULTS.mirrored,
                 verified_only: Annotated[bool, Query(description="deprecated: confirmed matches only is the "
                                                      "default", deprecated=True)] = False,
                 ) -> dict:
    """Like `vladsearch search INDEX QUERY --json`, for one query: `{"query", "answer", "matches": [...]}` plus `seconds`."""
    engine = request.app.state.engine
    data = await image.read()
    options = SearchOptions(top=top, rerank=rerank, unverified=unverified and not verified_only,
                            min_confidence=min_confidence, mirrored=mirrored, query_expansion=query_expansion)
    return await engine.searches.run(engine.search_upload, data, image.filename or "upload", options)
