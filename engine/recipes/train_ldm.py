"""train_ldm: the class-conditional denoiser on the VAE's latents (diffusers UNet2DModel + class embedding), or
with `pixel_space` on the images themselves, without a VAE (no VAE job upstream).

The train split is encoded once; each step draws a class-balanced batch (rare classes are what we generate, so
they must be learned as well as nv), flips/rotates the latents, drops ~10% of labels to the null class for
classifier-free guidance, and takes an epsilon-prediction step on the cosine DDPM schedule. EMA weights are what
gets saved and sampled. A per-class sample grid (a row per class) is logged as training goes.

With `preview_at`, the job also stores a first few synthetic images per class at that step (EMA weights, pending
review, provenance pointing at the preview model saved beside them): on a first run, reviewers have lesions to look
at long before training ends. They are scored by a score job that names this job.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext
from engine.schemas import PREVIEW_FOLDER

KIND = "train_ldm"


class Params(BaseModel, extra="forbid"):
    vae: str | None = Field(None, description="VAE folder; default: the upstream train_vae job's.")
    pixel_space: bool = Field(False, description="Diffuse the pixels (no VAE): cheap at 28-32 px, and it keeps "
                                                 "saturated colours a small VAE loses (vasc's magenta).")
    image_size: int = Field(32, ge=8, le=256, description="Pixel space only (latent space: the VAE's size).")
    pixel_patch: int = Field(1, ge=1, le=16, description="Pixel space only: each p x p block of pixels is one "
                                                         "position's 3p² channels, so 64 px images diffuse at "
                                                         "the spatial cost of 16x16 latents (p = 4).")
    channels: list[int] = Field([64, 128, 128], min_length=1, max_length=5)
    attention: list[bool] = Field([False, True, True], description="Self-attention per level.")
    layers_per_block: int = Field(2, ge=1, le=4)
    steps: int = Field(8000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(200, ge=0)
    cond_dropout: float = Field(0.1, ge=0, le=0.5, description="Share of labels dropped to the null class.")
    min_snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR-γ loss weighting (None: plain MSE); "
                                                                 "faster convergence at the same steps.")
    class_balance: float = Field(0.75, ge=0, le=1, description="Sampling ∝ n^-x: 0 natural, 1 uniform classes.")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    mixed_precision: bool = Field(False, description="bf16 autocast (where the device supports it).")
    grid_every: int = Field(2000, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    grid_guidance: float = 3.0
    clip_quantile: float | None = Field(0.01, gt=0, lt=0.5, description="Sampling clips each step's clean-latent "
                                        "estimate to this quantile range of the train latents, per channel; "
                                        "None: no clipping.")
    preview_at: int | None = Field(None, ge=1, description="At this step, store preview_per_class images of each "
                                                           "class short of the largest one, pending review.")
    preview_per_class: int = Field(8, ge=1, le=256)
    seed: int = 0


def run(params: Params, ctx: JobContext) -> dict:
    import torch
    from accelerate import Accelerator
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel

    from engine.data.augment import dihedral
    from engine.data.tensors import grid_png, to_model_input
    from engine.labels import CLASSES
    from engine.models.ldm import (
        LatentDiffusion,
        LatentRange,
        UNetConfig,
        build_unet,
        new_noise_scheduler,
        pixels_to_latents,
    )
    from engine.recipes.common import artifact_path, class_weights, end_of_step, real_split, resume, save_state

    if len(params.attention) != len(params.channels):
        raise ValueError("attention needs one entry per level of channels")
    # One code path for CPU, one GPU, or many under `accelerate launch` (gradients averaged across processes).
    accelerator = Accelerator(mixed_precision="bf16" if params.mixed_precision else "no")
    dev = accelerator.device
    torch.manual_seed(params.seed + accelerator.process_index)
    if params.pixel_space:
        vae, size, scaling, source = None, params.image_size, 1.0, "pixels"
    else:
        vae_dir = artifact_path(ctx, "vae_model", params.vae, "train_vae")
        vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(dev).eval()
        size, scaling, source = int(vae.config.sample_size), float(vae.config.scaling_factor), str(vae_dir)
    if params.pixel_space and size % params.pixel_patch:
        raise ValueError(f"pixel_patch {params.pixel_patch} does not divide image_size {size}")
    images, labels, _ = real_split(ctx, "train", size)
    x = to_model_input(images)
    if vae is None:
        latents = pixels_to_latents(x, params.pixel_patch)
    else:
        with torch.no_grad():
            latents = torch.cat([vae.encode(x[i:i + 256].to(dev)).latent_dist.mean for i in range(0, len(x), 256)])
        latents = (latents * scaling).cpu()
    ctx.log(f"{len(latents)} train latents {tuple(latents.shape[1:])} from {source}")

    unet = build_unet(UNetConfig(tuple(params.channels), params.layers_per_block, tuple(params.attention)),
                      latents.shape[-1], latents.shape[1], len(CLASSES)).to(dev)
    latent_range = LatentRange.of(latents, params.clip_quantile) if params.clip_quantile else None
    model = LatentDiffusion(vae, unet, new_noise_scheduler(), len(CLASSES), scaling, latent_range,
                            params.pixel_patch)
    ema = EMAModel(unet.parameters(), decay=params.ema_decay, use_ema_warmup=True, power=3 / 4)
    optimizer = torch.optim.AdamW(unet.parameters(), params.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, params.warmup_steps)))
    ctx.log(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters on {dev}")

    start = resume(ctx, dev, unet=unet, ema=ema, optimizer=optimizer, warmup=warmup)["step"]

    weights = class_weights(labels, params.class_balance, len(CLASSES))
    y = torch.as_tensor(labels)
    training_unet, optimizer = accelerator.prepare(unet, optimizer)
    # each process draws its own batches
    generator = torch.Generator().manual_seed(params.seed + start + 1000 * accelerator.process_index)

    def sample_grid(step: int) -> None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        rows = torch.arange(len(CLASSES)).repeat_interleave(8).to(dev)
        grid = model.sample(rows, params.grid_guidance, 20, torch.Generator().manual_seed(0))
        ema.restore(unet.parameters())
        path = grid_png(grid.cpu(), len(CLASSES), ctx.artifact_dir / f"samples-step{step:07d}.png")
        ctx.save_artifact(path, "sample_grid")

    def preview(step: int) -> None:
        """Images for review from the weights of this step, saved with the model that made them (provenance)."""
        from engine.data.planner import TargetRule, plan_quotas
        from engine.data.tensors import to_png_bytes

        stats = ctx.api.stats()
        quotas = plan_quotas(stats.real["train"], stats.synthetic["accepted"], TargetRule.majority)
        short = [k for k, c in enumerate(CLASSES) if quotas[c] > 0]
        folder = ctx.artifact_dir / f"{PREVIEW_FOLDER}{step:07d}"
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        model.save_pretrained(folder)
        seeds = [ctx.job_id * 100_000_000 + k * 10_000_000 + i for k in short for i in range(params.preview_per_class)]
        labels = torch.tensor(short).repeat_interleave(params.preview_per_class)
        images = model.sample(labels.to(dev), params.grid_guidance, 20, seeds=seeds)
        ema.restore(unet.parameters())
        ctx.save_artifact(folder, "ldm_preview")
        added = ctx.api.add_synthetic(ctx.job_id, ctx.attempt, [
            {"png": to_png_bytes(image), "label": CLASSES[int(label)], "seed": seed, "guidance": params.grid_guidance,
             "steps": 20, "checkpoint": str(folder)} for image, label, seed in zip(images, labels, seeds, strict=True)])
        ctx.log(f"preview at step {step}: {len(added)} images for review ({', '.join(CLASSES[k] for k in short)})")

    unet.train()
    for step in range(start + 1, params.steps + 1):
        idx = torch.multinomial(weights, params.batch_size, replacement=True, generator=generator)
        # flips/turns of a VAE's latents are (nearly) the latents of the turned image; folded pixels must be
        # turned as pixels, or each position's channels would keep the unturned block
        z = (pixels_to_latents(dihedral(x[idx], generator), params.pixel_patch) if vae is None and
             params.pixel_patch > 1 else dihedral(latents[idx], generator)).to(dev)
        with accelerator.autocast():  # the wrapped UNet (DDP) trains; the plain one samples and is saved
            loss = model.training_loss(z, y[idx].to(dev), params.cond_dropout, unet=training_unet,
                                       min_snr_gamma=params.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        ema.step(unet.parameters())
        ctx.log_metric("train/loss", loss.item(), step)
        ctx.progress(step, params.steps, f"loss {loss.item():.4f}")
        if step % params.grid_every == 0 and ctx.is_main:
            unet.eval()
            sample_grid(step)
            unet.train()
        if step == params.preview_at and ctx.is_main:
            unet.eval()
            preview(step)
            unet.train()
        end_of_step(ctx, step, params.steps, params.checkpoint_every,
                    lambda at: save_state(ctx, at, unet=unet, ema=ema, optimizer=optimizer, warmup=warmup))

    unet.eval()
    ema.copy_to(unet.parameters())
    if ctx.is_main:
        if params.steps % params.grid_every:
            sample_grid(params.steps)
        out = ctx.artifact_dir / "ldm"
        model.save_pretrained(out)
        ctx.save_artifact(out, "ldm_model")
    return {"steps": params.steps, "final_loss": loss.item() if params.steps > start else None}
