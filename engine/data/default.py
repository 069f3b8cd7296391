"""The embedded default data that `dermae demo` imports when the workspace is empty.

In order: what DERMAE_DATA names (a HAM10000 folder, a dermamnist.npz, or "phantom"); HAM10000 at 200x150 in the
shared data folder (all 10,015 images with their lesion ids, so the split is lesion-aware); DermaMNIST there or in
medmnist's cache (28 px, its official per-image split); else the offline phantom lesions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.schemas import ImportFormat

MEDMNIST_CACHE = Path("~/.medmnist/dermamnist.npz")
HAM_FOLDER = "ham10000-200"
DERMAMNIST_FILE = "dermamnist.npz"


def shared_data_folder() -> Path:
    """Where this project's machines keep the shared real data: DERMAE_SHARED_DATA, else ../shared/data beside the
    checkout — never inside it (CC BY-NC)."""
    configured = os.environ.get("DERMAE_SHARED_DATA")
    return Path(configured).expanduser() if configured else Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class DefaultSource:
    format: ImportFormat
    path: str | None
    description: str
    profile: str  # the profile made for this data: 64 px for HAM10000, 32 px for DermaMNIST


def is_ham10000_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("HAM10000_metadata*"))


def default_source(shared: Path | None = None) -> DefaultSource:
    """The data `dermae demo` imports: see the module doc for the order."""
    shared = shared_data_folder() if shared is None else shared
    configured = os.environ.get("DERMAE_DATA")
    if configured == "phantom":  # asked for: the offline set even where real data is at hand
        return _phantom("DERMAE_DATA=phantom")
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"DERMAE_DATA={configured} does not exist; point it at a HAM10000 folder "
                                    "(with HAM10000_metadata.csv), a dermamnist.npz, or say 'phantom'")
        return _source(path.resolve(), "DERMAE_DATA")
    for candidate in (shared / HAM_FOLDER, shared / DERMAMNIST_FILE, MEDMNIST_CACHE.expanduser()):
        if candidate.exists():
            where = "medmnist's cache" if candidate.name == DERMAMNIST_FILE and candidate.parent != shared \
                else "the shared data folder"
            return _source(candidate, where)
    return _phantom(f"no HAM10000 or DermaMNIST found in DERMAE_DATA, {shared} or {MEDMNIST_CACHE}")


def _source(path: Path, where: str) -> DefaultSource:
    if is_ham10000_folder(path):
        return DefaultSource(ImportFormat.ham10000, str(path), f"HAM10000 from {where} ({path}): lesion-aware split",
                             "cpu64")
    if path.is_file() and path.suffix == ".npz":
        return DefaultSource(ImportFormat.medmnist, str(path),
                             f"DermaMNIST from {where} ({path}): official per-image split", "tiny")
    raise ValueError(f"{where} names {path}, which is neither a HAM10000 folder (with HAM10000_metadata.csv) nor "
                     "a dermamnist.npz")


def _phantom(why: str) -> DefaultSource:
    return DefaultSource(ImportFormat.phantom, None, f"phantom lesions (PHANTOM, NOT CLINICAL DATA): {why}", "cpu64")
