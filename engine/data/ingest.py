"""Turn source records into stored images, as one all-or-nothing batch.

1. every record is read and validated (decodes fully, within size limits) and its file and thumbnail are put
   in the content-addressed stores, remembering which files this batch created;
2. on any problem, every problem is collected, the files this batch created are removed, and nothing else
   happens;
3. rows are computed against what the database already holds (same content = already imported) and handed to
   `commit`, which writes them in one transaction; if that fails, the created files are removed too.

A source's own exact duplicates (DermaMNIST has two pairs) are kept as separate rows marked `duplicate_of`, so
official split counts hold; importing the same source again adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.data.images import CheckedImage, ImageProblem, ImageStore, check_image
from engine.data.sources import SourceError, SourceRecord
from engine.data.splits import lesion_aware_split


@dataclass(frozen=True)
class StoredFile:
    content_id: str
    path: str
    thumb_path: str
    width: int
    height: int
    format: str
    size_bytes: int


@dataclass(frozen=True)
class IngestResult:
    n_records: int
    rows: list[dict]


def _store_one(record: SourceRecord, images: ImageStore, thumbs: ImageStore,
               created: list[str]) -> StoredFile:
    try:
        data = record.read()
    except OSError as e:
        raise ImageProblem(f"cannot read file: {e.strerror or e}") from None
    checked: CheckedImage = check_image(data)
    path, new = images.put(checked.content_id, checked.ext, checked.data)
    if new:
        created.append(f"images:{path}")
    thumb_path, new = thumbs.put(checked.content_id, checked.thumbnail_ext, checked.thumbnail)
    if new:
        created.append(f"thumbs:{thumb_path}")
    return StoredFile(checked.content_id, path, thumb_path, checked.width, checked.height, checked.format,
                      len(data))


def ingest(
    records: list[SourceRecord],
    *,
    batch_id: str | None,
    source: str = "real",
    images: ImageStore,
    thumbs: ImageStore,
    existing_counts: Callable[[list[str]], dict[str, int]],
    commit: Callable[[list[dict]], None],
    split_seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Store `records` as `source` images (of import batch `batch_id`); see the module doc for the guarantees.
    Real images without a split get a lesion-aware one; synthetic images have none."""
    if not records:
        raise SourceError("the source holds no images")
    created: list[str] = []
    stored: list[StoredFile | None] = [None] * len(records)
    problems: list[str] = []

    def work(i: int) -> None:
        try:
            stored[i] = _store_one(records[i], images, thumbs, created)
        except ImageProblem as e:
            problems.append(f"{records[i].name}: {e}")

    def undo() -> None:
        for entry in created:
            store_name, rel = entry.split(":", 1)
            (images if store_name == "images" else thumbs).remove(rel)

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            for done, _ in enumerate(pool.map(work, range(len(records))), start=1):
                if progress and (done % 500 == 0 or done == len(records)):
                    progress(done, len(records))
        if problems:
            problems.sort()
            raise SourceError(f"{len(problems)} of {len(records)} images are unusable; nothing was imported",
                              problems)
        rows = _rows(records, [s for s in stored if s is not None], batch_id, source, existing_counts, split_seed)
        commit(rows)
    except BaseException:
        undo()
        raise
    return IngestResult(len(records), rows)


def _rows(records: list[SourceRecord], stored: list[StoredFile], batch_id: str | None, source: str,
          existing_counts: Callable[[list[str]], dict[str, int]], split_seed: int) -> list[dict]:
    if source == "synthetic":
        splits = [None] * len(records)
    elif any(r.split is None for r in records):
        splits = lesion_aware_split([r.label for r in records], [r.lesion_id for r in records], seed=split_seed)
    else:
        splits = [r.split for r in records]
    have = existing_counts(sorted({s.content_id for s in stored}))
    seen: Counter[str] = Counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for record, file, split in zip(records, stored, splits, strict=True):
        k = seen[file.content_id]
        seen[file.content_id] += 1
        if k < have.get(file.content_id, 0):
            continue  # this occurrence of the content is already in the database
        row_id = file.content_id if k == 0 else hashlib.sha256(f"{file.content_id}#{k}".encode()).hexdigest()
        rows.append({
            "id": row_id, "content_id": file.content_id, "path": file.path, "thumb_path": file.thumb_path,
            "label": record.label, "source": source, "split": split, "lesion_id": record.lesion_id,
            "width": file.width, "height": file.height, "format": file.format, "size_bytes": file.size_bytes,
            "import_batch": batch_id, "original_name": record.name,
            "metadata": json.dumps(record.metadata, sort_keys=True),
            "duplicate_of": file.content_id if k else None, "created_at": now, **record.provenance,
        })
    return rows
