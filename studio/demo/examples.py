"""Example images for the demo, written at start into a temporary folder (the only folder the demo serves files
from): a few phantom lesions (procedural, not clinical) and, where the HAM10000 sample is present beside the
checkout, one of its images per class. Clinical data is never copied into the repository: it is re-encoded from
the shared folder into the temporary one, through the same checks as an upload, and deleted with it."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.images import encode_png
from engine.data.phantom import PHANTOM_NOTICE, render_lesion
from engine.labels import CLASS_NAMES, CLASSES
from studio.demo.inputs import prepare_image

PHANTOM_CLASSES = ("mel", "nv", "bcc", "vasc")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str
    label: str  # the ground truth, a class code


def ham10000_sample() -> Path | None:
    """The HAM10000 sample: $DERMAE_SHARED_DATA/ham10000-sample, else ../shared/data/ham10000-sample beside the
    checkout, else /work/shared/data/ham10000-sample; None when absent."""
    roots = [Path(os.environ["DERMAE_SHARED_DATA"])] if os.environ.get("DERMAE_SHARED_DATA") else []
    roots += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for root in roots:
        if (root / "ham10000-sample" / "HAM10000_metadata.csv").exists():
            return root / "ham10000-sample"
    return None


def write_examples(folder: Path, ham_sample: Path | None = None) -> dict[str, Example]:
    """{file name: Example}, phantom lesions first, then one HAM10000 image per class (the first by image id)."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = {}
    for k, cls in enumerate(PHANTOM_CLASSES):
        name = f"phantom-{cls}.png"
        (folder / name).write_bytes(encode_png(render_lesion(cls, np.random.default_rng(1000 + k))))
        examples[name] = Example(folder / name, f"Phantom {CLASS_NAMES[cls].lower()} ({PHANTOM_NOTICE})", cls)
    if ham_sample is None:
        return examples
    with (ham_sample / "HAM10000_metadata.csv").open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["image_id"])
    for cls in CLASSES:
        row = next((r for r in rows if r["dx"] == cls), None)
        found = sorted(ham_sample.glob(f"*/{row['image_id']}.jpg")) if row else []
        if not found:
            continue
        name = f"ham10000-{cls}-{row['image_id']}.png"
        prepare_image(found[0].read_bytes()).image.save(folder / name)
        examples[name] = Example(folder / name, f"HAM10000 {row['image_id']}: {CLASS_NAMES[cls].lower()} "
                                                f"({row['dx_type']}; CC BY-NC 4.0, Tschandl et al. 2018)", cls)
    return examples
