from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, status

from engine.api.auth import require_admin
from engine.data.images import ImageStore
from engine.data.ingest import ingest
from engine.data.phantom import phantom_records
from engine.data.sources import (
    MissingImages,
    SourceRecord,
    read_folder,
    read_ham10000,
    read_isic,
    read_medmnist,
)
from engine.data.splits import split_kind
from engine.labels import CLASSES, SPLITS, SplitKind
from engine.schemas import ImportBatch, ImportFormat, ImportRequest, ImportResult, Problem

router = APIRouter(prefix="/imports", tags=["imports"])
_import_lock = threading.Lock()  # one import at a time: each batch's file clean-up must not race another's

_READERS = {
    ImportFormat.ham10000: read_ham10000,
    ImportFormat.isic: read_isic,
    ImportFormat.medmnist: read_medmnist,
    ImportFormat.folder: read_folder,
}
# What is known of a source's own split; the others are split here (lesion-aware where lesion ids allow).
_GIVEN_SPLIT = {ImportFormat.medmnist: SplitKind.per_image}  # DermaMNIST's official split is random per image


def _records(req: ImportRequest) -> tuple[str, list[SourceRecord], list[str]]:
    """(source, records, skipped rows) of the request."""
    if req.format == ImportFormat.phantom:
        return f"phantom(n={req.phantom_size})", phantom_records(req.phantom_size), []
    path = Path(req.path or "").expanduser()
    try:
        if not path.exists():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{path} does not exist on the server's machine")
        try:
            return str(path.resolve()), _READERS[req.format](path), []
        except MissingImages as e:
            if not req.skip_missing:
                raise
            return str(path.resolve()), e.records, e.problems
    except OSError as e:  # a name too long for the file system, a folder the server may not read …
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"cannot read {req.path!r} on the server's machine: {e.strerror or e}") from None


@router.post("", response_model=ImportResult, dependencies=[Depends(require_admin)],
             responses={422: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}})
def create_import(req: ImportRequest, request: Request) -> ImportResult:
    """Import a dataset from a path on the server's machine, as one transaction: all of it or nothing."""
    if not _import_lock.acquire(blocking=False):
        raise HTTPException(status.HTTP_409_CONFLICT, "another import is running; try again when it ends")
    try:
        store, settings = request.app.state.store, request.app.state.settings
        source, records, skipped = _records(req)
        batch_id = f"imp-{uuid.uuid4().hex[:12]}"
        phantom = req.format == ImportFormat.phantom
        kind = split_kind([r.lesion_id for r in records], all(r.split is not None for r in records),
                          _GIVEN_SPLIT.get(req.format, SplitKind.given))
        result = ingest(
            records, batch_id=batch_id, images=ImageStore(settings.images_dir),
            thumbs=ImageStore(settings.thumbs_dir), existing_counts=store.images.existing_counts,
            split_seed=req.split_seed,
            commit=lambda rows: store.images.add_batch(batch_id=batch_id, format=req.format.value,
                                                       source=source, n_records=len(records), rows=rows,
                                                       phantom=phantom, split_kind=kind.value, skipped=skipped),
        )
    finally:
        _import_lock.release()
    counts = Counter((r["split"], r["label"]) for r in result.rows)
    added = {s: {c: counts[(s, c)] for c in CLASSES} for s in SPLITS}
    return ImportResult(batch_id=batch_id, format=req.format, source=source, n_records=result.n_records,
                        n_added=len(result.rows), phantom=phantom, added=added,
                        split_kind=kind if result.rows else None, skipped=skipped)


@router.get("", response_model=list[ImportBatch])
def list_imports(request: Request) -> list[ImportBatch]:
    """Every import batch: its source, how many images it added and which kind of split they were put in."""
    return [ImportBatch(**b) for b in request.app.state.store.images.batches()]
