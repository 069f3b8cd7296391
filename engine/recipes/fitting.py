"""The classifier training loop shared by `finetune` (teacher) and `distill` (students), readable top to bottom.

Data comes from a frozen dataset version: real train (+ accepted synthetic when `use_synthetic`), real val for
model selection (best macro-F1 is kept), never test. Batches are class-balanced by sampling weight, augmented
with the eight flips/rotations and colour jitter; AdamW with layer-wise lr decay (timm), warm-up then cosine;
with a teacher, the loss is Hinton distillation at temperature T, towards the teacher's mean over the 8
flips/rotations of each image (computed once, cached) or its answer on each augmented batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

if TYPE_CHECKING:  # imported where used: listing job kinds must not pay for numpy/torch
    import numpy as np


class FitParams(BaseModel, extra="forbid"):
    dataset: str | None = Field(None, description="Dataset version id; default: the newest.")
    arch: str = Field("efficientnet_b0", description="timm architecture (pretrained=False) or small_cnn.")
    image_size: int = Field(64, ge=16, le=1024)
    arch_kwargs: dict[str, Any] = Field({}, description="Extra timm arguments, e.g. patch_size for a ViT.")
    use_synthetic: bool = Field(True, description="Train on real + accepted synthetic (False: real only).")
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1, description="Layer-wise lr decay (ViTs: ~0.65-0.75).")
    class_balance: float = Field(0.5, ge=0, le=1, description="Sampling ∝ n^-x: 0 natural, 1 uniform classes.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixed_precision: bool = Field(False, description="bf16 autocast (where the device supports it).")
    eval_every: int = Field(250, ge=1)
    real_fraction: float = Field(1.0, gt=0, le=1, description="Train on this share of the real train lesions, per "
                                                               "class (the same ones in every arm): a clinic with "
                                                               "little data. Val and test untouched.")
    seed: int = 0


def dataset_id(ctx: JobContext, given: str | None) -> str:
    if given:
        return given
    versions = ctx.api.datasets()
    if not versions:
        raise RuntimeError("no dataset version: freeze one first (dermae datasets freeze NAME)")
    return versions[0].id


def version_arrays(ctx: JobContext, version: str, split: str, size: int, use_synthetic: bool = False,
                   real_fraction: float = 1.0):
    """uint8 (N, size, size, 3) and int labels of a split of a dataset version; of the train split, with
    `real_fraction` < 1, only that share of the real lesions (`real_subsample`)."""
    from engine.data.splits import real_subsample
    from engine.data.tensors import labels_of, load_array

    items = [i.model_dump() for i in ctx.api.dataset_manifest(version, split=split)
             if use_synthetic or i.source == "real"]
    if split == "train":
        items = real_subsample(items, real_fraction)
    if not items:
        raise RuntimeError(f"dataset {version} has no {split} images")
    return load_array(ctx.workspace, items, size), labels_of(items)


def version_framing(ctx: JobContext, version: str) -> dict:
    """How the version's real images were framed for training ({"crop", "via"}; see `frame_for_model`): a
    version whose real images all come from MedMNIST holds whole frames its maker squashed to squares of `via`
    pixels; any other is trained on centre squares. The demo and evaluate apply the same to what they are given."""
    from PIL import Image

    from engine.data.images import Framing

    real_data = ctx.api.dataset(version).lineage.get("real_data", [])
    if not real_data or any(entry["format"] != "medmnist" for entry in real_data):
        return {"crop": Framing.centre_square.value, "via": None}
    item = ctx.api.dataset_manifest(version, split="train", source="real")[0]
    with Image.open(ctx.workspace / "images" / item.path) as stored:
        return {"crop": Framing.whole_frame.value, "via": max(stored.size)}


def teacher_targets(teacher, images: np.ndarray, accelerator, ctx: JobContext, batch: int = 128,
                    bf16: bool = False):
    """The teacher's mean over the 8 flips/rotations (log-probabilities, (N, C)) of uint8 images (N, S, S, 3),
    computed once per teacher weights × images × precision and kept in the workspace cache: the KD arms of a run
    share them. `bf16`: in the precision the teacher trained in (bf16 autocast), whatever the student's."""
    import hashlib
    import time

    import numpy as np
    import torch

    from engine.data.tensors import cached_array, to_model_input
    from engine.models.classifier import DihedralTTA

    precision = "bf16" if bf16 else "fp32"
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + precision.encode())
    for tensor in teacher.state_dict().values():
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    path = ctx.workspace / "cache" / "teacher_targets" / f"{digest.hexdigest()[:24]}.npy"
    reused, started = path.exists(), time.perf_counter()

    def compute() -> np.ndarray:
        views, out = DihedralTTA(teacher), []
        with torch.no_grad(), torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bf16):
            for i in range(0, len(images), batch):
                x = to_model_input(images[i:i + batch]).to(accelerator.device)
                out.append(views(x).float().cpu())
                ctx.progress(min(i + batch, len(images)), len(images), "teacher targets")
        return torch.cat(out).numpy()

    targets = torch.from_numpy(np.array(cached_array(path, compute)))
    ctx.log(f"teacher targets: mean over 8 flips/rotations of {len(targets)} images ({precision}), " +
            ("reused from the cache" if reused else f"{time.perf_counter() - started:.0f} s"))
    return targets


