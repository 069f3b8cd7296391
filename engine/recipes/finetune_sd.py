"""finetune_sd: the paper path — fine-tune a local Stable-Diffusion-style pipeline folder (unet/, vae/,
scheduler/) on the real train split at 256px, conditioned on learned class embeddings, through accelerate (one
code path for CPU, one GPU or `accelerate launch` on many). Nothing is downloaded: the folder must be local.

The result is an `ldm_model` artifact that `generate` samples like our own latent diffusion model.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from engine.jobs.context import JobContext

KIND = "finetune_sd"


class Params(BaseModel, extra="forbid"):
    pipeline: str = Field(description="Local folder of an SD-style pipeline (unet/, vae/, scheduler/).")
    image_size: int = Field(256, ge=32, le=1024)
    steps: int = Field(20000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-5, gt=0)
    mixed_precision: bool = Field(False, description="bf16 autocast, as in every recipe.")
    num_tokens: int = Field(1, ge=1, le=77, description="Context tokens per class embedding.")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints (also on cancel and at the end).")
    seed: int = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _one_meaning(cls, value: object) -> object:
        if value in ("no", "fp16", "bf16"):  # the old spelling: accelerate's strings
            raise ValueError(f"mixed_precision is true or false, as in every recipe (true: bf16 autocast), not "
                             f"{value!r}")
        return value


def run(params: Params, ctx: JobContext) -> dict:
    import numpy as np

    from engine.models.sd import ClassConditionedSD, finetune
    from engine.recipes.common import end_of_step, real_split, resume, save_state

    model = ClassConditionedSD.from_pipeline_folder(params.pipeline, resolution=params.image_size,
                                                    num_tokens=params.num_tokens)
    images, labels, _ = real_split(ctx, "train", params.image_size)
    resumed = resume(ctx, unet=model.unet, class_embed=model.class_embed)  # the VAE stays frozen: not saved
    ctx.log(f"fine-tuning {params.pipeline} at {params.image_size}px on {len(images)} images")

    def on_step(step: int, loss: float) -> None:
        ctx.log_metric("train/loss", loss, step)
        ctx.progress(step, params.steps, f"loss {loss:.4f}")

    def checkpoint_or_stop(step: int, optimizer) -> None:
        end_of_step(ctx, step, params.steps, params.checkpoint_every, lambda at: save_state(
            ctx, at, unet=model.unet, class_embed=model.class_embed, optimizer=optimizer))

    finetune(model, np.asarray(images), labels, steps=params.steps, batch_size=params.batch_size, lr=params.lr,
             mixed_precision="bf16" if params.mixed_precision else "no", seed=params.seed, on_step=on_step,
             start_step=resumed["step"], optimizer_state=resumed.get("optimizer"), end_of_step=checkpoint_or_stop)
    out = ctx.artifact_dir / "ldm"
    if ctx.is_main:
        model.save_pretrained(out)
        ctx.save_artifact(out, "ldm_model")
    return {"steps": params.steps, "image_size": params.image_size}
