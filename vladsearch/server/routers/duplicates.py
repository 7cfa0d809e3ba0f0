"""Duplicates over HTTP: GET /api/duplicates (as `duplicates --json`), POST /api/duplicates/move (as
`duplicates --move-to`, dry run by default) and POST /api/undo (as `vladsearch undo MANIFEST`).

The moves go through `vladsearch.collection.duplicate_actions`, as on the command line: same manifest,
same undo, nothing deleted. A client names the folder that receives the extras by one plain
name; it is created beside the photos' folder (default `<root>-duplicates`), never elsewhere.
Only manifests beside the photos' folder that belong to this index can be undone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vladsearch.collection import duplicate_actions
from vladsearch.collection.file_moves import read_manifest
from vladsearch.server.errors import ServiceError
from vladsearch.server.models import ERRORS

router = APIRouter(prefix="/api", tags=["duplicates"])
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


@router.get("/duplicates", responses=ERRORS,
            summary="Duplicate groups of the whole index (duplicates --json); one computation at a time, "
                    "kept until the next commit")
async def duplicates(request: Request, min_inliers: int | None = Query(None, ge=4, le=10_000),
                     neighbors: int | None = Query(None, ge=1, le=100)) -> dict[str, Any]:
    engine = request.app.state.engine
    return await engine.whole.run(engine.duplicates, min_inliers, neighbors)


class MoveRequest(BaseModel):
    dry_run: bool = Field(True, description="only show what would move (the default); false moves the files")
    move_to: str | None = Field(None, description="name of the folder, beside the photos' folder, that receives "
                                                  "the extras (default: <photos folder>-duplicates)")
    min_inliers: int | None = Field(None, ge=4, le=10_000)
    neighbors: int | None = Field(None, ge=1, le=100)


class UndoRequest(BaseModel):
    manifest: str = Field(description="the manifest path a move returned")
    dry_run: bool = False


@router.post("/duplicates/move", responses=ERRORS,
             summary="Move every image but the kept one of each duplicate group aside (duplicates --move-to); "
                     "dry_run (default) changes nothing")
async def move(request: Request, body: MoveRequest) -> dict[str, Any]:
    engine = request.app.state.engine
    report = await engine.whole.run(engine.duplicates, body.min_inliers, body.neighbors)
    queue = engine.whole if body.dry_run else engine.writes
    return await queue.run(move_extras, engine, report, body.move_to, body.dry_run)


@router.post("/undo", responses=ERRORS, summary="Put back every file a move's manifest records (vladsearch undo)")
async def undo(request: Request, body: UndoRequest) -> dict[str, Any]:
    engine = request.app.state.engine
    return await engine.writes.run(undo_manifest, engine, body.manifest, body.dry_run)


def move_folder(root: Path, name: str | None) -> Path:
    """The folder beside the photos' folder named by a client (one plain name), or the default."""
    root = Path(os.path.abspath(root))
    if name is None:
        return root.parent / f"{root.name}-duplicates"
    if not _FOLDER_NAME.match(name) or name in (".", ".."):
        raise ServiceError(400, f"invalid move_to {name!r}: give one folder name (letters, digits, space, . _ -), "
                                "created beside the photos' folder")
    return root.parent / name


def move_extras(engine, report: dict[str, Any], name: str | None, dry_run: bool) -> dict[str, Any]:
    """duplicate_actions.run on the server's writing index, then follow the commit."""
    with engine._write_lock:
        writer = engine._writer
        try:
            result = duplicate_actions.run(writer, duplicate_actions.groups_of(report),
                                           move_folder(writer.root, name), dry_run=dry_run)
        except ValueError as exc:
            raise ServiceError(400, str(exc)) from None
        except OSError as exc:
            raise ServiceError(507, f"moving stopped: {exc}; nothing was deleted (resume or undo from the "
                                    "manifest)") from None
    if not dry_run:
        engine.follow()
    return result


def undo_manifest(engine, manifest_path: str, dry_run: bool) -> dict[str, Any]:
    """duplicate_actions.undo of a manifest of this index that lies beside its photos' folder."""
    with engine._write_lock:
        writer = engine._writer
        path = _allowed_manifest(writer, manifest_path)
        try:
            result = duplicate_actions.undo(path, writer, dry_run=dry_run)
        except OSError as exc:
            raise ServiceError(507, f"undo stopped: {exc}; nothing was deleted (run it again)") from None
    if not dry_run:
        engine.follow()
    return result


def _allowed_manifest(writer, manifest_path: str) -> Path:
    beside = os.path.realpath(Path(os.path.abspath(writer.root)).parent)
    real = os.path.realpath(manifest_path)
    if (not os.path.isabs(manifest_path) or not real.endswith(".json")
            or os.path.commonpath([beside, real]) != beside or not os.path.isfile(real)):
        raise ServiceError(404, f"{manifest_path} is not a move manifest of this server (give the absolute path "
                                "a move returned)")
    try:
        manifest = read_manifest(real)
    except ValueError as exc:
        raise ServiceError(400, str(exc)) from None
    if os.path.realpath(manifest.get("index", "")) != os.path.realpath(writer.path):
        raise ServiceError(400, f"{manifest_path} records moves of another index ({manifest.get('index')})")
    return Path(real)
