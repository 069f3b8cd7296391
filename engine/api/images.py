from __future__ import annotations

import base64
import json
import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse

from engine.api.auth import refuse_if_blind
from engine.data.images import ImageStore
from engine.schemas import IMPORT_BATCH_ID, MAX_BIGINT, ImageInfo, ImagePage, ManifestItem, ScoreValue, Stats

router = APIRouter(tags=["images"])

ImageId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="Image id (64 hex digits).")]
_LABEL = r"^(akiec|bcc|bkl|df|mel|nv|vasc)$"


def _parse_ids(ids: str, most: int) -> list[str]:
    wanted = list(dict.fromkeys(i for i in ids.split(",") if i))
    if not wanted or len(wanted) > most or not all(re.fullmatch(r"[0-9a-f]{64}", i) for i in wanted):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"ids: 1 to {most} comma-separated image ids")
    return wanted


def _info(row: dict) -> ImageInfo:
    return ImageInfo(**{**row, "metadata": json.loads(row["metadata"] or "{}")})


@router.get("/stats", response_model=Stats)
def stats(request: Request) -> Stats:
    """Counts per source × split (real) or review status (synthetic, under the review policy) × class."""
    store = request.app.state.store
    return Stats(**store.images.stats(store.reviews.accepts_needed()), phantom=store.images.has_phantom())


@router.get("/images/manifest", response_model=list[ManifestItem])
def manifest(
    request: Request,
    source: Annotated[str, Query(pattern=r"^(real|synthetic)$")] = "real",
    split: Annotated[str | None, Query(pattern=r"^(train|val|test)$")] = None,
    status: Annotated[str | None, Query(pattern=r"^(pending|accepted|rejected)$")] = None,
    generation_job: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    batch: Annotated[str | None, Query(pattern=IMPORT_BATCH_ID, description="Only the images this import "
                                                                             "added.")] = None,
) -> list[ManifestItem]:
    """Every matching image with its file path, in a stable order: what a training job reads. Synthetic images by
    review status are refused to a blinded reviewer."""
    if source == "synthetic" and status is not None:
        refuse_if_blind(request, "synthetic images by review status")
    store = request.app.state.store
    rows = store.images.manifest(source=source, split=split, status=status, generation_job=generation_job,
                                 batch=batch, accepts_needed=store.reviews.accepts_needed())
    return [ManifestItem(**r) for r in rows]


@router.get("/images/scores", response_model=dict[str, dict[str, ScoreValue]])
def image_scores(
    request: Request,
    ids: Annotated[str, Query(max_length=66_000, description="Comma-separated image ids (at most 1000).")],
) -> dict[str, dict[str, ScoreValue]]:
    """Scores per image: {image_id: {name: {value, ref}}}."""
    wanted = _parse_ids(ids, 1000)
    scores = request.app.state.store.images.scores(wanted)
    return {i: {n: ScoreValue(value=v, ref=r) for n, (v, r) in named.items()} for i, named in scores.items()}


@router.get("/images/thumbs", response_model=dict[str, str])
def thumbnails(
    request: Request,
    ids: Annotated[str, Query(max_length=13_200, description="Comma-separated image ids (at most 200).")],
) -> dict[str, str]:
    """Many thumbnails in one answer, {id: base64 PNG/JPEG}: a review page's 48 in one round trip."""
    wanted = _parse_ids(ids, 200)
    paths = request.app.state.store.images.thumb_paths(wanted)
    missing = [i for i in wanted if i not in paths]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {missing[0]} (and {len(missing) - 1} more)")
    thumbs = ImageStore(request.app.state.settings.thumbs_dir)
    return {i: base64.b64encode(thumbs.absolute(paths[i]).read_bytes()).decode() for i in wanted}


@router.get("/images", response_model=ImagePage)
def list_images(
    request: Request,
    source: Annotated[str | None, Query(pattern=r"^(real|synthetic)$")] = None,
    split: Annotated[str | None, Query(pattern=r"^(train|val|test)$")] = None,
    label: Annotated[str | None, Query(pattern=_LABEL)] = None,
    batch: Annotated[str | None, Query(pattern=IMPORT_BATCH_ID, description="An import batch id, as POST /imports "
                                                                          "gave it (imp-…).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> ImagePage:
    total, rows = request.app.state.store.images.list(source=source, split=split, label=label, batch=batch,
                                                      limit=limit, offset=offset)
    return ImagePage(total=total, offset=offset, items=[_info(r) for r in rows])


def _row(request: Request, image_id: str) -> dict:
    row = request.app.state.store.images.get(image_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {image_id}")
    return row


@router.get("/images/{image_id}", response_model=ImageInfo)
def get_image(request: Request, image_id: ImageId) -> ImageInfo:
    return _info(_row(request, image_id))


@router.get("/images/{image_id}/file", response_class=FileResponse)
def image_file(request: Request, image_id: ImageId) -> FileResponse:
    """The original bytes, exactly as imported."""
    path = ImageStore(request.app.state.settings.images_dir).absolute(_row(request, image_id)["path"])
    return FileResponse(path)


@router.get("/images/{image_id}/thumb", response_class=FileResponse)
def image_thumb(request: Request, image_id: ImageId) -> FileResponse:
    """The thumbnail made at import (cacheable: content-addressed, never changes)."""
    path = ImageStore(request.app.state.settings.thumbs_dir).absolute(_row(request, image_id)["thumb_path"])
    return FileResponse(path, headers={"Cache-Control": "private, max-age=31536000, immutable"})
