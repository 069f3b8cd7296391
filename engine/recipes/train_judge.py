"""train_judge: an independent judge of class fidelity — a classifier that reports how faithful synthetic lesions
are and never picks them.

The reference classifier selects generate's candidates (oversampling); if it also reported their class fidelity,
the report would be circular (it rates what it chose). The judge is another classifier, trained on real train
images only, with another architecture and seed, selected on another held-out set: a lesion-aware fold of the
train split, so real val stays unseen and its recall per class there is the judge's honest ceiling. The score job
uses it for the fidelity report; `generate` never loads it.
"""

from __future__ import annotations

import json

from pydantic import Field

from engine.jobs.context import JobContext
from engine.recipes import train_reference

KIND = "train_judge"
HELD_OUT_FILE = "held_out_ids.json"  # beside the weights: the real train images held out from the judge's training


class Params(train_reference.Params):
    arch: str = Field("resnet18", description="A timm architecture (from scratch), or small_cnn; best not the "
                                              "reference's.")
    holdout: float = Field(0.15, gt=0, lt=0.5, description="Share of the train split's lesions held out (per "
                                                           "class) to select the judge's weights on.")
    seed: int = 1


def run(params: Params, ctx: JobContext) -> dict:
    import numpy as np

    from engine.data.splits import lesion_aware_split
    from engine.recipes.common import real_split

    images, labels, items = real_split(ctx, "train", params.image_size)
    fold = np.array(lesion_aware_split([it["label"] for it in items], [it["lesion_id"] for it in items],
                                       (1 - params.holdout, params.holdout, 0.0), seed=params.seed))
    train, held_out = fold == "train", fold == "val"
    x_val, y_val, _ = real_split(ctx, "val", params.image_size)
    # The score job's two-sample test needs real images the judge's weights never saw: this fold and real val.
    folder = ctx.artifact_dir / "judge"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HELD_OUT_FILE).write_text(json.dumps([it["id"] for it, out in zip(items, held_out, strict=True)
                                                    if out]))
    meta = train_reference.train_on_real(
        params, ctx, (images[train], labels[train]), selection=(images[held_out], labels[held_out],
                                                                "a lesion-aware fold of real train"),
        val=(x_val, y_val), folder=folder.name, artifact_kind="judge_classifier")
    return {"val_macro_f1": meta["val_macro_f1"], "val_recall": meta["val_recall"], "best_step": meta["step"],
            "arch": params.arch, "held_out": int(held_out.sum())}
