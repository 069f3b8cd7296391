"""pretrain_mae: masked-autoencoder pre-training of the teacher's ViT encoder on a dataset version's images —
its accepted synthetic images and, by default, its real train images too (the DerMAE recipe). Masking 75% per
sample, fixed sin-cos positions, a light decoder, normalised-pixel loss; reconstruction grids as artifacts.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

KIND = "pretrain_mae"


class Params(BaseModel, extra="forbid"):
    dataset: str | None = Field(None, description="Dataset version id; default: the newest.")
    real_fraction: float = Field(1.0, gt=0, le=1, description="Pre-train on this share of the real train lesions "
                                                               "per class, as the run's arms do.")
    encoder: str = Field("vit_tiny_patch16_224", description="timm ViT of any size (tiny/small/base/huge).")
    image_size: int = Field(32, ge=16, le=1024)
    patch_size: int = Field(4, ge=2, le=32)
    encoder_kwargs: dict = Field({}, description="e.g. depth, embed_dim overrides for small profiles.")
    decoder_dim: int = Field(128, ge=16)
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = True
    use_real: bool = Field(True, description="Pre-train on real train images as well as synthetic ones.")
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1.5e-4, gt=0, description="Base lr per 256 images (scaled by batch size, as in MAE).")
    warmup_steps: int = Field(200, ge=0)
    mixed_precision: bool = Field(False, description="bf16 autocast (where the device supports it).")
    grid_every: int = Field(1000, ge=1)
    seed: int = 0


def run(params: Params, ctx: JobContext) -> dict:
    import torch
    from accelerate import Accelerator

    from engine.data.augment import dihedral
    from engine.data.splits import real_subsample
    from engine.data.tensors import grid_png, load_array, to_model_input
    from engine.models.classifier import save_classifier
    from engine.models.mae import MaskedAutoencoder
    from engine.recipes.common import end_of_step, resume, save_state, warmup_cosine
    from engine.recipes.fitting import dataset_id

    # One code path for CPU, one GPU, or many under `accelerate launch` (DDP: gradients averaged).
    accelerator = Accelerator(mixed_precision="bf16" if params.mixed_precision else "no")
    torch.manual_seed(params.seed + accelerator.process_index)
    version = dataset_id(ctx, params.dataset)
    items = real_subsample([i.model_dump() for i in ctx.api.dataset_manifest(version, split="train")
                            if i.source == "synthetic" or params.use_real], params.real_fraction)
    if not items:
        raise RuntimeError(f"dataset {version} has no images to pre-train on (use_real={params.use_real})")
    x = to_model_input(load_array(ctx.workspace, items, params.image_size))
    mae = MaskedAutoencoder(params.encoder, params.image_size, params.patch_size, params.decoder_dim,
                            params.decoder_depth, params.decoder_heads, params.norm_pix_loss, **params.encoder_kwargs)
    lr = params.lr * params.batch_size / 256
    optimizer = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr, betas=(0.9, 0.95),
                                  weight_decay=0.05)
    ctx.log(f"MAE {params.encoder} ({sum(p.numel() for p in mae.encoder.parameters()) / 1e6:.1f}M encoder "
            f"parameters) on {len(x)} images of {version}")
    start = resume(ctx, mae=mae, optimizer=optimizer)["step"]
    generator = torch.Generator().manual_seed(params.seed + start + 1000 * accelerator.process_index)
    mae.to(accelerator.device)
    training_mae, optimizer = accelerator.prepare(mae, optimizer)
    fixed = x[:16]

    def grid(step: int) -> None:
        mae.eval()
        recon = mae.reconstruct(fixed.to(accelerator.device), params.mask_ratio, seed=0).cpu()
        pair = torch.cat([fixed, recon])
        path = grid_png(((pair + 1) * 127.5).round().to(torch.uint8), 2,
                        ctx.artifact_dir / f"reconstructions-step{step:07d}.png")
        ctx.save_artifact(path, "reconstruction_grid")
        mae.train()

    mae.train()
    for step in range(start + 1, params.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup_cosine(step - 1, params.steps, params.warmup_steps)
        idx = torch.randint(0, len(x), (params.batch_size,), generator=generator)
        with accelerator.autocast():
            loss, _, _ = training_mae(dihedral(x[idx], generator).to(accelerator.device), params.mask_ratio,
                                      generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        ctx.log_metric("train/loss", loss.item(), step)
        ctx.progress(step, params.steps, f"loss {loss.item():.4f}")
        if (step % params.grid_every == 0 or step == params.steps) and ctx.is_main:
            grid(step)
        end_of_step(ctx, step, params.steps, params.grid_every,
                    lambda at: save_state(ctx, at, mae=mae, optimizer=optimizer))

    if ctx.is_main:
        out = save_classifier(mae.encoder, ctx.artifact_dir / "encoder", {
            "arch": params.encoder, "image_size": params.image_size,
            "kwargs": {"patch_size": params.patch_size, **params.encoder_kwargs}, "classes": [], "dataset": version,
            "mae": {"mask_ratio": params.mask_ratio, "steps": params.steps, "use_real": params.use_real}})
        ctx.save_artifact(out, "mae_encoder")
    return {"steps": params.steps, "final_loss": loss.item() if params.steps > start else None, "images": len(x)}
