"""POST /backup: the database half of `dermae backup` while the server runs.

The server holds the DuckDB file, so only it can export it; the CLI then copies the workspace's files itself
(engine.backup). The export is written by DuckDB from one transaction, so reviews, jobs and versions keep being
written meanwhile. Admins only, and only into an empty folder the caller made: it writes where it is told.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status

from engine.schemas import BackupIn, DatabaseBackup, Problem
from engine.store import BackupFailed

router = APIRouter(tags=["backup"])


@router.post("/backup", response_model=DatabaseBackup, status_code=201,
             responses={409: {"model": Problem}, 422: {"model": Problem}})
def backup(body: BackupIn, request: Request) -> DatabaseBackup:
    """Export the database (DuckDB EXPORT DATABASE: the schema, then a Parquet file per table) into `path`, an empty
    folder on the server's machine outside the workspace, made by the caller: the server only fills it."""
    path = Path(body.path)
    try:
        refusal = _refusal(path, request.app.state.settings.workspace.resolve())
    except (OSError, ValueError) as e:  # a name too long, a folder we may not read
        refusal = (status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.path} cannot be used: {e}")
    if refusal:
        raise HTTPException(*refusal)
    try:
        export = request.app.state.store.backup(path)
    except BackupFailed as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    return DatabaseBackup(path=str(path), schema_version=export.schema_version, counts=export.counts)


def _refusal(path: Path, workspace: Path) -> tuple[int, str] | None:
    """Why the export may not go into `path`, as (status, message); None if it may."""
    if not path.is_absolute():
        return status.HTTP_422_UNPROCESSABLE_CONTENT, f"{path} is not an absolute path"
    if path.is_symlink() or not path.is_dir():
        return status.HTTP_422_UNPROCESSABLE_CONTENT, f"{path} is not a folder on the server: make an empty one"
    if path.resolve().is_relative_to(workspace):
        return (status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{path} is inside the workspace {workspace}: back up to a folder outside it")
    if any(path.iterdir()):
        return status.HTTP_409_CONFLICT, f"{path} is not empty: the export goes into an empty folder"
    return None
