"""A frozen dataset version as a zip anyone can train from without us: the manifest (CSV and the version's own
Parquet file) plus every image in the folder-per-class layout torchvision's `ImageFolder` reads.

    <version>/manifest.csv                 id, label, split, source, file, lesion_id, generation_job, checkpoint
    <version>/manifest.parquet             the version's manifest, byte for byte (its SHA-256 is on record)
    <version>/<split>/<class>/<id>.<ext>   train holds real + accepted synthetic; val and test are real only

`ImageFolder("<version>/train")` then finds the classes in alphabetical order, which is our class order. Versions
never change, so the zip is built once (into a temporary file, renamed when complete) and kept.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from engine.data.images import ImageStore

CSV_COLUMNS = ("id", "label", "split", "source", "file", "lesion_id", "generation_job", "checkpoint")


def export_zip(version_id: str, rows: Iterable[dict], images: ImageStore, manifest_parquet: Path,
               out: Path) -> Path:
    """Write `out` (a zip) unless it is there already; rows are the version's manifest rows."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    table = io.StringIO()
    writer = csv.DictWriter(table, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    try:
        # images are PNG/JPEG already: storing them is as small as deflating them, and much faster
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            for row in rows:
                source_path = images.absolute(row["path"])
                member = f"{row['split']}/{row['label']}/{row['id']}{source_path.suffix.lower()}"
                archive.write(source_path, f"{version_id}/{member}")
                writer.writerow(row | {"file": member})
            archive.writestr(f"{version_id}/manifest.csv", table.getvalue(), zipfile.ZIP_DEFLATED)
            archive.write(manifest_parquet, f"{version_id}/manifest.parquet")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
