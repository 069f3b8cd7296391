"""Class-conditional latent diffusion: a diffusers AutoencoderKL and a UNet2DModel with a class embedding.

    images (B, 3, H, W) in [-1, 1] --VAE encoder--> latents (B, C, H/f, W/f) * scaling_factor
    UNet(noisy latents, t, class) --> predicted noise;  class index `num_classes` is the null class
    sample: DPM-Solver++ with classifier-free guidance, conditional and null passes in one forward; each step's
            clean-latent estimate clipped to the per-channel range of the real latents (when the model has one)

Without a VAE (vae=None) the same model diffuses the pixels themselves: at DermaMNIST's 28-32 px that is cheap,
and it keeps the saturated colours a small VAE mutes (the tiny VAE decodes vasc's magenta as mauve). With a pixel
patch p, each p x p block of pixels is one position's 3p² channels (space-to-depth): 64 px images diffused at the
spatial cost of 16x16 latents, losslessly.

Saved as a folder of diffusers parts (vae/ unless pixel-space, unet/, scheduler/) plus dermae_ldm.json; loads
offline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import compute_snr


@dataclass(frozen=True)
class VAEConfig:
    channels: tuple[int, ...] = (32, 64)  # one downsampling per extra level: (32, 64) -> f=2
    latent_channels: int = 4
    layers_per_block: int = 1


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)


def build_vae(config: VAEConfig, image_size: int) -> AutoencoderKL:
    levels = len(config.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block,
        # ≥ 4 channels per group, as in Stable Diffusion's VAE (128 wide, 32 groups). With one channel per group
        # the norm before conv_out is an instance norm, which removes each image's per-channel colour offset and
        # scale (our reading of why vasc's magenta came back orange-brown). Per-class train L1 at widths (32, 64)
        # after 1,000 steps: 32 groups 0.034-0.044, 8 groups 0.029-0.039, 1 group 0.036-0.049.
        norm_num_groups=_groups(config.channels, min_per_group=4), sample_size=image_size,
    )


def _groups(channels: tuple[int, ...], min_per_group: int = 1) -> int:
    """The largest GroupNorm group count (≤ 32) that divides every block width with ≥ min_per_group channels
    in each group."""
    return next(g for g in (32, 16, 8, 4, 2, 1)
                if all(c % g == 0 and c // g >= min_per_group for c in channels) or g == 1)


def build_unet(config: UNetConfig, latent_size: int, latent_channels: int, num_classes: int) -> UNet2DModel:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels))
    return UNet2DModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=_groups(config.channels),
        attention_head_dim=32, num_class_embeds=num_classes + 1,  # + the null class for guidance
    )


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """Reconstruction (L1 + MSE) + KL to N(0, I). images (B, 3, H, W) in [-1, 1]."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    l1 = F.l1_loss(reconstruction, images)
    mse = F.mse_loss(reconstruction, images)
    kl = posterior.kl().mean() / images[0].numel()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def new_noise_scheduler() -> DDPMScheduler:
    # Cosine schedule: at 16x16 latents the linear one spends too many steps near pure noise.
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def dpm_solver(config) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ for a model trained with `config`. The spacing is explicit, for two reasons: from_config would
    take DDPM's default from a fresh config but DPM's own from a loaded one (the same model would sample
    differently before and after saving), and "leading" starts below t=999, where the cosine schedule's
    alpha_bar is ~0 and turning predicted noise into a clean estimate divides by it (the samples explode)."""
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", timestep_spacing="leading",
                                                   steps_offset=1)


@dataclass(frozen=True)
class LatentRange:
    """Per-channel bounds of the real (scaled) latents: guided sampling clips its clean estimates to them."""
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def of(cls, latents: torch.Tensor, quantile: float) -> LatentRange:
        """The [quantile, 1 - quantile] range of each channel of latents (N, C, h, w), over all images and
        positions."""
        per_channel = latents.detach().float().transpose(0, 1).reshape(latents.shape[1], -1).cpu().numpy()
        low, high = np.quantile(per_channel, [quantile, 1 - quantile], axis=1)
        return cls(tuple(low.tolist()), tuple(high.tolist()))

    def clip(self, latents: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        low = torch.tensor(self.low, dtype=latents.dtype, device=latents.device).view(shape)
        high = torch.tensor(self.high, dtype=latents.dtype, device=latents.device).view(shape)
        return latents.clamp(low, high)


class LatentDiffusion(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL | None, unet: UNet2DModel, noise_scheduler: DDPMScheduler,
                 num_classes: int, scaling_factor: float, latent_range: LatentRange | None = None,
                 pixel_patch: int = 1):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None  # None: pixel space
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.num_classes = num_classes
        self.null_class = num_classes
        self.scaling_factor = scaling_factor
        self.latent_range = latent_range  # None: sampling clips nothing
        self.pixel_patch = pixel_patch if vae is None else 1  # pixel space: p x p pixels -> one position

    @property
    def image_size(self) -> int:
        if self.vae is not None:
            return int(self.vae.config.sample_size)
        return int(self.unet.config.sample_size) * self.pixel_patch

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f); in pixel space the images themselves,
        each p x p block of pixels folded into channels (B, 3p², H/p, W/p): lossless, unlike a VAE."""
        if self.vae is None:
            return pixels_to_latents(images, self.pixel_patch) * self.scaling_factor
        return self.vae.encode(images).latent_dist.sample(generator) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> uint8 images (B, 3, H, W)."""
        latents = latents / self.scaling_factor
        images = F.pixel_shuffle(latents, self.pixel_patch) if self.vae is None else self.vae.decode(latents).sample
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def training_loss(self, latents: torch.Tensor, labels: torch.Tensor, cond_dropout: float = 0.1,
                      generator: torch.Generator | None = None, unet: torch.nn.Module | None = None,
                      min_snr_gamma: float | None = None) -> torch.Tensor:
        """Epsilon-prediction MSE on scaled latents; labels (B,) dropped to the null class w.p. cond_dropout.
        `unet`: the module to train through, e.g. this model's UNet as wrapped by accelerate (DDP).
        `min_snr_gamma`: weight each sample's loss by min(SNR, γ) / SNR (Hang et al. 2023, "Min-SNR"): the
        near-clean timesteps, whose noise is hard to predict but matters little, stop dominating the gradient."""
        b, device = latents.shape[0], latents.device
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
        drop = (torch.rand(b, generator=generator) < cond_dropout).to(device)
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        prediction = (unet or self.unet)(noisy, t, class_labels=labels).sample
        if min_snr_gamma is None:
            return F.mse_loss(prediction, noise)
        snr = compute_snr(self.noise_scheduler, t).float()
        weight = snr.clamp(max=min_snr_gamma) / snr
        per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, guidance_scale: float = 3.0, num_inference_steps: int = 25,
               generator: torch.Generator | None = None, seeds: list[int] | None = None) -> torch.Tensor:
        """uint8 images (B, 3, H, W) of classes `labels` (B,). One UNet forward per step covers both the
        conditional and the null-class pass (batch 2B). DPM-Solver++ is deterministic, so an image is fixed by
        its starting noise: with `seeds`, image i starts from noise seeded by seeds[i] and can be regenerated
        alone from (model, class, seed, guidance, steps).

        With a latent range, the clean latents each step implies are clipped to it — Imagen's static thresholding,
        with the real latents' per-channel range in place of pixels' [-1, 1] (its dynamic version rescales by a
        quantile, which suits pixels, not latents: on the tiny model it wrecked every sample). Strong guidance
        extrapolates past every real latent, and this VAE decodes such latents as colours no lesion has: vasc at
        guidance 10 came out teal; clipped at the 1% quantiles, purple (the best eighth by the generate job's ranking:
        FD to real vasc 16 instead of 24)."""
        scheduler = dpm_solver(self.noise_scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        cfg = self.unet.config
        shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if seeds is not None:
            if len(seeds) != len(labels):
                raise ValueError(f"one seed per image: got {len(seeds)} seeds for {len(labels)} labels")
            latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        else:
            latents = torch.randn((len(labels), *shape), generator=generator)
        device = next(self.unet.parameters()).device
        latents, labels = latents.to(device), labels.to(device)
        both = torch.cat([labels, torch.full_like(labels, self.null_class)])
        for t in scheduler.timesteps:
            eps = self.unet(torch.cat([latents, latents]), t, class_labels=both).sample
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
            if self.latent_range is not None:
                eps = self._clip_clean_estimate(latents, eps, scheduler.alphas_cumprod[t])
            latents = scheduler.step(eps, t, latents).prev_sample
        return self.decode(latents)

    def _clip_clean_estimate(self, latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The noise that, from latents at a step with cumulative alpha alpha_bar, implies the clipped clean
        estimate: x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), clipped, solved back for eps."""
        alpha, sigma = alpha_bar.sqrt().to(latents), (1 - alpha_bar).sqrt().to(latents)
        clean = self.latent_range.clip((latents - sigma * eps) / alpha)
        return (latents - alpha * clean) / sigma

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")
        self.unet.save_pretrained(path / "unet")
        self.noise_scheduler.save_pretrained(path / "scheduler")
        (path / "dermae_ldm.json").write_text(json.dumps(
            {"num_classes": self.num_classes, "scaling_factor": self.scaling_factor, "pixel_patch": self.pixel_patch,
             "latent_range": asdict(self.latent_range) if self.latent_range is not None else None}))

    @classmethod
    def from_pretrained(cls, path: Path) -> LatentDiffusion:
        path = Path(path)
        meta_path = path / "dermae_ldm.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path} is not a saved latent diffusion model (no dermae_ldm.json)")
        meta = json.loads(meta_path.read_text())
        pixel_space = not (path / "vae").exists()
        vae = None if pixel_space else AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
        unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        bounds = meta.get("latent_range")  # absent from models saved before sampling clipped
        latent_range = LatentRange(tuple(bounds["low"]), tuple(bounds["high"])) if bounds else None
        return cls(vae, unet, scheduler, meta["num_classes"], meta["scaling_factor"], latent_range,
                   meta.get("pixel_patch", 1))


def pixels_to_latents(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3 patch², H/patch, W/patch): each patch x patch block of pixels as one position's
    channels (space-to-depth), so a UNet diffuses the pixels at a latent model's spatial cost."""
    return F.pixel_unshuffle(images, patch)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the unscaled latents, so the diffusion sees unit variance (as Stable Diffusion's 0.18215)."""
    return float(1.0 / latents.float().std().clamp_min(1e-6))


def load_generator(path: Path) -> torch.nn.Module:
    """A saved generator folder: our latent diffusion model, or a fine-tuned SD-style model (the paper path).
    Both sample with `.sample(labels, guidance_scale, num_inference_steps, seeds=…)`."""
    path = Path(path)
    if (path / "dermae_sd.json").exists():
        from engine.models.sd import ClassConditionedSD

        return ClassConditionedSD.from_pretrained(path)
    return LatentDiffusion.from_pretrained(path)
