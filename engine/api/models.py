from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from engine.api.auth import require_admin, require_engine
from engine.schemas import MAX_BIGINT, ModelIn, ModelInfo, Problem

router = APIRouter(tags=["models"])
_ERRORS = {404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}}
ModelId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Model id.")]
JobId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Job id.")]


@router.get("/models", response_model=list[ModelInfo])
def list_models(request: Request) -> list[ModelInfo]:
    """Exported students with their evaluation on real test data, newest first."""
    return [ModelInfo(**m) for m in request.app.state.store.models.list()]


@router.get("/models/served", response_model=ModelInfo, responses=_ERRORS)
def served_model(request: Request) -> ModelInfo:
    """The model the demo serves."""
    model = request.app.state.store.models.served()
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no model is marked served: export one, then serve it")
    return ModelInfo(**model)


@router.post("/models/{model_id}/serve", response_model=ModelInfo, responses=_ERRORS,
             dependencies=[Depends(require_admin)])
def serve_model(model_id: ModelId, request: Request) -> ModelInfo:
    """Make this model the one the demo serves (admins only: it changes what every demo user gets)."""
    return ModelInfo(**request.app.state.store.models.serve(model_id))


@router.post("/jobs/{job_id}/models", response_model=ModelInfo, status_code=201, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def register_model(job_id: JobId, body: ModelIn, request: Request) -> ModelInfo:
    """An export job registers what it exported (paths inside the workspace)."""
    store, workspace = request.app.state.store, request.app.state.settings.workspace.resolve()
    store.jobs.assert_running(job_id, body.attempt)
    for path in (body.classifier_path, body.torchscript_path, body.onnx_path):
        try:
            resolved = (workspace / path).resolve()
            usable = resolved.is_relative_to(workspace) and resolved.exists()
        except (OSError, ValueError):  # a NUL byte, a name too long for the file system
            usable = False
        if not usable:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{path} is not inside the workspace")
    entry = body.model_dump(exclude={"attempt"}) | {"job_id": job_id}
    return ModelInfo(**store.models.register(entry))
