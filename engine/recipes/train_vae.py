"""train_vae: the autoencoder of the latent diffusion model — a diffusers AutoencoderKL trained from scratch on
the real train split (L1 + MSE reconstruction + KL), or a local pretrained VAE folder taken as it is.

The latent scaling factor (1 / std of the train latents) is measured at the end and stored in the VAE's config,
so the diffusion model sees unit-variance latents. Reconstruction error on val and a grid of reconstructions
(top: real, bottom: reconstructed) are logged.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

KIND = "train_vae"


class Params(BaseModel, extra="forbid"):
    image_size: int = Field(32, ge=16, le=1024)
    channels: list[int] = Field([32, 64], min_length=1, max_length=5,
                                description="Block widths; each level after the first halves the resolution.")
    latent_channels: int = Field(4, ge=1, le=16)
    steps: int = Field(3000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    class_balance: float = Field(0.5, ge=0, le=1, description="Sampling ∝ n^-x: rare classes' colours (vasc's "
                                                               "saturated reds) are otherwise reconstructed dull.")
    mixed_precision: bool = Field(False, description="bf16 autocast (where the device supports it): 1.4-2x "
                                                     "faster steps at 64 px on a CPU with bf16.")
    pretrained: str | None = Field(None, description="A local diffusers AutoencoderKL folder to use instead.")
    checkpoint_every: int = Field(500, ge=1)
    seed: int = 0


def run(params: Params, ctx: JobContext) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from engine.data.augment import dihedral
    from engine.data.tensors import grid_png, to_model_input
    from engine.labels import CLASSES
    from engine.models.ldm import VAEConfig, build_vae, latent_scaling_factor, vae_loss
    from engine.recipes.common import class_weights, end_of_step, real_split, resume, save_state

    torch.manual_seed(params.seed)
    train_images, train_labels, _ = real_split(ctx, "train", params.image_size)
    x_train = to_model_input(train_images)
    weights = class_weights(train_labels, params.class_balance, len(CLASSES))
    val_images, val_labels, _ = real_split(ctx, "val", params.image_size)
    x_val = to_model_input(val_images)

    if params.pretrained:
        vae = AutoencoderKL.from_pretrained(params.pretrained, local_files_only=True)
        ctx.log(f"using the pretrained VAE at {params.pretrained}; no training")
        steps = 0
    else:
        vae = build_vae(VAEConfig(tuple(params.channels), params.latent_channels), params.image_size)
        steps = params.steps
    optimizer = torch.optim.AdamW(vae.parameters(), params.lr)
    start = resume(ctx, vae=vae, optimizer=optimizer)["step"] if steps else 0
    generator = torch.Generator().manual_seed(params.seed + start)

    vae.train()
    for step in range(start + 1, steps + 1):
        idx = torch.multinomial(weights, params.batch_size, replacement=True, generator=generator)
        with torch.autocast("cpu", torch.bfloat16, enabled=params.mixed_precision):
            loss, parts = vae_loss(vae, dihedral(x_train[idx], generator), params.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in parts.items():
            ctx.log_metric(f"train/{name}", value, step)
        ctx.progress(step, steps, f"L1 {parts['l1']:.4f}")
        end_of_step(ctx, step, steps, params.checkpoint_every, lambda at: save_state(ctx, at, vae=vae,
                                                                                     optimizer=optimizer))

    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(x_train[i:i + 256]).latent_dist.mean for i in range(0, len(x_train), 256)])
        recon = torch.cat([vae.decode(vae.encode(x_val[i:i + 256]).latent_dist.mean).sample
                           for i in range(0, len(x_val), 256)])
    # Per image, then per class: a rare class's colours are what a small VAE loses first, and the mean hides it.
    per_image = (recon - x_val).abs().mean(dim=(1, 2, 3))
    val_l1 = per_image.mean().item()
    scaling = latent_scaling_factor(latents)
    vae.register_to_config(scaling_factor=scaling)
    ctx.log_metric("val/l1", val_l1, steps)
    labels = torch.as_tensor(val_labels)
    val_l1_per_class = {c: round(per_image[labels == k].mean().item(), 4)
                        for k, c in enumerate(CLASSES) if (labels == k).any()}
    for name, value in val_l1_per_class.items():
        ctx.log_metric(f"val/l1/{name}", value, steps)
    ctx.log(f"val L1 {val_l1:.4f} (per class {val_l1_per_class}); latents {tuple(latents.shape[1:])}, "
            f"scaling factor {scaling:.4f}")

    out = ctx.artifact_dir / "vae"
    vae.save_pretrained(out)
    ctx.save_artifact(out, "vae_model")
    pair = torch.cat([x_val[:16], recon[:16].clamp(-1, 1)])
    grid = grid_png(((pair + 1) * 127.5).round().to(torch.uint8), 2, ctx.artifact_dir / "reconstructions.png")
    ctx.save_artifact(grid, "reconstructions")
    return {"val_l1": val_l1, "val_l1_per_class": val_l1_per_class, "scaling_factor": scaling,
            "latent_shape": list(latents.shape[1:])}
