"""`create_app`: the FastAPI application over one index — routers, errors as JSON, limits, the page."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vladsearch.live.cli import start_in_thread
from vladsearch.server.engine import Engine, Limits
from vladsearch.server.errors import ServiceError
from vladsearch.server.routers import duplicates, images, info, search
from vladsearch.server.security import BodyLimitMiddleware, require_token
from vladsearch.version import __version__

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("vladsearch.server")


def create_app(index_dir: str | os.PathLike, token: str | None = None, *, workers: int | None = None,
               waiting: int = 32, limits: Limits | None = None, refresh_interval: float = 1.0,
               weights: str | None = None, root: str | os.PathLike | None = None,
               engine: Engine | None = None, watch: list[str] | None = None) -> FastAPI:
    """The service for the index at `index_dir` (opened and loaded now, so errors show before serving).

    token: required as `Authorization: Bearer <token>` on /api/* (None: no check — loopback only);
    workers: threads running searches at once (default: every core); waiting: searches queued
    beyond them before 503; refresh_interval: seconds between checks for other processes' commits;
    watch: folders kept in step with the index by a background thread (`vladsearch watch`, live/cli.py).
    """
    engine = engine or Engine(index_dir, workers=workers, waiting=waiting, limits=limits,
                              refresh_interval=refresh_interval, weights=weights, root=root)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        watcher = start_in_thread(engine.index.path, watch, weights=weights) if watch else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher[1].set()  # the commit under way finishes first
                watcher[0].join(timeout=600)
            engine.stop()

    app = FastAPI(title="vladsearch", version=__version__, lifespan=lifespan,
                  description="Search a live vladsearch index by image; add, remove and view its images.")
    app.state.engine, app.state.token = engine, token
    protected = [Depends(require_token)]
    for router in (search.router, images.router, info.router, duplicates.router):
        app.include_router(router, dependencies=protected)
    app.add_middleware(BodyLimitMiddleware, limit=engine.limits.max_upload_bytes)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is `{"error": "..."}` with its status; nothing unexpected takes the server down."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}", detail=_plain(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); the server keeps running")


def _plain(errors: list[dict]) -> list[dict]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]
