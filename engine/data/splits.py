"""Lesion-aware stratified train/val/test splits.

HAM10000 has several images of one lesion (10,015 images of 7,470 lesions); putting them in two splits leaks
the lesion into evaluation. Lesions are dealt to splits per class, largest first, always to the split furthest
below its share, so each split's count of a class stays within one lesion's images of its target.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from engine.labels import SPLITS, SplitKind

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)  # DermaMNIST's official 7:1:2


def split_summary(real_data: list[dict]) -> str:
    """One phrase for the split of a dataset version's real images, from its lineage's `real_data` entries
    ({format, split_kind, images}): "lesion-aware", "per-image", "lesion-aware + per-image" …"""
    kinds = sorted({entry.get("split_kind") or "unrecorded" for entry in real_data})
    return " + ".join(kinds) if kinds else "unrecorded"


def split_kind(lesion_ids: Sequence[str | None], split_given: bool, given: SplitKind = SplitKind.given) -> SplitKind:
    """The kind of split an import gets: the source's own (`given`: what is known of it), else ours, lesion-aware
    only when every image names its lesion (an image without one is split as its own lesion)."""
    if split_given:
        return given
    return SplitKind.lesion_aware if lesion_ids and all(lesion_ids) else SplitKind.per_image


def lesion_aware_split(
    labels: Sequence[str],
    lesion_ids: Sequence[str | None],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """Return a split name per image. An image without a lesion id is its own lesion.

    A lesion whose images carry different labels is placed with the class most of its images have.
    """
    if len(labels) != len(lesion_ids):
        raise ValueError("labels and lesion_ids must have the same length")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")

    members: dict[str, list[int]] = defaultdict(list)
    for i, lesion in enumerate(lesion_ids):
        members[lesion if lesion else f"\0image-{i}"].append(i)

    by_class: dict[str, list[str]] = defaultdict(list)
    for lesion, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_class[majority].append(lesion)

    rng = random.Random(seed)
    out = [""] * len(labels)
    for cls in sorted(by_class):
        lesions = sorted(by_class[cls])
        rng.shuffle(lesions)
        lesions.sort(key=lambda lesion: -len(members[lesion]))  # stable: big lesions first, ties shuffled
        total = sum(len(members[lesion]) for lesion in lesions)
        filled = [0, 0, 0]
        for lesion in lesions:
            # the split with the largest shortfall against its target share of what is dealt so far
            dealt = sum(filled) + len(members[lesion])
            k = max(range(3), key=lambda s: (fractions[s] * dealt - filled[s], fractions[s]))
            filled[k] += len(members[lesion])
            for i in members[lesion]:
                out[i] = SPLITS[k]
        assert sum(filled) == total
    return out


def lesion_of(item: dict) -> str:
    """The lesion a manifest row's image shows: its lesion id, or the image itself where none is known."""
    return item["lesion_id"] or item["id"]


def real_subsample(items: Sequence[dict], fraction: float) -> list[dict]:
    """A scarce-data clinic's real train set: per class, `fraction` of its lesions (at least one) with all their
    images, the rest of `items` (synthetic ones) kept. Which lesions is fixed by their ids alone (a hash, not a
    seed), so every arm and every seed of a run — and any run at the same fraction — trains on the same subset.
    Items are manifest rows ({id, label, source, lesion_id}); an image without a lesion id is its own lesion."""
    if not 0 < fraction <= 1:
        raise ValueError(f"real fraction must be in (0, 1], not {fraction}")
    if fraction == 1:
        return list(items)
    lesions: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item["source"] == "real":
            lesions[item["label"]].add(lesion_of(item))
    kept: set[str] = set()
    for label, ids in lesions.items():
        ranked = sorted(ids, key=lambda lesion: hashlib.sha256(f"{label}/{lesion}".encode()).hexdigest())
        kept.update(ranked[:max(1, math.ceil(fraction * len(ranked)))])
    return [i for i in items if i["source"] != "real" or lesion_of(i) in kept]
