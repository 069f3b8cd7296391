"""The vocabulary everything else speaks: the seven HAM10000 diagnostic classes (and every spelling of them that
the importers accept), the splits, and how an import's images were split. It imports nothing of the engine, so
every layer may use it (README, "Layout")."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratoses and intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}

ClassName = Literal["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]  # one of CLASSES, as a type

SPLITS: tuple[str, ...] = ("train", "val", "test")


class SplitKind(StrEnum):
    """How an import's real images were split, which decides how far its test figures can be trusted."""

    lesion_aware = "lesion-aware"  # split here by lesion id: no lesion in two splits
    per_image = "per-image"  # images of one lesion may sit in two splits: optimistic figures (DermaMNIST's split)
    given = "given"  # the source's own split folders: whether a lesion crosses them is not known

# Folder names and CSV values seen in the wild: ISIC column names, full names, common plurals.
_ALIASES: dict[str, str] = {
    **{c: c for c in CLASSES},
    **{name.lower(): c for c, name in CLASS_NAMES.items()},
    "ak": "akiec",
    "actinic keratoses": "akiec",
    "actinic keratosis": "akiec",
    "basal cell carcinoma": "bcc",
    "benign keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "nevus": "nv",
    "nevi": "nv",
    "melanocytic nevus": "nv",
    "vascular lesion": "vasc",
    "vascular lesions": "vasc",
}


class UnknownLabel(ValueError):
    pass


def normalise_label(value: str) -> str:
    """Map any accepted spelling to one of CLASSES; raise UnknownLabel otherwise."""
    key = " ".join(str(value).strip().lower().replace("_", " ").split())
    try:
        return _ALIASES[key]
    except KeyError:
        raise UnknownLabel(f"unknown label {value!r}; expected one of {', '.join(CLASSES)}") from None


V = TypeVar("V")


def _by_class(value: dict[str, V]) -> dict[str, V]:
    """Keys in any accepted spelling -> names in CLASSES. A typo must not silently drop a class's entry."""
    by_class: dict[str, V] = {}
    for key, item in value.items():
        cls = normalise_label(key)
        if cls in by_class:
            raise ValueError(f"class {cls!r} is given twice (as {key!r} too)")
        by_class[cls] = item
    return by_class


PerClass = Annotated[dict[str, V], AfterValidator(_by_class)]
"""A pydantic field type: a value per class, keyed by class names in any accepted spelling, e.g. PerClass[int]."""
