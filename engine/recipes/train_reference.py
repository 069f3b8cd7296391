"""train_reference: the reference classifier that judges generated lesions, trained on real train images only.

Class-balanced sampling (it must recognise rare classes, not favour nv), dihedral and colour augmentation;
the best checkpoint by validation macro-F1 is kept. Its per-class validation recall is the bar that synthetic
images' intended-class rate is compared with.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext, Stopped

KIND = "train_reference"


class Params(BaseModel, extra="forbid"):
    image_size: int = Field(32, ge=16, le=512)
    width: int = Field(32, ge=8, le=256, description="Channels of the first conv stage.")
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    class_balance: float = Field(0.5, ge=0, le=1, description="Sampling ∝ n^-x: 0 natural, 1 uniform classes.")
    eval_every: int = Field(250, ge=1)
    seed: int = 0


def run(params: Params, ctx: JobContext) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import f1_score, recall_score

    from engine.data.augment import colour_jitter, dihedral
    from engine.data.labels import CLASSES
    from engine.data.tensors import to_model_input
    from engine.models.classifier import SmallCNN, predict
    from engine.recipes.common import class_weights, real_split, resume, save_state

    torch.manual_seed(params.seed)
    x_train, y_train, _ = real_split(ctx, "train", params.image_size)
    x_val, y_val, _ = real_split(ctx, "val", params.image_size)
    x_train, x_val = to_model_input(x_train), to_model_input(x_val)
    y_train_t = torch.as_tensor(y_train)
    weights = class_weights(y_train, params.class_balance, len(CLASSES))

    model = SmallCNN(len(CLASSES), params.width)
    optimizer = torch.optim.AdamW(model.parameters(), params.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, params.lr, total_steps=params.steps)
    resumed = resume(ctx, model=model, optimizer=optimizer, schedule=schedule)
    start, best = resumed["step"], resumed.get("best", {"macro_f1": -1.0})
    out = ctx.artifact_dir / "reference"
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(params.seed + start)

    for step in range(start + 1, params.steps + 1):
        model.train()
        idx = torch.multinomial(weights, params.batch_size, replacement=True, generator=generator)
        x = colour_jitter(dihedral(x_train[idx], generator), generator=generator)
        loss = F.cross_entropy(model(x), y_train_t[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ctx.log_metric("train/loss", loss.item(), step)
        ctx.progress(step, params.steps, f"loss {loss.item():.3f}")
        stop = ctx.should_stop()  # cancel or SIGTERM: checkpoint now, within the grace period
        if step % params.eval_every == 0 or step == params.steps or stop:
            model.eval()
            probs, _ = predict(model, x_val)
            pred = probs.argmax(1).numpy()
            macro_f1 = float(f1_score(y_val, pred, average="macro", labels=range(len(CLASSES)), zero_division=0))
            recall = recall_score(y_val, pred, average=None, labels=range(len(CLASSES)), zero_division=0)
            ctx.log_metric("val/macro_f1", macro_f1, step)
            ctx.log(f"step {step}: val macro-F1 {macro_f1:.3f}, recall "
                    + " ".join(f"{c} {r:.2f}" for c, r in zip(CLASSES, recall, strict=True)))
            if macro_f1 > best["macro_f1"]:  # model selection on val, never on test
                best = {"macro_f1": macro_f1, "step": step,
                        "val_recall": {c: float(r) for c, r in zip(CLASSES, recall, strict=True)},
                        "val_accuracy": float((pred == y_val).mean())}
                torch.save(model.state_dict(), out / "reference.pt")
            save_state(ctx, step, model=model, optimizer=optimizer, schedule=schedule, best=best)
            if stop:
                raise Stopped(f"stopped at step {step}")

    meta = {"classes": list(CLASSES), "width": params.width, "image_size": params.image_size, **best,
            "val_counts": {c: int(n) for c, n in zip(CLASSES, np.bincount(y_val, minlength=len(CLASSES)),
                                                     strict=True)}}
    (out / "reference.json").write_text(json.dumps(meta, indent=2))
    ctx.save_artifact(out, "reference_classifier")
    return {"val_macro_f1": best["macro_f1"], "best_step": best["step"], "val_recall": best["val_recall"]}
