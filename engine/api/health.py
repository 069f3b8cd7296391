from __future__ import annotations

from fastapi import APIRouter, Request

from engine import __version__
from engine.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    """Liveness; the only endpoint that needs no token."""
    store = request.app.state.store
    return Health(status="ok", version=__version__, schema_version=store.schema_version,
                  workspace=str(request.app.state.settings.workspace))
