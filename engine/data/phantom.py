"""Phantom lesions: a deterministic, procedural stand-in for dermoscopy so the product runs offline.

PHANTOM, NOT CLINICAL DATA. Seven classes with HAM10000's imbalance, each with its own cue a classifier (and a
generator) can learn: colour, shape, border regularity and texture. Some lesions have two images (a rotated,
re-lit view), as in HAM10000, so lesion-aware splitting matters here too.
"""

from __future__ import annotations

import numpy as np

from engine.data.images import encode_png
from engine.data.sources import SourceRecord
from engine.labels import CLASSES

PHANTOM_NOTICE = "phantom, not clinical data"
HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
SIDE = 64

# class -> (base RGB, second RGB, radius fraction, border irregularity, lobes)
_LOOK: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float, float, int]] = {
    "akiec": ((196, 92, 88), (236, 214, 200), 0.34, 0.22, 0),   # red scaly patch, white scale
    "bcc": ((226, 170, 170), (170, 30, 40), 0.30, 0.10, 0),     # pearly pink, red branching vessels
    "bkl": ((176, 128, 80), (120, 82, 48), 0.36, 0.12, 0),      # tan waxy, furrowed stripes
    "df": ((150, 104, 74), (238, 226, 214), 0.22, 0.04, 0),     # small brown ring, white centre
    "mel": ((60, 36, 30), (96, 110, 140), 0.38, 0.35, 0),       # dark, blue-grey veil, ragged border
    "nv": ((120, 74, 44), (100, 60, 36), 0.28, 0.03, 0),        # brown, round, regular
    "vasc": ((150, 30, 70), (90, 20, 90), 0.16, 0.05, 4),       # red-purple lobules
}


def phantom_counts(total: int) -> dict[str, int]:
    """Per-class counts with HAM10000's proportions, at least 6 per class so every split gets one."""
    n = sum(HAM10000_COUNTS.values())
    return {c: max(6, round(total * HAM10000_COUNTS[c] / n)) for c in CLASSES}


def render_lesion(cls: str, rng: np.random.Generator, view: int = 0) -> np.ndarray:
    """One (SIDE, SIDE, 3) uint8 phantom lesion of class `cls`; `view` > 0 rotates and re-lights it."""
    base, second, radius, rough, lobes = _LOOK[cls]
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE - 0.5
    cx, cy = rng.uniform(-0.06, 0.06, 2)
    x, y = xx - cx, yy - cy
    if view:
        angle = view * np.pi / 2 + rng.uniform(-0.3, 0.3)
        x, y = x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)
    r, theta = np.hypot(x, y), np.arctan2(y, x)

    skin = np.array([228, 188, 160], np.float32) + rng.normal(0, 10, 3)
    img = np.broadcast_to(skin, (SIDE, SIDE, 3)).copy()
    img += rng.normal(0, 3, (SIDE, SIDE, 1))  # skin grain

    border = radius * (1 + rng.uniform(0.85, 1.15) - 1)
    for k in range(2, 7):
        border = border + radius * rough * rng.uniform(0, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if lobes:
        mask = np.zeros((SIDE, SIDE), np.float32)
        for _ in range(lobes):
            ox, oy = rng.uniform(-0.12, 0.12, 2)
            mask = np.maximum(mask, np.clip((radius - np.hypot(x - ox, y - oy)) / 0.02, 0, 1))
    else:
        mask = np.clip((border - r) / 0.02, 0, 1)

    colour = np.array(base, np.float32) + rng.normal(0, 8, 3)
    accent = np.array(second, np.float32)
    lesion = np.broadcast_to(colour, (SIDE, SIDE, 3)).copy()
    if cls == "mel":  # asymmetric blue-grey veil on one side
        veil = np.clip(np.cos(theta - rng.uniform(0, 2 * np.pi)), 0, 1)[..., None] * 0.7
        lesion = lesion * (1 - veil) + accent * veil
    elif cls == "bkl":  # cerebriform furrows
        furrows = (0.5 + 0.5 * np.sin(60 * (x * np.cos(1.0) + y * np.sin(1.0))))[..., None]
        lesion = lesion * (1 - 0.5 * furrows) + accent * 0.5 * furrows
    elif cls == "df":  # pale central patch
        centre = np.clip((radius * 0.5 - r) / 0.03, 0, 1)[..., None]
        lesion = lesion * (1 - centre) + accent * centre
    elif cls == "bcc":  # thin branching vessels
        vessels = (np.abs(np.sin(25 * x + 8 * np.sin(12 * y))) < 0.12).astype(np.float32)[..., None]
        lesion = lesion * (1 - 0.8 * vessels) + accent * 0.8 * vessels
    elif cls == "akiec":  # white scale flecks
        scale = (rng.uniform(0, 1, (SIDE, SIDE)) > 0.85).astype(np.float32)[..., None]
        lesion = lesion * (1 - 0.7 * scale) + accent * 0.7 * scale
    elif cls == "nv":  # faint pigment network
        network = (0.5 + 0.5 * np.sin(40 * x) * np.sin(40 * y))[..., None]
        lesion = lesion * (1 - 0.2 * network) + accent * 0.2 * network

    img = img * (1 - mask[..., None]) + lesion * mask[..., None]
    light = 1 + 0.08 * (xx + yy) * rng.uniform(-1, 1) + (0.05 * rng.uniform(-1, 1) if view else 0)
    img = img * np.asarray(light)[..., None] + rng.normal(0, 2.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def phantom_records(total: int = 1000, seed: int = 0) -> list[SourceRecord]:
    """The phantom set as import records (no split: the importer makes a lesion-aware one)."""
    rng = np.random.default_rng(seed)
    records: list[SourceRecord] = []
    for cls, count in phantom_counts(total).items():
        made, lesion_no = 0, 0
        while made < count:
            lesion_no += 1
            views = 2 if rng.uniform() < 0.25 and count - made >= 2 else 1
            lesion_seed = int(rng.integers(2**31))
            for view in range(views):
                pixels = render_lesion(cls, np.random.default_rng([lesion_seed, view]), view)
                records.append(SourceRecord(
                    name=f"phantom_{cls}_{lesion_no:04d}_{view}", label=cls,
                    read=(lambda px=pixels: encode_png(px)), lesion_id=f"PHANTOM_{cls}_{lesion_no:04d}",
                    metadata={"dataset": "phantom", "notice": PHANTOM_NOTICE},
                ))
                made += 1
    return records
