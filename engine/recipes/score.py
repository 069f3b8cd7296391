"""score: automatic numbers for every synthetic image of a generation job, to help (not replace) review, and the
independent judge's report of how faithful each class came out.

Two classifiers, two roles. The reference classifier is the selector: generate ranked its candidates by it, so
its probability of the intended class is kept per image (`intended_prob`) as the number the selection used — and
never reported as fidelity, which would be circular. The judge (train_judge: another architecture, seed and
held-out set, never used by generate) gives per image its own probability of the intended class (`judge_prob`),
the nearest real train image in its feature space, its id and distance, flagged as a near-copy when closer than
two distinct real lesions almost ever are (the 1% quantile of real-vs-real nearest distances, same-lesion pairs
excluded), and near-duplicate groups among the synthetic images at the same threshold; sharpness is the variance
of the Laplacian.

Per class, the judge reports (`per_class` of score_report.json, also the job's result):
- intended_rate: share of synthetic images it assigns to their intended class, beside real_val_recall, its recall
  on real val images of the class — the ceiling a faithful generator could reach;
- precision / recall (Kynkäänniemi et al. 2019, k = 3) of the synthetic set against real images the judge never
  trained on (real val + its held-out fold), the two sets cut to one size; beside them `real_vs_real`, what real
  val scores against the held-out fold — two real samples of the class, as far as the few images allow;
- fd: Fréchet distance of synthetic images to real train images, at the size of the class's real val set, beside
  fd_floor, the same distance of real val to real train — what an indistinguishable generator would score;
- near_copies of real train images;
- c2st: a classifier two-sample test on the same held-out real images — accuracy 0.5 means a machine cannot tell
  the synthetic images from real ones (the automatic stand-in for the studio's visual Turing test);
- bars: each of the profile's targets, met or not.
All in the judge's feature space, not Inception's (its weights cannot be downloaded here): compare runs, not papers.
A grid puts each class's synthetic images (left, the first eight generated: not the best ones) beside eight real
train images of that class (right).
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
FEATURE_SPACE_NOTE = ("Fidelity is measured by the independent judge (never the selector), in its feature space, "
                      "not Inception's (its weights cannot be downloaded here): compare runs, not papers.")
# What a generator must reach per class, in the judge's eyes (issue 21's bars for the 64 px profile).
BARS = {"intended_rate": "≥ 0.8 × the judge's real-val recall", "precision": "≥ 0.7", "recall": "≥ 0.5",
        "near_copies": "none accepted"}
MIN_C2ST_ROWS = 5  # per side: the two-sample test's folds need that many


class Params(BaseModel, extra="forbid"):
    generation_job: int | None = Field(None, description="Default: the generate job this one waited on (or the "
                                                         "train_ldm job, for its preview images).")
    reference: str | None = Field(None, description="Reference classifier (the selector) folder; default: the "
                                                    "newest.")
    judge: str | None = Field(None, description="Judge classifier folder; default: the newest train_judge's.")
    near_copy_quantile: float = Field(0.01, gt=0, lt=0.5)
    k: int = Field(3, ge=1, le=20, description="Neighbours for precision/recall.")


def run(params: Params, ctx: JobContext) -> dict:
    import numpy as np

    from engine import metrics
    from engine.data.tensors import labels_of, load_array, to_model_input
    from engine.labels import CLASSES
    from engine.models.classifier import load_reference, predict
    from engine.recipes.common import artifact_path, real_split
    from engine.recipes.train_judge import HELD_OUT_FILE

    generation_job = params.generation_job or next(
        (j for j in ctx.after if ctx.api.job(j).kind in ("generate", "train_ldm")), None)
    if generation_job is None:
        raise ValueError("no generation job to score: pass generation_job or run after a generate job")
    reference, ref_meta = load_reference(artifact_path(ctx, "reference_classifier", params.reference,
                                                       "train_reference"))
    judge_dir = artifact_path(ctx, "judge_classifier", params.judge, "train_judge")
    judge, judge_meta = load_reference(judge_dir)
    syn_items = [m.model_dump() for m in ctx.api.manifest(source="synthetic", generation_job=generation_job)]
    if not syn_items:
        return {"generation_job": generation_job, "scored": 0}
    syn_labels = labels_of(syn_items)
    ctx.progress(0, 4, "features")

    selector_probs, _ = predict(reference, to_model_input(load_array(ctx.workspace, syn_items,
                                                                      ref_meta["image_size"])))
    size = judge_meta["image_size"]
    syn_images = load_array(ctx.workspace, syn_items, size)
    real_images, real_labels, real_items = real_split(ctx, "train", size)
    val_images, val_labels, _ = real_split(ctx, "val", size)
    judge_probs, syn_feats = predict(judge, to_model_input(syn_images))
    real_feats = predict(judge, to_model_input(real_images))[1].numpy()
    val_feats = predict(judge, to_model_input(val_images))[1].numpy()
    syn_feats = syn_feats.numpy()
    held_out_ids = set(json.loads((judge_dir / HELD_OUT_FILE).read_text())) if (judge_dir / HELD_OUT_FILE).exists() \
        else set()
    held_out = np.array([it["id"] in held_out_ids for it in real_items], dtype=bool)
    held_out_feats, held_out_labels = real_feats[held_out], real_labels[held_out]
    ctx.progress(1, 4, "nearest real images")

    distance, nearest_index = metrics.nearest(syn_feats, real_feats)
    threshold = metrics.near_copy_threshold(real_feats, [it["lesion_id"] for it in real_items],
                                            params.near_copy_quantile)
    groups = metrics.near_duplicate_groups(syn_feats, threshold)
    sharp = metrics.sharpness(np.asarray(syn_images))
    ctx.progress(2, 4, "uploading scores")

    rows = np.arange(len(syn_labels))
    selector_intended, judge_intended = selector_probs[rows, syn_labels].numpy(), judge_probs[rows, syn_labels].numpy()
    selector_class, judge_class = selector_probs.argmax(1).numpy(), judge_probs.argmax(1).numpy()
    scores = []
    for i, item in enumerate(syn_items):
        scores += [
            {"image_id": item["id"], "name": "intended_prob", "value": float(selector_intended[i])},
            {"image_id": item["id"], "name": "predicted_class", "value": float(selector_class[i]),
             "ref": CLASSES[selector_class[i]]},
            {"image_id": item["id"], "name": "judge_prob", "value": float(judge_intended[i])},
            {"image_id": item["id"], "name": "judge_class", "value": float(judge_class[i]),
             "ref": CLASSES[judge_class[i]]},
            {"image_id": item["id"], "name": "nearest_real_dist", "value": float(distance[i]),
             "ref": real_items[nearest_index[i]]["id"]},
            {"image_id": item["id"], "name": "near_copy", "value": float(distance[i] < threshold)},
            {"image_id": item["id"], "name": "dup_group", "value": float(groups[i])},
            {"image_id": item["id"], "name": "sharpness", "value": float(sharp[i])},
        ]
    for start in range(0, len(scores), 50_000):
        ctx.api.add_scores(ctx.job_id, ctx.attempt, scores[start:start + 50_000])
    ctx.progress(3, 4, "per-class fidelity")

    per_class: dict[str, dict] = {}
    for k, cls in enumerate(CLASSES):
        mine = syn_labels == k
        if not mine.any():
            continue
        row = class_fidelity(
            syn_feats[mine], judge_class[mine] == k, distance[mine] < threshold, judge_meta["val_recall"][cls],
            real_train=real_feats[real_labels == k], real_val=val_feats[val_labels == k],
            real_held_out=held_out_feats[held_out_labels == k], k=params.k)
        per_class[cls] = row
        for name, value in row.items():
            if isinstance(value, float | int) and not isinstance(value, bool) and name != "n":
                ctx.log_metric(f"{name}/{cls}", value, 0)
        ctx.log(f"{cls}: " + ", ".join(f"{n} {v:.3f}" if isinstance(v, float) else f"{n} {v}"
                                       for n, v in row.items() if n not in ("c2st", "bars")))
    report = {"generation_job": generation_job, "judge": str(judge_dir), "judge_arch": judge_meta["arch"],
              "judge_val_macro_f1": judge_meta.get("val_macro_f1"), "selector": ref_meta["arch"],
              "near_copy_threshold": threshold, "near_copies": int((distance < threshold).sum()),
              "duplicate_groups": int(groups.max() + 1) if len(groups) else 0, "bars": BARS,
              "per_class": per_class, "note": FEATURE_SPACE_NOTE}
    ctx.save_artifact(side_by_side_grid(syn_images, syn_labels, real_images, real_labels,
                                        ctx.artifact_dir / "synthetic_vs_real.png"), "class_grid")
    path = ctx.artifact_dir / "score_report.json"
    path.write_text(json.dumps(report, indent=2))
    ctx.save_artifact(path, "score_report")
    ctx.progress(4, 4, "done")
    return {"scored": len(syn_items), **report}


def class_fidelity(syn: np.ndarray, judged_intended: np.ndarray, near_copy: np.ndarray, real_val_recall: float, *,
                   real_train: np.ndarray, real_val: np.ndarray, real_held_out: np.ndarray, k: int = 3) -> dict:
    """The judge's report on one class: `syn` the synthetic images' judge features (M, D), `judged_intended`
    (M,) whether the judge assigned each its intended class, `near_copy` (M,) the near-copy flags; real features
    of the class from the train split, from val, and from the judge's held-out fold of train. See the module doc.
    Beside precision/recall, `real_vs_real` is what real val scores against the held-out fold, at matched sizes:
    the figures of two real samples of the class, as far as the few images allow."""
    import numpy as np

    from engine import metrics

    real_unseen = np.concatenate([real_val, real_held_out])  # real images the judge never trained on
    row: dict = {"n": len(syn), "intended_rate": float(np.mean(judged_intended)),
                 "real_val_recall": float(real_val_recall), "near_copies": int(np.sum(near_copy)),
                 "n_unseen_real": len(real_unseen)}
    if min(len(syn), len(real_unseen)) > k:
        row["precision"], row["recall"] = metrics.matched_size(
            real_unseen, syn, lambda real, fake: metrics.precision_recall(real, fake, k))
    if min(len(real_val), len(real_held_out)) > k:
        precision, recall = metrics.matched_size(real_held_out, real_val,
                                                 lambda real, fake: metrics.precision_recall(real, fake, k))
        row["real_vs_real"] = {"precision": precision, "recall": recall,
                               "n": min(len(real_val), len(real_held_out))}
    n = min(len(real_val), len(syn))
    if n >= 2 and len(real_train) >= 2:
        row["fd"] = metrics.frechet_distance_at(real_train, syn, n)
        row["fd_floor"] = metrics.frechet_distance_at(real_train, real_val, n)
        row["fd_at_n"] = n
    if min(len(syn), len(real_unseen)) >= MIN_C2ST_ROWS:
        row["c2st"] = metrics.classifier_two_sample_test(real_unseen, syn)
    row["bars"] = {
        "intended_rate": row["intended_rate"] >= 0.8 * row["real_val_recall"],
        "precision": row.get("precision", 0.0) >= 0.7,
        "recall": row.get("recall", 0.0) >= 0.5,
    }
    return row


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
