"""The embedded default data that `dermae demo` imports when the workspace is empty."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.schemas import ImportFormat

MEDMNIST_CACHE = Path("~/.medmnist/dermamnist.npz")
# Where this project's machines keep the shared real data: beside the checkout, never inside it (CC BY-NC).
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "dermamnist.npz"


@dataclass(frozen=True)
class DefaultSource:
    format: ImportFormat
    path: str | None
    description: str


def default_source(shared: Path = SHARED_DATA) -> DefaultSource:
    """DermaMNIST from DERMAE_DATA, the shared data folder beside the checkout, or medmnist's cache; else the
    offline phantom set."""
    configured = os.environ.get("DERMAE_DATA")
    if configured == "phantom":  # asked for: the offline set even where DermaMNIST is at hand
        return _phantom("DERMAE_DATA=phantom")
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"DERMAE_DATA={configured} does not exist; point it at a dermamnist.npz")
        return DefaultSource(ImportFormat.medmnist, str(path.resolve()), f"DermaMNIST from DERMAE_DATA ({path})")
    if shared.exists():
        return DefaultSource(ImportFormat.medmnist, str(shared), f"DermaMNIST from the shared data folder ({shared})")
    cache = MEDMNIST_CACHE.expanduser()
    if cache.exists():
        return DefaultSource(ImportFormat.medmnist, str(cache), f"DermaMNIST from medmnist's cache ({cache})")
    return _phantom(f"no DermaMNIST found in DERMAE_DATA, {shared} or {MEDMNIST_CACHE}")


def _phantom(why: str) -> DefaultSource:
    return DefaultSource(ImportFormat.phantom, None, f"phantom lesions (PHANTOM, NOT CLINICAL DATA): {why}")
