"""Frozen dataset versions: the curated set at one moment, as an immutable Parquet manifest.

A version holds every real image (train, val and test splits as imported) plus the synthetic images accepted
under the policy (k accepts and no reject), up to per-class targets, as extra train images. The manifest is
written by DuckDB itself and hashed; versions are never updated. Training always names one, so every model
traces back to the reviews behind it.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.files import sha256_file
from engine.labels import CLASSES, SPLITS
from engine.store.db import Database, utc_now, where_given
from engine.store.reviews import REVIEW_STATUS_SQL

# Which synthetic images a version takes (parameters: accepts needed, selection, min intended prob, targets):
#   reviewed  accepted under the policy: k accepts and no reject (the product's curation)
#   scores    automatic curation by the score job's numbers: intended-class probability at least the minimum, not
#             a near-copy of a real image, one image per near-duplicate group (a stand-in for clinicians, used by
#             the benchmark to measure what curation is worth)
#   all       every generated image, unreviewed (the uncurated arm)
#   none      real images only
MANIFEST_SQL = f"""
WITH status AS ({REVIEW_STATUS_SQL}),
scored AS (
    SELECT i.id, i.label, i.created_at, st.status,
           max(s.value) FILTER (s.name = 'intended_prob') AS intended,
           max(s.value) FILTER (s.name = 'near_copy') AS near_copy,
           max(s.value) FILTER (s.name = 'dup_group') AS dup_group,
           max(s.job_id) FILTER (s.name = 'dup_group') AS score_job
    FROM images i JOIN status st ON st.id = i.id LEFT JOIN scores s ON s.image_id = i.id
    GROUP BY i.id, i.label, i.created_at, st.status
), chosen AS (
    SELECT id, label, created_at FROM scored
    WHERE CASE $selection
        WHEN 'reviewed' THEN status = 'accepted'
        WHEN 'all' THEN TRUE
        WHEN 'scores' THEN coalesce(intended, 0) >= $min_intended AND coalesce(near_copy, 0) = 0
                           AND (coalesce(dup_group, -1) < 0 OR id = (SELECT min(d.id) FROM scored d
                                WHERE d.score_job = scored.score_job AND d.dup_group = scored.dup_group))
        ELSE FALSE END
), ranked AS (
    SELECT id, label, row_number() OVER (PARTITION BY label ORDER BY created_at, id) AS rank FROM chosen
)
SELECT i.id, i.label, coalesce(i.split, 'train') AS split, i.source, i.path, i.lesion_id, i.generation_job,
       i.checkpoint
FROM images i
WHERE i.source = 'real'
   OR i.id IN (SELECT r.id FROM ranked r
               WHERE r.rank <= coalesce(json_extract($targets::JSON, '$.' || r.label)::INTEGER, 2147483647))
ORDER BY i.source, coalesce(i.split, 'train'), i.id
"""
SELECTIONS = ("reviewed", "scores", "all", "none")


class UnknownDataset(LookupError):
    pass


class DatasetQueries:
    def __init__(self, db: Database, datasets_dir: Path):
        self.db = db
        self.datasets_dir = datasets_dir

    def freeze(self, name: str, note: str | None, accepts_needed: int = 1, targets: dict[str, int] | None = None,
               selection: str = "reviewed", min_intended_prob: float = 0.5) -> dict[str, Any]:
        """Write the manifest of the curated set and record the version, in one transaction; on failure the
        manifest file goes too."""
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
        now = utc_now()
        version_id = f"{name}-{now:%Y%m%d-%H%M%S}-{os.urandom(2).hex()}"
        folder = self.datasets_dir / version_id
        folder.mkdir(parents=True, exist_ok=False)
        manifest = folder / "manifest.parquet"
        params = {"accepts": accepts_needed, "targets": json.dumps(targets or {}), "selection": selection,
                  "min_intended": min_intended_prob}
        try:
            return self._freeze(version_id, name, note, now, manifest, params)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _freeze(self, version_id: str, name: str, note: str | None, now: datetime, manifest: Path,
                params: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as cur:
            cur.execute(f"COPY ({MANIFEST_SQL}) TO '{manifest}' (FORMAT parquet)", params)
            rows = cur.execute(f"SELECT source, split, label, count(*) FROM read_parquet('{manifest}') "
                               "GROUP BY ALL").fetchall()
            counts: dict[str, dict[str, dict[str, int]]] = {"real": {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}}
            for source, split, label, n in rows:
                counts.setdefault(source, {}).setdefault(split, dict.fromkeys(CLASSES, 0))[label] = n
            lineage_row = cur.execute(f"""
                SELECT count(DISTINCT r.seq), list(DISTINCT m.generation_job) FILTER (m.generation_job IS NOT NULL),
                       list(DISTINCT m.checkpoint) FILTER (m.checkpoint IS NOT NULL)
                FROM read_parquet('{manifest}') m LEFT JOIN reviews r ON r.image_id = m.id
            """).fetchone()
            real_data = cur.execute(f"""
                SELECT b.format, b.source, b.split_kind, count(*) AS images
                FROM read_parquet('{manifest}') m JOIN images i ON i.id = m.id
                JOIN import_batches b ON b.id = i.import_batch
                WHERE m.source = 'real' GROUP BY ALL ORDER BY images DESC
            """).fetchall()
            lineage = {"review_events": lineage_row[0], "generation_jobs": sorted(lineage_row[1] or []),
                       "checkpoints": sorted(lineage_row[2] or []),
                       "real_data": [{"format": f, "source": src, "split_kind": kind, "images": n}
                                     for f, src, kind, n in real_data]}
            n_images = sum(n for *_, n in rows)
            policy = {"selection": params["selection"], "accepts_needed": params["accepts"],
                      "targets": json.loads(params["targets"]), "min_intended_prob": params["min_intended"]}
            cur.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [version_id, name, note, now, json.dumps(policy), json.dumps(counts), json.dumps(lineage),
                         str(manifest.relative_to(self.datasets_dir.parent)), sha256_file(manifest), n_images])
        return self.get(version_id)

    def get(self, version_id: str) -> dict[str, Any]:
        row = self.db.cursor().execute("SELECT * FROM datasets WHERE id = ?", [version_id]).fetchone()
        if row is None:
            raise UnknownDataset(f"no dataset version {version_id!r}")
        return self._dict(row)

    def list(self) -> list[dict[str, Any]]:
        return [self._dict(r) for r in self.db.cursor().execute(
            "SELECT * FROM datasets ORDER BY created_at DESC").fetchall()]

    def manifest(self, version_id: str, split: str | None = None, source: str | None = None) -> list[dict]:
        """The version's rows, read back from its Parquet file (checked against its recorded hash)."""
        version = self.get(version_id)
        path = self.datasets_dir.parent / version["manifest_path"]
        if sha256_file(path) != version["manifest_sha256"]:
            raise RuntimeError(f"the manifest of {version_id} does not match its recorded SHA-256: it was altered")
        where, params = where_given(("split = $split", "split", split), ("source = $source", "source", source))
        cur = self.db.cursor().execute(f"SELECT * FROM read_parquet('{path}') WHERE {where} ORDER BY source, split, id",
                                       params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @staticmethod
    def _dict(row: tuple) -> dict[str, Any]:
        keys = ("id", "name", "note", "created_at", "policy", "counts", "lineage", "manifest_path",
                "manifest_sha256", "n_images")
        out = dict(zip(keys, row, strict=True))
        for key in ("policy", "counts", "lineage"):
            out[key] = json.loads(out[key])
        return out
