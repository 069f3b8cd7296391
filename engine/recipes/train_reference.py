"""train_reference: the reference classifier that selects generated lesions (generate's oversampling), trained on
real train images only.

Class-balanced sampling (it must recognise rare classes, not favour nv), dihedral and colour augmentation;
the best checkpoint by macro-F1 on a held-out set is kept — real val here. It never reports how faithful the
synthetic images are: that is the independent judge's job (train_judge), which shares this loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

if TYPE_CHECKING:
    import numpy as np

KIND = "train_reference"


class Params(BaseModel, extra="forbid"):
    arch: str = Field("small_cnn", description="small_cnn, or a timm architecture (trained from scratch).")
    image_size: int = Field(32, ge=16, le=512)
    width: int = Field(32, ge=8, le=256, description="small_cnn only: channels of the first conv stage.")
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    class_balance: float = Field(0.5, ge=0, le=1, description="Sampling ∝ n^-x: 0 natural, 1 uniform classes.")
    eval_every: int = Field(250, ge=1)
    seed: int = 0


def run(params: Params, ctx: JobContext) -> dict:
    from engine.recipes.common import real_split

    x_train, y_train, _ = real_split(ctx, "train", params.image_size)
    x_val, y_val, _ = real_split(ctx, "val", params.image_size)
    meta = train_on_real(params, ctx, (x_train, y_train), selection=(x_val, y_val, "real val"),
                         val=(x_val, y_val), folder="reference", artifact_kind="reference_classifier")
    return {"val_macro_f1": meta["val_macro_f1"], "best_step": meta["step"], "val_recall": meta["val_recall"],
            "arch": params.arch}


def per_class_recall(model, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float]:
    """(recall per class, macro-F1) of `model` on uint8 images (N, S, S, 3) with labels (N,), one view each."""
    from sklearn.metrics import f1_score, recall_score

    from engine.data.tensors import to_model_input
    from engine.labels import CLASSES
    from engine.models.classifier import predict

    was_training = model.training
    model.eval()
    pred = predict(model, to_model_input(x))[0].argmax(1).numpy()
    model.train(was_training)
    labels = range(len(CLASSES))
    recall = recall_score(y, pred, average=None, labels=labels, zero_division=0)
    macro_f1 = float(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    return {c: float(r) for c, r in zip(CLASSES, recall, strict=True)}, macro_f1


def train_on_real(params: Params, ctx: JobContext, train: tuple[np.ndarray, np.ndarray],
                  selection: tuple[np.ndarray, np.ndarray, str], val: tuple[np.ndarray, np.ndarray], folder: str,
                  artifact_kind: str) -> dict:
    """Train a classifier on real images `train` (uint8 (N, S, S, 3), labels), keeping the weights with the best
    macro-F1 on `selection` (images, labels, its name), then measure its recall per class on real `val`.
    Saved as a classifier folder (`folder`) registered as `artifact_kind`; returns its record (arch, image size,
    the best step, val recall per class …)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from engine.data.augment import colour_jitter, dihedral
    from engine.data.tensors import to_model_input
    from engine.labels import CLASSES
    from engine.models.classifier import build_classifier, load_classifier, prefers_channels_last, save_classifier
    from engine.recipes.common import class_weights, end_of_step, resume, save_state

    torch.manual_seed(params.seed)
    x_train, y_train = to_model_input(train[0]), torch.as_tensor(train[1])
    x_select, y_select, selection_name = selection
    kwargs = {"width": params.width} if params.arch == "small_cnn" else {}
    record = {"arch": params.arch, "image_size": params.image_size, "kwargs": kwargs, "classes": list(CLASSES),
              "seed": params.seed, "selected_on": selection_name}
    model = build_classifier(params.arch, len(CLASSES), params.image_size, **kwargs)
    memory_format = torch.channels_last if prefers_channels_last(params.arch) else torch.contiguous_format
    model.to(memory_format=memory_format)
    weights = class_weights(train[1], params.class_balance, len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), params.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, params.lr, total_steps=params.steps)
    resumed = resume(ctx, model=model, optimizer=optimizer, schedule=schedule)
    start, best = resumed["step"], resumed.get("best", {"macro_f1": -1.0})
    out = ctx.artifact_dir / folder
    generator = torch.Generator().manual_seed(params.seed + start)
    ctx.log(f"{params.arch}: {len(x_train)} real train images at {params.image_size}px, selected on "
            f"{len(y_select)} {selection_name} images")

    model.train()
    for step in range(start + 1, params.steps + 1):
        idx = torch.multinomial(weights, params.batch_size, replacement=True, generator=generator)
        x = colour_jitter(dihedral(x_train[idx], generator), generator=generator).to(memory_format=memory_format)
        loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ctx.log_metric("train/loss", loss.item(), step)
        ctx.progress(step, params.steps, f"loss {loss.item():.3f}")
        if step % params.eval_every == 0 or step == params.steps:
            recall, macro_f1 = per_class_recall(model, x_select, y_select)
            ctx.log_metric("select/macro_f1", macro_f1, step)
            ctx.log(f"step {step}: {selection_name} macro-F1 {macro_f1:.3f}, recall "
                    + " ".join(f"{c} {r:.2f}" for c, r in recall.items()))
            if macro_f1 > best["macro_f1"]:  # model selection on a held-out set, never on test
                best = {"macro_f1": macro_f1, "step": step, "selection_recall": recall}
                save_classifier(model, out, record | best)
        end_of_step(ctx, step, params.steps, params.eval_every, lambda at, best=best: save_state(
            ctx, at, model=model, optimizer=optimizer, schedule=schedule, best=best))

    model, _ = load_classifier(out)  # the best weights
    val_recall, val_macro_f1 = per_class_recall(model, *val)
    record |= best | {"val_recall": val_recall, "val_macro_f1": val_macro_f1,
                      "val_counts": dict(zip(CLASSES, np.bincount(val[1], minlength=len(CLASSES)).tolist(),
                                             strict=True))}
    ctx.log(f"real val: macro-F1 {val_macro_f1:.3f}, recall " + " ".join(f"{c} {r:.2f}" for c, r in
                                                                        val_recall.items()))
    save_classifier(model, out, record)
    ctx.save_artifact(out, artifact_kind)
    return record
