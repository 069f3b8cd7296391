"""Readers for the dataset layouts we import. Each turns a path into a list of `SourceRecord`s or raises
`SourceError` listing every offending row, so the user can fix the file in one go.

Nothing is written here: `engine.data.ingest` validates the images and stores the batch as one transaction.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.images import encode_png
from engine.labels import CLASSES, SPLITS, UnknownLabel, normalise_label

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_PROBLEMS_LISTED = 20
# An id from a CSV becomes part of a file name we look up: letters, digits, and - _ . only, no "..".
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass
class SourceRecord:
    name: str  # what the user recognises: the image_id, the file path under the source, or "train[17]"
    label: str
    read: Callable[[], bytes]
    split: str | None = None
    lesion_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # synthetic: generation_job, seed, guidance, …


class SourceError(ValueError):
    """The source cannot be imported; `problems` names each offending row or file."""

    def __init__(self, summary: str, problems: Iterable[str] = ()):
        self.summary = summary
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS_LISTED]
        more = len(self.problems) - len(shown)
        text = summary + "".join(f"\n  - {p}" for p in shown) + (f"\n  … and {more} more" if more > 0 else "")
        super().__init__(text)


class MissingImages(SourceError):
    """The table names images the folder lacks, and that is its only problem: `records` holds every row that is
    fine, for an import that was asked to skip the missing ones (`--skip-missing`)."""

    def __init__(self, table: str, missing: list[str], records: list[SourceRecord]):
        super().__init__(f"{table}: {len(missing)} row(s) name an image file that is not there; nothing was "
                         "imported (--skip-missing imports the rest and lists these)", missing)
        self.records = records


def _finish(table: Path, records: list[SourceRecord], problems: list[str], missing: list[str]) -> list[SourceRecord]:
    """The records, or the error that lists every problem (missing files among them, unless they are all)."""
    if problems:
        problems += missing
        raise SourceError(f"{table.name}: {len(problems)} problem(s); nothing was imported", problems)
    if missing:
        raise MissingImages(table.name, missing, records)
    return records


def _reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _check_columns(found: list[str] | None, required: Iterable[str], where: Path) -> None:
    missing = [c for c in required if c not in (found or [])]
    if missing:
        raise SourceError(
            f"{where.name}: missing column(s) {', '.join(missing)}; found {', '.join(found or []) or 'none'}"
        )


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """CSV, or the tab-separated `.tab` that Harvard Dataverse serves. Returns (header, rows)."""
    delimiter = "\t" if path.suffix.lower() in {".tab", ".tsv"} else ","
    rows, too_long = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            for row in reader:
                if None in row:  # more fields than the header has columns: DictReader files them under None
                    too_long.append(f"line {reader.line_num}: {len(row[None]) + len(reader.fieldnames or [])} "
                                    f"fields, but the header has {len(reader.fieldnames or [])} columns")
                rows.append(row)
            header = [h.strip().strip('"') for h in (reader.fieldnames or [])]
    except UnicodeDecodeError:
        raise SourceError(f"{path.name}: not a text table (it is not UTF-8)") from None
    except csv.Error as e:
        raise SourceError(f"{path.name}: not a valid table: {e}") from None
    if too_long:
        raise SourceError(f"{path.name}: {len(too_long)} row(s) with more fields than the header (a stray "
                          f"{delimiter!r} in a value?); nothing was imported", too_long)
    clean = [{(k or "").strip().strip('"'): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, clean


def _find_one(root: Path, patterns: Iterable[str], what: str) -> Path:
    if root.is_file():
        return root
    for pattern in patterns:
        hits = sorted(root.glob(pattern))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise SourceError(f"several {what} files in {root}: {', '.join(h.name for h in hits)}; pass one")
    raise SourceError(f"no {what} file in {root} (looked for {', '.join(patterns)})")


def _index_images(folders: Iterable[Path]) -> dict[str, Path]:
    """Map file stem -> path over the image files directly inside `folders` (not following links out)."""
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink():
                index.setdefault(p.stem, p)
    return index


def _check_ids(rows: list[dict[str, str]], column: str, first_line: int = 2) -> list[str]:
    problems = []
    for i, row in enumerate(rows):
        value = row.get(column, "")
        if not _SAFE_ID.match(value) or ".." in value:
            problems.append(f"line {i + first_line}: {column} {value!r} is not a plain file id "
                            "(letters, digits, '-', '_', '.'; no path separators or '..')")
    counts = Counter(row.get(column, "") for row in rows)
    for value, n in sorted(counts.items()):
        if n > 1 and value:
            lines = [str(i + first_line) for i, row in enumerate(rows) if row.get(column) == value]
            problems.append(f"{column} {value!r} appears {n} times (lines {', '.join(lines)})")
    return problems


def read_ham10000(path: Path) -> list[SourceRecord]:
    """HAM10000 as distributed: metadata CSV (or Dataverse .tab) + HAM10000_images_part_{1,2}/."""
    table = _find_one(path, ["HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata*"],
                      "HAM10000 metadata")
    root = table.parent
    header, rows = _read_table(table)
    _check_columns(header, ["lesion_id", "image_id", "dx"], table)
    if not rows:
        raise SourceError(f"{table.name} has no rows")
    problems = _check_ids(rows, "image_id")
    images = _index_images([root / "HAM10000_images_part_1", root / "HAM10000_images_part_2",
                            root / "images", root])
    records, missing = [], []
    extra = [c for c in header if c not in ("image_id", "dx", "lesion_id")]
    for i, row in enumerate(rows, start=2):
        try:
            label = normalise_label(row["dx"])
        except UnknownLabel as e:
            problems.append(f"line {i} ({row['image_id']}): {e}")
            continue
        file = _image_file(images, row["image_id"], f"line {i}: no image file for image_id", missing)
        if file is not None:
            records.append(SourceRecord(
                name=row["image_id"], label=label, read=_reader(file), lesion_id=row["lesion_id"] or None,
                metadata={c: row.get(c, "") for c in extra} | {"dataset": "HAM10000"},
            ))
    return _finish(table, records, problems, missing)


def _image_file(images: dict[str, Path], name: str, where: str, missing: list[str]) -> Path | None:
    """The image file a row names, or None with "<where> '<name>'" added to `missing`."""
    file = images.get(name)
    if file is None:
        missing.append(f"{where} {name!r}")
    return file


ISIC_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def read_isic(path: Path) -> list[SourceRecord]:
    """ISIC 2018 Task 3: ground-truth CSV with one-hot class columns, plus the input image folder.

    A `*LesionGroupings*.csv` (columns image, lesion_id) beside it, as ISIC later published, is used for
    lesion-aware splits when present.
    """
    table = _find_one(path, ["*GroundTruth*.csv", "*.csv"], "ISIC ground-truth CSV")
    root = table.parent
    header, rows = _read_table(table)
    _check_columns(header, ["image", *ISIC_COLUMNS], table)
    if not rows:
        raise SourceError(f"{table.name} has no rows")
    problems = _check_ids(rows, "image")
    lesions: dict[str, str] = {}
    groupings = sorted(root.glob("*LesionGroupings*.csv"))
    if groupings:
        g_header, g_rows = _read_table(groupings[0])
        _check_columns(g_header, ["image", "lesion_id"], groupings[0])
        lesions = {r["image"]: r["lesion_id"] for r in g_rows}
    folders = [root, root / "images", *sorted(p for p in root.glob("*Input*") if p.is_dir())]
    images = _index_images(folders)
    records, missing = [], []
    for i, row in enumerate(rows, start=2):
        try:
            hot = [c for c in ISIC_COLUMNS if float(row[c] or 0) >= 0.5]
        except ValueError:
            problems.append(f"line {i} ({row['image']}): class columns must be numbers 0 or 1")
            continue
        if len(hot) != 1:
            problems.append(f"line {i} ({row['image']}): exactly one of {', '.join(ISIC_COLUMNS)} must be 1, "
                            f"found {len(hot)}")
            continue
        file = _image_file(images, row["image"], f"line {i}: no image file for image", missing)
        if file is not None:
            records.append(SourceRecord(
                name=row["image"], label=normalise_label(hot[0]), read=_reader(file),
                lesion_id=lesions.get(row["image"]), metadata={"dataset": "ISIC2018"},
            ))
    return _finish(table, records, problems, missing)


def read_medmnist(path: Path) -> list[SourceRecord]:
    """MedMNIST `dermamnist.npz`: {train,val,test}_{images,labels}; official splits kept."""
    file = _find_one(path, ["dermamnist*.npz", "*.npz"], "MedMNIST .npz")
    try:
        data = np.load(file, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as e:
        raise SourceError(f"{file.name}: cannot read as a NumPy .npz archive: {e}") from None
    expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise SourceError(f"{file.name}: missing array(s) {', '.join(missing)}; found {', '.join(arrays)}")
    records: list[SourceRecord] = []
    problems = []
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
        # Exactly what makes a PNG: grey (H,W) or RGB (H,W,3) pixels, neither side empty.
        pixels_ok = (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)) and 0 not in images.shape[1:3]
        if not pixels_ok or images.dtype != np.uint8 or labels.dtype.kind not in "iu" or len(images) != len(labels):
            problems.append(f"{split}: expected uint8 images (N,H,W[,3]) and N integer labels, "
                            f"got {images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
            continue
        for i, (pixels, y) in enumerate(zip(images, labels, strict=True)):
            if not 0 <= int(y) < len(CLASSES):
                problems.append(f"{split}[{i}]: label {int(y)} is not a class index 0..{len(CLASSES) - 1}")
                continue
            records.append(SourceRecord(
                name=f"{split}[{i}]", label=CLASSES[int(y)], split=split,
                read=(lambda px=pixels: encode_png(px)), metadata={"dataset": "DermaMNIST"},
            ))
    if problems:
        raise SourceError(f"{file.name}: {len(problems)} problem(s); nothing was imported", problems)
    return records


def read_folder(path: Path) -> list[SourceRecord]:
    """A folder per class (`nv/…`), optionally under split folders (`train/nv/…`, as ImageFolder exports)."""
    if not path.is_dir():
        raise SourceError(f"{path} is not a folder")
    root = path.resolve()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    has_splits = bool(subdirs) and all(p.name in SPLITS for p in subdirs)
    class_dirs = [(s.name, c) for s in subdirs for c in sorted(s.iterdir()) if c.is_dir()] if has_splits \
        else [(None, c) for c in subdirs]
    problems: list[str] = []
    records: list[SourceRecord] = []
    for split, folder in class_dirs:
        if folder.name.startswith("."):
            continue
        try:
            label = normalise_label(folder.name)
        except UnknownLabel as e:
            problems.append(f"folder {folder.relative_to(root)}: {e}")
            continue
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(root).as_posix()
            if file.name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if file.is_symlink() and not file.resolve().is_relative_to(root):
                problems.append(f"{rel}: a link that points outside {root}")
                continue
            if file.is_file():
                records.append(SourceRecord(name=rel, label=label, split=split, read=_reader(file),
                                            metadata={"dataset": root.name}))
    if problems:
        raise SourceError(f"{root.name}: {len(problems)} problem(s); nothing was imported", problems)
    if not records:
        raise SourceError(f"no images found under {root}: expected folders named after the classes "
                          f"({', '.join(CLASSES)}), optionally inside train/val/test")
    return records
