"""Is the lesion in the centre square of a HAM10000 frame? The models train on that square (200x150 -> its middle
150x150 -> 64x64), so a lesion off centre would be cut.

For every frame: a rough lesion mask (pixels darker than the frame's Otsu threshold on grey, leaving out the
near-black vignette of the dermatoscope), then the share of the lesion's pixels inside the centre square and
where its centroid sits. A grid of random frames per class, the square outlined, goes to --grid for a look (it is
clinical data: keep it out of the repository).

    python bench/centre_crop.py [--data ../shared/data/ham10000-200] [--grid /tmp/centre_crop.png]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.default import HAM_FOLDER, shared_data_folder  # noqa: E402

VIGNETTE = 40  # grey levels below this are the dermatoscope's black surround, not lesion


def otsu(grey: np.ndarray) -> float:
    """The grey level that best splits the histogram in two (Otsu 1979)."""
    counts, edges = np.histogram(grey, 256, (0, 256))
    p = counts / counts.sum()
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between))])


def lesion_in_square(path: Path) -> tuple[float, float] | None:
    """(share of lesion pixels inside the centre square, centroid's distance from the frame's centre as a share
    of half the square's side), or None when no lesion stands out."""
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    h, w = grey.shape
    skin = grey[grey >= VIGNETTE]
    if skin.size < grey.size * 0.2:
        return None
    mask = (grey < otsu(skin)) & (grey >= VIGNETTE)
    if mask.sum() < grey.size * 0.01:
        return None
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    inside = mask[top:top + side, left:left + side].sum() / mask.sum()
    ys, xs = np.nonzero(mask)
    offset = np.hypot(ys.mean() - h / 2, xs.mean() - w / 2) / (side / 2)
    return float(inside), float(offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data_folder() / HAM_FOLDER)
    parser.add_argument("--grid", type=Path, default=Path("/tmp/centre_crop.png"))
    args = parser.parse_args()
    rows = list(csv.DictReader((args.data / "HAM10000_metadata.csv").open()))
    results = [lesion_in_square(args.data / "images" / f"{r['image_id']}.jpg") for r in rows]
    found = np.array([r for r in results if r is not None])
    inside, offset = found[:, 0], found[:, 1]
    print(f"{len(found)} of {len(rows)} frames with a lesion mask ({len(rows) - len(found)} without one that stands "
          "out)")
    print(f"share of the lesion's pixels inside the centre square: median {np.median(inside):.3f}, "
          f"at least 0.9 in {np.mean(inside >= 0.9):.1%} of frames, at least 0.75 in {np.mean(inside >= 0.75):.1%}")
    print(f"lesion centroid within a quarter of the square's side of the frame's centre: {np.mean(offset <= 0.5):.1%}"
          f" of frames (median distance {np.median(offset):.2f} half-sides)")
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["dx"], []).append(row)
    rng = random.Random(0)
    per_row, cell = 8, (200, 150)
    canvas = Image.new("RGB", (per_row * (cell[0] + 4), len(by_class) * (cell[1] + 4)), "white")
    for i, cls in enumerate(sorted(by_class)):
        for j, row in enumerate(rng.sample(by_class[cls], per_row)):
            frame = Image.open(args.data / "images" / f"{row['image_id']}.jpg").convert("RGB").resize(cell)
            side = min(cell)
            left = (cell[0] - side) // 2
            ImageDraw.Draw(frame).rectangle([left, 0, left + side - 1, side - 1], outline=(0, 255, 0))
            canvas.paste(frame, (j * (cell[0] + 4), i * (cell[1] + 4)))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.grid)
    print(f"grid of {per_row} random frames per class ({', '.join(sorted(by_class))}), centre square in green: "
          f"{args.grid}")


if __name__ == "__main__":
    main()
