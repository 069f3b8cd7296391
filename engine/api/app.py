"""The FastAPI application: routers, auth, and errors that say what to do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from engine import __version__
from engine.api import backup, datasets, health, images, imports, jobs, models, reviews, turing, users
from engine.api.auth import SignInLimiter, require_admin, require_token
from engine.api.body_limit import BodySizeLimit
from engine.data.images import ImageProblem
from engine.data.sources import SourceError
from engine.jobs.scheduler import Scheduler
from engine.schemas import error_lines
from engine.settings import MAX_REQUEST_BYTES, Settings, server_api_token
from engine.store import (
    JobConflict,
    ReviewConflict,
    ReviewProblem,
    Store,
    TuringConflict,
    TuringProblem,
    UnknownDataset,
    UnknownJob,
    UnknownModel,
    UnknownTuringSession,
    UserExists,
    UserProblem,
)


def _status_handler(code: int):
    def handle(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=code)

    return handle


def create_app(settings: Settings, store: Store, scheduler: Scheduler | None = None) -> FastAPI:
    """The API over `store`. With a scheduler, it starts with the app (recovering jobs a dead server left
    running) and stops with it (stopping job processes, which re-queue)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if scheduler:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler:
                scheduler.stop()

    app = FastAPI(title="DerMAE Studio engine", version=__version__, lifespan=lifespan,
                  description="The engine's HTTP API. Every endpoint but /health and /auth/login needs the "
                              "workspace API token or a reviewer's session token.")
    app.state.settings = settings
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.api_token = server_api_token(settings)
    app.state.sign_in_limiter = SignInLimiter.from_env()
    # No CORS middleware on purpose: browsers refuse cross-origin reads, and the studio calls from its own server.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_REQUEST_BYTES)

    app.include_router(health.router)
    app.include_router(users.router)  # sign-in is open; the rest of it checks roles per endpoint
    protected = [Depends(require_token)]
    app.include_router(imports.router, dependencies=protected)  # anyone may read what was imported; admins import
    app.include_router(backup.router, dependencies=[Depends(require_admin)])
    app.include_router(reviews.router, dependencies=protected)
    app.include_router(images.router, dependencies=protected)
    app.include_router(jobs.router, dependencies=protected)
    app.include_router(datasets.router, dependencies=protected)
    app.include_router(models.router, dependencies=protected)
    app.include_router(turing.router, dependencies=protected)

    # Errors the store raises map to HTTP statuses here, once, instead of a try/except in every endpoint.
    for error, code in ((UnknownJob, 404), (UnknownDataset, 404), (UnknownModel, 404), (JobConflict, 409),
                        (ReviewConflict, 409), (ReviewProblem, 422), (UserExists, 409), (UserProblem, 422),
                        (UnknownTuringSession, 404), (TuringConflict, 409), (TuringProblem, 422)):
        app.add_exception_handler(error, _status_handler(code))

    @app.exception_handler(SourceError)
    def _source_error(_: Request, e: SourceError) -> JSONResponse:
        return JSONResponse({"detail": e.summary, "problems": e.problems},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        # One shape for every 4xx (Problem): `detail` a sentence, `problems` one line per field.
        problems = error_lines(e.errors())
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return JSONResponse({"detail": f"invalid request: {problems[0] if problems else 'unreadable'}{more}",
                             "problems": problems}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(ImageProblem)
    def _image_problem(_: Request, e: ImageProblem) -> JSONResponse:
        return JSONResponse({"detail": str(e), "problems": []}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    return app
