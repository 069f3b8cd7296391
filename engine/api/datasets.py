from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse

from engine.api.auth import refuse_if_blind
from engine.data.export import export_zip
from engine.data.images import ImageStore
from engine.schemas import DATASET_ID, DatasetFreeze, DatasetItem, DatasetVersion, Problem

router = APIRouter(prefix="/datasets", tags=["datasets"])
_ERRORS = {404: {"model": Problem}, 422: {"model": Problem}}
VersionId = Annotated[str, Path(pattern=DATASET_ID, description="Dataset version id (GET /datasets).")]


@router.post("", response_model=DatasetVersion, status_code=201, responses=_ERRORS)
def freeze(body: DatasetFreeze, request: Request) -> DatasetVersion:
    """Freeze the curated set — every real image, plus synthetic images accepted under the policy up to the
    per-class targets — as a new immutable version."""
    store = request.app.state.store
    accepts = body.accepts_needed if body.accepts_needed is not None else store.reviews.accepts_needed()
    version = store.datasets.freeze(body.name, body.note, accepts, body.targets, body.selection,
                                    body.min_intended_prob)
    return DatasetVersion(**version)


@router.get("", response_model=list[DatasetVersion])
def list_versions(request: Request) -> list[DatasetVersion]:
    return [DatasetVersion(**v) for v in request.app.state.store.datasets.list()]


@router.get("/{version_id}", response_model=DatasetVersion, responses=_ERRORS)
def get_version(version_id: VersionId, request: Request) -> DatasetVersion:
    return DatasetVersion(**request.app.state.store.datasets.get(version_id))


@router.get("/{version_id}/manifest", response_model=list[DatasetItem], responses=_ERRORS)
def manifest(
    version_id: VersionId,
    request: Request,
    split: Annotated[str | None, Query(pattern=r"^(train|val|test)$")] = None,
    source: Annotated[str | None, Query(pattern=r"^(real|synthetic)$")] = None,
) -> list[DatasetItem]:
    """The version's images. Refused to a blinded reviewer when its synthetic images were chosen by review."""
    store = request.app.state.store
    if source != "real":
        refuse_reviewed_if_blind(request, store.datasets.get(version_id))
    return [DatasetItem(**r) for r in store.datasets.manifest(version_id, split, source)]


def refuse_reviewed_if_blind(request: Request, version: dict) -> None:
    """A version whose synthetic images reviewers chose lists what they accepted, image by image."""
    reviewed = version["policy"].get("selection") not in ("scores", "all")
    if reviewed and version["counts"].get("synthetic"):
        refuse_if_blind(request, f"the images of {version['id']}, chosen by review,")


@router.get("/{version_id}/export.zip", response_class=FileResponse, responses=_ERRORS)
def export(version_id: VersionId, request: Request) -> FileResponse:
    """The version as a zip: manifest.csv, manifest.parquet and `<split>/<class>/<id>.<ext>` images, the layout
    torchvision's ImageFolder reads. Built on first request, then kept (versions never change)."""
    store, settings = request.app.state.store, request.app.state.settings
    version = store.datasets.get(version_id)  # an unknown id stops here: no path is built from it
    refuse_reviewed_if_blind(request, version)
    folder = (settings.workspace / version["manifest_path"]).parent
    archive = export_zip(version_id, store.datasets.manifest(version_id), ImageStore(settings.images_dir),
                         folder / "manifest.parquet", folder / f"{version_id}.zip")
    return FileResponse(archive, media_type="application/zip", filename=f"{version_id}.zip")
