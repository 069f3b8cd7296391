"""Queries on images, import batches and the review state derived from append-only review events."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from engine.labels import CLASSES, SPLITS
from engine.store.db import Database, utc_now, where_given
from engine.store.reviews import REVIEW_STATUS_SQL

REVIEW_STATUSES = ("pending", "accepted", "rejected")

IMAGE_COLUMNS = ("id", "content_id", "path", "thumb_path", "label", "source", "split", "lesion_id", "width",
                 "height", "format", "size_bytes", "import_batch", "original_name", "metadata", "duplicate_of",
                 "created_at", "generation_job", "seed", "guidance", "steps", "checkpoint")
MANIFEST_COLUMNS = ("id", "label", "split", "path", "lesion_id", "source")


class ImageQueries:
    def __init__(self, db: Database):
        self.db = db

    def existing_counts(self, content_ids: list[str]) -> dict[str, int]:
        """How many image rows already hold each content id."""
        if not content_ids:
            return {}
        cur = self.db.cursor()
        cur.register("wanted_ids", pa.table({"content_id": content_ids}))
        rows = cur.execute(
            "SELECT i.content_id, count(*) FROM images i JOIN wanted_ids USING (content_id) GROUP BY 1"
        ).fetchall()
        return dict(rows)

    def add_batch(self, *, batch_id: str, format: str, source: str, n_records: int, rows: list[dict],
                  phantom: bool, split_kind: str | None = None, skipped: list[str] | None = None) -> None:
        """Insert the batch record and all its image rows in one transaction."""
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO import_batches (id, format, source, created_at, n_records, n_added, phantom, "
                        "split_kind, skipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [batch_id, format, source, utc_now(), n_records, len(rows), phantom, split_kind,
                         json.dumps(skipped or [])])
            if rows:
                cur.register("batch_rows", pa.Table.from_pylist(rows))
                cur.execute("INSERT INTO images BY NAME SELECT * FROM batch_rows")

    def add_rows(self, rows: list[dict]) -> None:
        """Insert image rows (synthetic images from a generation job) in one transaction."""
        if not rows:
            return
        with self.db.transaction() as cur:
            cur.register("new_rows", pa.Table.from_pylist(rows))
            cur.execute("INSERT INTO images BY NAME SELECT * FROM new_rows")
            cur.unregister("new_rows")

    def manifest(self, *, source: str, split: str | None = None, status: str | None = None,
                 generation_job: int | None = None, batch: str | None = None,
                 accepts_needed: int = 1) -> list[dict[str, Any]]:
        """(id, label, split, path, lesion_id, source) of every matching image, in a stable order: what a job
        needs to build its training arrays. `status` (synthetic only): pending, accepted or rejected; `batch`:
        the images an import added."""
        where, params = where_given(("i.source = $source", "source", source), ("i.split = $split", "split", split),
                                    ("i.generation_job = $job", "job", generation_job),
                                    ("i.import_batch = $batch", "batch", batch),
                                    ("r.status = $status", "status", status))
        join = ""
        if status is not None:
            join = f"JOIN ({REVIEW_STATUS_SQL}) r ON r.id = i.id"
            params["accepts"] = accepts_needed
        cur = self.db.cursor().execute(
            f"SELECT {', '.join('i.' + c for c in MANIFEST_COLUMNS)} FROM images i {join} "
            f"WHERE {where} ORDER BY i.id", params)
        return [dict(zip(MANIFEST_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def set_scores(self, job_id: int, scores: list[dict[str, Any]]) -> None:
        """Upsert named scores per image (a re-run of a score job replaces its numbers)."""
        if not scores:
            return
        now = utc_now()
        table = pa.table({
            "image_id": [s["image_id"] for s in scores], "name": [s["name"] for s in scores],
            "value": [s["value"] for s in scores], "ref": [s.get("ref") for s in scores],
            "job_id": [job_id] * len(scores), "created_at": [now] * len(scores),
        })
        with self.db.transaction() as cur:
            cur.register("new_scores", table)
            unknown = cur.execute("SELECT count(*) FROM (SELECT DISTINCT image_id FROM new_scores) s "
                                  "WHERE s.image_id NOT IN (SELECT id FROM images)").fetchone()[0]
            if unknown:
                raise KeyError(f"{unknown} scored image id(s) are not in the database")
            cur.execute("INSERT OR REPLACE INTO scores SELECT * FROM new_scores")
            cur.unregister("new_scores")

    def scores(self, image_ids: list[str]) -> dict[str, dict[str, tuple[float | None, str | None]]]:
        """{image_id: {name: (value, ref)}} for the given images."""
        if not image_ids:
            return {}
        cur = self.db.cursor()
        cur.register("wanted_ids", pa.table({"image_id": image_ids}))
        rows = cur.execute("SELECT s.image_id, s.name, s.value, s.ref FROM scores s JOIN wanted_ids USING (image_id)"
                           ).fetchall()
        out: dict[str, dict[str, tuple[float | None, str | None]]] = {}
        for image_id, name, value, ref in rows:
            out.setdefault(image_id, {})[name] = (value, ref)
        return out

    def batches(self) -> list[dict[str, Any]]:
        cur = self.db.cursor().execute("SELECT * FROM import_batches ORDER BY created_at DESC")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        for row in rows:
            row["skipped"] = json.loads(row["skipped"] or "[]")
        return rows

    def has_phantom(self) -> bool:
        return bool(self.db.cursor().execute(
            "SELECT count(*) FROM import_batches WHERE phantom AND n_added > 0").fetchone()[0])

    def stats(self, accepts_needed: int = 1) -> dict[str, dict[str, dict[str, int]]]:
        """Counts per source × split (real) or review status (synthetic) × class, zeros included."""
        out: dict[str, dict[str, dict[str, int]]] = {
            "real": {s: dict.fromkeys(CLASSES, 0) for s in SPLITS},
            "synthetic": {s: dict.fromkeys(CLASSES, 0) for s in REVIEW_STATUSES},
        }
        cur = self.db.cursor()
        for split, label, n in cur.execute(
            "SELECT split, label, count(*) FROM images WHERE source = 'real' AND split IS NOT NULL GROUP BY 1, 2"
        ).fetchall():
            out["real"][split][label] = n
        for status, label, n in cur.execute(
            f"SELECT status, label, count(*) FROM ({REVIEW_STATUS_SQL}) GROUP BY 1, 2", {"accepts": accepts_needed}
        ).fetchall():
            out["synthetic"][status][label] = n
        return out

    def list(self, *, source: str | None = None, split: str | None = None, label: str | None = None,
             batch: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Filtered page of images, newest import first; returns (total matching, page)."""
        where, params = where_given(("source = $source", "source", source), ("split = $split", "split", split),
                                    ("label = $label", "label", label), ("import_batch = $batch", "batch", batch))
        cur = self.db.cursor()
        total = cur.execute(f"SELECT count(*) FROM images WHERE {where}", params).fetchone()[0]
        cur.execute(f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE {where} "
                    "ORDER BY created_at DESC, id LIMIT $limit OFFSET $offset",
                    params | {"limit": limit, "offset": offset})
        return total, [dict(zip(IMAGE_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def thumb_paths(self, image_ids: list[str]) -> dict[str, str]:
        """{image_id: thumbnail path} for those of the ids that exist."""
        cur = self.db.cursor()
        cur.register("wanted_ids", pa.table({"id": image_ids}))
        return dict(cur.execute("SELECT i.id, i.thumb_path FROM images i JOIN wanted_ids USING (id)").fetchall())

    def get(self, image_id: str) -> dict[str, Any] | None:
        row = self.db.cursor().execute(
            f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE id = ?", [image_id]).fetchone()
        return dict(zip(IMAGE_COLUMNS, row, strict=True)) if row else None
