"""generate: synthetic lesions for the classes that need them, stored as pending review with full provenance.

Quotas come from the rebalance planner (real train + already accepted synthetic, up to a target). Images are made
by DPM-Solver++ with classifier-free guidance (conditional and null passes in one forward), each from its own
seed, so any image can be regenerated from its provenance. With `oversample` > 1, each batch of kept images is
the best of oversample × as many candidates (rejection sampling): images that do not carry their class's features
are not worth a dermatologist's time. "Best" by default weighs the reference classifier's probability of the
intended class by realism — how many real images of the class have the candidate within their k-NN ball in the
classifier's feature space (per-sample density, capped at 1). By probability alone, high guidance keeps
caricatures the classifier is sure of but no real lesion looks like: on the tiny model, vasc kept that way had
FD 97 to real vasc (weighted by realism: 19), df 55 (14), at the same intended-class rate of 1.0.
A score job runs after every generate job.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, NonNegativeInt

from engine.data.planner import TargetRule
from engine.jobs.context import JobContext, Stopped
from engine.labels import PerClass

KIND = "generate"
THEN = "score"  # the engine queues a score job after each generate job


class Params(BaseModel, extra="forbid"):
    model: str | None = Field(None, description="Latent diffusion folder; default: upstream/latest train_ldm's.")
    rule: TargetRule = Field(TargetRule.fixed, description="Target per class: majority, fixed or explicit.")
    target: int | None = Field(600, ge=0, description="For the fixed rule: images per class in all.")
    counts: PerClass[NonNegativeInt] | None = Field(None, description="For the explicit rule: target per class.")
    cap_per_class: int | None = Field(None, ge=0, description="At most this many new images per class.")
    quotas: PerClass[NonNegativeInt] | None = Field(None, description="Exact numbers to generate, bypassing the "
                                                                      "planner.")
    guidance: float = Field(3.0, ge=0, le=20)
    steps: int = Field(25, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=1024)
    oversample: float = Field(1.0, ge=1, le=10, description="Candidates per kept image (rejection sampling).")
    class_oversample: PerClass[Annotated[float, Field(ge=1, le=10)]] | None = Field(
        None, description="Oversample for these classes instead, e.g. where few plain samples carry the class.")
    reference: str | None = Field(None, description="Reference classifier folder for oversampling.")
    select_by: Literal["intended_x_realism", "intended"] = Field(
        "intended_x_realism", description="How oversampling ranks candidates: intended-class probability weighted "
                                          "by realism (per-sample density among real images of the class), or alone.")
    realism_k: int = Field(3, ge=1, le=50, description="k of the real k-NN balls that realism counts.")
    seed: int | None = Field(None, ge=0, description="Base of the per-image seeds; default: this job's id, so "
                                                      "two generate jobs never make the same image.")


def run(params: Params, ctx: JobContext) -> dict:
    import math

    import numpy as np
    import torch

    from engine import metrics
    from engine.data.planner import plan_quotas
    from engine.data.tensors import to_model_input, to_png_bytes
    from engine.labels import CLASSES
    from engine.models.classifier import load_reference, predict
    from engine.models.ldm import load_generator
    from engine.recipes.common import artifact_path, device, real_split

    model_dir = artifact_path(ctx, "ldm_model", params.model, "train_ldm")
    model = load_generator(model_dir).to(device()).eval()
    oversample = {c: (params.class_oversample or {}).get(c, params.oversample) for c in CLASSES}
    reference, real_features = None, {}
    if max(oversample.values()) > 1:
        reference, meta = load_reference(artifact_path(ctx, "reference_classifier", params.reference,
                                                       "train_reference"))
        if params.select_by == "intended_x_realism":
            real_images, real_labels, _ = real_split(ctx, "train", meta["image_size"])
            _, features = predict(reference, to_model_input(real_images))
            real_features = {k: features.numpy()[real_labels == k] for k in range(len(CLASSES))}

    checkpoint = ctx.latest_checkpoint()
    if checkpoint is not None:
        state = json.loads((checkpoint.path / "state.json").read_text())
        ctx.log(f"resuming: {state['done']}")
    else:
        if params.quotas is not None:
            quotas = {c: params.quotas.get(c, 0) for c in CLASSES}
        else:
            stats = ctx.api.stats()
            quotas = plan_quotas(stats.real["train"], stats.synthetic["accepted"], params.rule, params.target,
                                 params.counts, params.cap_per_class)
        state = {"quotas": quotas, "done": dict.fromkeys(CLASSES, 0), "candidates": dict.fromkeys(CLASSES, 0)}
    quotas, done = state["quotas"], state["done"]
    total = sum(quotas.values())
    ctx.log("quotas: " + ", ".join(f"{c} {q}" for c, q in quotas.items()) + f" (total {total})")

    # Seeds are disjoint per class and job seed: class k, candidate j -> base + k * 10^7 + j. With the same seeds a
    # second job would remake the same images, which the content-addressed store keeps once: fewer than the quota.
    base = (params.seed if params.seed is not None else ctx.job_id) * 100_000_000
    fruitless = 0  # batches in a row that added nothing new
    for k, cls in enumerate(CLASSES):
        while done[cls] < quotas[cls]:
            if fruitless >= 20:
                raise RuntimeError(f"20 batches of {cls} added no new image: the generator keeps remaking images "
                                   "already in the store (a collapsed model?)")
            keep = min(params.batch_size, quotas[cls] - done[cls])
            n = math.ceil(keep * oversample[cls])
            first = base + k * 10_000_000 + state["candidates"][cls]
            seeds = list(range(first, first + n))
            labels = torch.full((n,), k, dtype=torch.long)
            images = model.sample(labels, params.guidance, params.steps, seeds=seeds)
            chosen = list(range(n))
            if reference is not None:
                probs, features = predict(reference, images.float() / 127.5 - 1)
                score = probs[:, k].numpy()
                if params.select_by == "intended_x_realism" and len(real_features[k]) > params.realism_k:
                    realism = metrics.sample_density(real_features[k], features.numpy(), params.realism_k)
                    score = score * np.minimum(1.0, realism)
                chosen = sorted(np.argsort(-score, kind="stable")[:keep].tolist())
            added = ctx.api.add_synthetic(ctx.job_id, ctx.attempt, [
                {"png": to_png_bytes(images[i]), "label": cls, "seed": seeds[i], "guidance": params.guidance,
                 "steps": params.steps, "checkpoint": str(model_dir)} for i in chosen[:keep]])
            done[cls] += len(added)  # an image already in the store is not new: the loop makes another
            fruitless = 0 if added else fruitless + 1
            state["candidates"][cls] += n
            ctx.save_checkpoint(sum(done.values()),
                                lambda folder, s=json.dumps(state): (folder / "state.json").write_text(s))
            ctx.progress(sum(done.values()), total, f"{cls} {done[cls]}/{quotas[cls]}")
            if ctx.should_stop():
                raise Stopped(f"stopped after {sum(done.values())} of {total} images")
    kept = sum(done.values())
    candidates = sum(state["candidates"].values())
    return {"quotas": quotas, "generated": kept, "candidates": candidates, "candidates_per_class": state["candidates"],
            "kept_fraction": round(kept / candidates, 4) if candidates else None, "model": str(model_dir)}
