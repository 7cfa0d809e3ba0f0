"""The index's images: add uploads, remove one, fetch one or its thumbnail (only files under the root)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import FileResponse, Response

from vladsearch.server.models import ERRORS, AddResponse, RemoveResponse

router = APIRouter(prefix="/api/images", tags=["images"])
_NOSNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@router.post("", response_model=AddResponse, responses=ERRORS, summary="Upload images and add them to the index")
async def add_images(request: Request,
                     images: Annotated[list[UploadFile], File(description="one or more image files")]) -> dict:
    """Stores each upload under `<root>/uploads/` with a fresh name, then adds them in one commit (`add --json`)."""
    engine = request.app.state.engine
    files = [(upload.filename or "upload", await upload.read()) for upload in images]
    return await engine.writes.run(engine.add_uploads, files)


@router.get("/{path:path}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
            response_class=Response, summary="A small JPEG of an indexed image")
async def thumbnail(request: Request, path: str) -> Response:
    engine = request.app.state.engine
    data = await engine.light.run(engine.thumbnail, path)
    return Response(data, media_type="image/jpeg", headers=_NOSNIFF)


@router.get("/{path:path}", responses={200: {"content": {"image/*": {}}}, **ERRORS}, response_class=FileResponse,
            summary="An indexed image file, as stored")
async def image(request: Request, path: str) -> FileResponse:
    engine = request.app.state.engine
    real = await engine.light.run(engine.indexed_file, path)
    return FileResponse(real, headers=_NOSNIFF)


@router.delete("/{path:path}", response_model=RemoveResponse, responses=ERRORS, summary="Remove an image")
async def remove(request: Request, path: str) -> dict:
    """Like `vladsearch remove INDEX PATH`; a file this server uploaded is deleted too."""
    engine = request.app.state.engine
    return await engine.writes.run(engine.remove, path)
