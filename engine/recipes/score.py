"""score: automatic numbers for every synthetic image of a generation job, to help (not replace) review.

Per image: the reference classifier's probability of the intended class; the nearest real train image in the
classifier's feature space, its id and distance, flagged as a near-copy when closer than two distinct real
lesions almost ever are (the 1% quantile of real-vs-real nearest distances, same-lesion pairs excluded);
near-duplicate groups among the synthetic images at the same threshold; sharpness (variance of the Laplacian).
Per class, synthetic vs real train: Fréchet distance and precision/recall in that same feature space — not
Inception's, whose weights cannot be downloaded here, so the numbers compare runs, not papers.
A grid puts each class's synthetic images (left, the first eight generated: not the best ones) beside eight real
train images of that class (right), so one look says whether the classes came out as themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

if TYPE_CHECKING:
    import numpy as np

KIND = "score"
FEATURE_SPACE_NOTE = ("Fréchet distance and precision/recall are measured in the reference classifier's feature "
                      "space, not Inception's (its weights cannot be downloaded here): compare runs, not papers.")


class Params(BaseModel, extra="forbid"):
    generation_job: int | None = Field(None, description="Default: the generate job this one waited on (or the "
                                                         "train_ldm job, for its preview images).")
    reference: str | None = Field(None, description="Reference classifier folder; default: the newest.")
    near_copy_quantile: float = Field(0.01, gt=0, lt=0.5)
    k: int = Field(3, ge=1, le=20, description="Neighbours for precision/recall.")


def run(params: Params, ctx: JobContext) -> dict:
    import numpy as np

    from engine import metrics
    from engine.data.labels import CLASSES
    from engine.data.tensors import labels_of, load_array, to_model_input
    from engine.models.classifier import load_reference, predict
    from engine.recipes.common import artifact_path, real_split

    generation_job = params.generation_job or next(
        (j for j in ctx.after if ctx.api.job(j).kind in ("generate", "train_ldm")), None)
    if generation_job is None:
        raise ValueError("no generation job to score: pass generation_job or run after a generate job")
    reference, meta = load_reference(artifact_path(ctx, "reference_classifier", params.reference,
                                                   "train_reference"))
    size = meta["image_size"]
    syn_items = [m.model_dump() for m in ctx.api.manifest(source="synthetic", generation_job=generation_job)]
    if not syn_items:
        return {"generation_job": generation_job, "scored": 0}
    syn_images = load_array(ctx.workspace, syn_items, size)
    syn_labels = labels_of(syn_items)
    real_images, real_labels, real_items = real_split(ctx, "train", size)
    ctx.progress(0, 4, "features")

    syn_probs, syn_feats = predict(reference, to_model_input(syn_images))
    _, real_feats = predict(reference, to_model_input(real_images))
    syn_feats, real_feats = syn_feats.numpy(), real_feats.numpy()
    intended = syn_probs[np.arange(len(syn_labels)), syn_labels].numpy()
    predicted = syn_probs.argmax(1).numpy()
    ctx.progress(1, 4, "nearest real images")

    distance, nearest_index = metrics.nearest(syn_feats, real_feats)
    threshold = metrics.near_copy_threshold(real_feats, [it["lesion_id"] for it in real_items],
                                            params.near_copy_quantile)
    groups = metrics.near_duplicate_groups(syn_feats, threshold)
    sharp = metrics.sharpness(np.asarray(syn_images))
    ctx.progress(2, 4, "uploading scores")

    scores = []
    for i, item in enumerate(syn_items):
        scores += [
            {"image_id": item["id"], "name": "intended_prob", "value": float(intended[i])},
            {"image_id": item["id"], "name": "predicted_class", "value": float(predicted[i]),
             "ref": CLASSES[predicted[i]]},
            {"image_id": item["id"], "name": "nearest_real_dist", "value": float(distance[i]),
             "ref": real_items[nearest_index[i]]["id"]},
            {"image_id": item["id"], "name": "near_copy", "value": float(distance[i] < threshold)},
            {"image_id": item["id"], "name": "dup_group", "value": float(groups[i])},
            {"image_id": item["id"], "name": "sharpness", "value": float(sharp[i])},
        ]
    for start in range(0, len(scores), 50_000):
        ctx.api.add_scores(ctx.job_id, ctx.attempt, scores[start:start + 50_000])
    ctx.progress(3, 4, "per-class quality")

    per_class: dict[str, dict] = {}
    for k, cls in enumerate(CLASSES):
        syn_c, real_c = syn_feats[syn_labels == k], real_feats[real_labels == k]
        if len(syn_c) == 0:
            continue
        row: dict = {"n": len(syn_c), "intended_rate": float((predicted[syn_labels == k] == k).mean()),
                     "real_val_recall": meta["val_recall"][cls],
                     "near_copies": int((distance[syn_labels == k] < threshold).sum())}
        if len(syn_c) >= 2 and len(real_c) >= 2:
            row["fd"] = metrics.frechet_distance(real_c, syn_c)
        if len(syn_c) > params.k and len(real_c) > params.k:
            row["precision"], row["recall"] = metrics.precision_recall(real_c, syn_c, params.k)
        per_class[cls] = row
        for name, value in row.items():
            if name != "n":
                ctx.log_metric(f"{name}/{cls}", value, 0)
        ctx.log(f"{cls}: " + ", ".join(f"{n} {v:.3f}" if isinstance(v, float) else f"{n} {v}"
                                       for n, v in row.items()))
    report = {"generation_job": generation_job, "near_copy_threshold": threshold,
              "near_copies": int((distance < threshold).sum()),
              "duplicate_groups": int(groups.max() + 1) if len(groups) else 0, "per_class": per_class,
              "note": FEATURE_SPACE_NOTE}
    ctx.save_artifact(side_by_side_grid(syn_images, syn_labels, real_images, real_labels,
                                        ctx.artifact_dir / "synthetic_vs_real.png"), "class_grid")
    path = ctx.artifact_dir / "score_report.json"
    path.write_text(json.dumps(report, indent=2))
    ctx.save_artifact(path, "score_report")
    ctx.progress(4, 4, "done")
    return {"scored": len(syn_items), **{k: v for k, v in report.items() if k != "per_class"}}


def side_by_side_grid(syn_images: np.ndarray, syn_labels: np.ndarray, real_images: np.ndarray,
                      real_labels: np.ndarray, path: Path, per_side: int = 8) -> Path:
    """A row per generated class: `per_side` synthetic images, then `per_side` real ones (blank where fewer).
    Images uint8 (N, H, W, 3), labels (N,) class indices."""
    import numpy as np
    import torch

    from engine.data.tensors import grid_png

    blank = np.full_like(np.asarray(syn_images[:1]), 255)
    rows = []
    for k in sorted(set(np.asarray(syn_labels).tolist())):
        for images, labels in ((syn_images, syn_labels), (real_images, real_labels)):
            chosen = np.asarray(images)[np.asarray(labels) == k][:per_side]
            rows += [chosen, *[blank] * (per_side - len(chosen))]  # blanks keep the columns aligned
    cells = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2)
    return grid_png(cells, len(cells) // (2 * per_side), path)