def fit(model, params: FitParams, ctx: JobContext, *, teacher=None, teacher_meta: dict | None = None,
        temperature: float = 4.0, alpha: float = 0.5, teacher_tta: bool = False, meta: dict | None = None) -> dict:
    """Train `model` in place, keeping the best val macro-F1 weights as a `classifier` artifact. Returns the best
    validation figures. With `teacher_tta`, the distillation target of each training image is the teacher's mean
    over its 8 flips/rotations, computed once (`teacher_targets`); else the teacher sees each augmented batch.
    `teacher_meta` is the teacher's saved record: its input size and training precision."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from timm.optim import create_optimizer_v2

    from engine.data.augment import colour_jitter, dihedral
    from engine.data.tensors import to_model_input
    from engine.labels import CLASSES
    from engine.metrics import classification_report
    from engine.models.classifier import distillation_loss, prefers_channels_last, save_classifier
    from engine.recipes.common import class_weights, end_of_step, resume, save_state, warmup_cosine

    # One code path for CPU, one GPU, or many under `accelerate launch` (DDP: gradients averaged).
    accelerator = Accelerator(mixed_precision="bf16" if params.mixed_precision else "no")
    dev = accelerator.device
    torch.manual_seed(params.seed + accelerator.process_index)
    version = dataset_id(ctx, params.dataset)
    x_train, y_train = version_arrays(ctx, version, "train", params.image_size, params.use_synthetic,
                                      params.real_fraction)
    x_val, y_val = version_arrays(ctx, version, "val", params.image_size)
    sources = "real + synthetic" if params.use_synthetic else "real"
    distilling = f", distilling at T={temperature}, alpha={alpha}" if teacher is not None else ""
    ctx.log(f"{params.arch} on {version}: {len(y_train)} train ({sources}), {len(y_val)} val, "
            f"{params.image_size}px{distilling}")
    x_train_t, x_val_t, y_train_t = to_model_input(x_train), to_model_input(x_val), torch.as_tensor(y_train)
    weights = class_weights(y_train, params.class_balance, len(CLASSES))

    optimizer = create_optimizer_v2(model, opt="adamw", lr=params.lr, weight_decay=params.weight_decay,
                                    layer_decay=params.layer_decay)
    for group in optimizer.param_groups:  # timm sets lr_scale per group for layer decay
        group.setdefault("lr_scale", 1.0)

    resumed = resume(ctx, model=model, optimizer=optimizer)
    start, best = resumed["step"], resumed.get("best", {"macro_f1": -1.0})
    out = ctx.artifact_dir / "classifier"
    generator = torch.Generator().manual_seed(params.seed + start + 1000 * accelerator.process_index)
    # channels_last: faster CNN training steps on CPU, slower ViT ones (bench/train_speed.py).
    memory_format = torch.channels_last if prefers_channels_last(params.arch) else torch.contiguous_format
    model.to(dev, memory_format=memory_format)
    if teacher is not None:
        teacher.to(dev).eval()
    training_model, optimizer = accelerator.prepare(model, optimizer)
    targets, teacher_meta = None, teacher_meta or {}
    teacher_size = teacher_meta.get("image_size", params.image_size)
    if teacher is not None and teacher_tta:
        x_teacher, _ = version_arrays(ctx, version, "train", teacher_size, params.use_synthetic,
                                      params.real_fraction)
        targets = teacher_targets(teacher, x_teacher, accelerator, ctx, bf16=teacher_meta.get("mixed_precision", False))
    meta = {"arch": params.arch, "image_size": params.image_size, "kwargs": params.arch_kwargs,
            "classes": list(CLASSES), "dataset": version, "use_synthetic": params.use_synthetic,
            "distilled": teacher is not None, "mixed_precision": params.mixed_precision,
            "framing": version_framing(ctx, version), **(meta or {})}

    for step in range(start + 1, params.steps + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = params.lr * warmup_cosine(step - 1, params.steps, params.warmup_steps) * group["lr_scale"]
        idx = torch.multinomial(weights, params.batch_size, replacement=True, generator=generator)
        x = colour_jitter(dihedral(x_train_t[idx], generator), generator=generator)
        x = x.to(dev, memory_format=memory_format)
        labels = y_train_t[idx].to(dev)
        with accelerator.autocast():
            logits = training_model(x)
            if targets is not None:  # the same whatever flip/rotation the student sees
                loss = distillation_loss(logits.float(), targets[idx].to(dev), labels, temperature, alpha,
                                         params.label_smoothing)
            elif teacher is not None:
                with torch.no_grad():
                    tx = x if teacher_size == params.image_size else \
                        F.interpolate(x, size=teacher_size, mode="bilinear", antialias=True, align_corners=False)
                    teacher_logits = teacher(tx)
                loss = distillation_loss(logits.float(), teacher_logits.float(), labels, temperature, alpha,
                                         params.label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=params.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        ctx.log_metric("train/loss", loss.item(), step)
        ctx.progress(step, params.steps, f"loss {loss.item():.3f}")

        if (step % params.eval_every == 0 or step == params.steps) and ctx.is_main:
            model.eval()
            with torch.no_grad():
                probs = torch.cat([F.softmax(model(x_val_t[i:i + 256].to(dev, memory_format=memory_format)),
                                             1).cpu() for i in range(0, len(x_val_t), 256)])
            report = classification_report(probs.numpy(), np.asarray(y_val), CLASSES)
            for name in ("macro_f1", "balanced_accuracy", "accuracy"):
                ctx.log_metric(f"val/{name}", report[name], step)
            ctx.log(f"step {step}: val macro-F1 {report['macro_f1']:.3f}, balanced acc "
                    f"{report['balanced_accuracy']:.3f}, acc {report['accuracy']:.3f}")
            if report["macro_f1"] > best["macro_f1"]:  # model selection on val only
                best = {k: report[k] for k in ("macro_f1", "balanced_accuracy", "accuracy")} | {"step": step}
                save_classifier(model, out, meta | {"val": best})
        end_of_step(ctx, step, params.steps, params.eval_every,
                    lambda at, best=best: save_state(ctx, at, model=model, optimizer=optimizer, best=best))
    ctx.save_artifact(out, "classifier")
    return best
