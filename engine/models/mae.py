"""Masked Autoencoder (He et al., 2022) around a timm Vision Transformer of any size.

    images (B, 3, H, W) --patchify--> (B, L, p*p*3)
    forward_encoder: patch embed + fixed 2-D sin-cos positions, keep a random 25% per sample, [CLS] + ViT blocks
    forward_decoder: light transformer over the visible tokens + mask tokens (its own sin-cos positions)
    forward_loss:    MSE on the masked patches only, optionally on per-patch normalised pixels

The encoder is a plain timm `VisionTransformer`, so after pre-training it becomes the teacher classifier by
loading its state dict into the same timm model with a head (`encoder_state_dict`).
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from timm.models.vision_transformer import Block
from torch import nn


def sincos_2d(embed_dim: int, grid: int, cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding: (1, grid*grid [+1], embed_dim); the [CLS] position is zeros."""
    coords = np.stack(np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)), 0)
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(coords[1]), one_axis(coords[0])], axis=1)  # (grid*grid, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


class MaskedAutoencoder(nn.Module):
    def __init__(self, encoder_name: str = "vit_tiny_patch16_224", img_size: int = 32, patch_size: int = 4,
                 decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True,
                 **encoder_kwargs):
        super().__init__()
        self.encoder = timm.create_model(encoder_name, pretrained=False, img_size=img_size, patch_size=patch_size,
                                         num_classes=0, **encoder_kwargs)
        enc = self.encoder
        if not getattr(enc, "has_class_token", True) or enc.num_prefix_tokens != 1:
            raise ValueError(f"{encoder_name}: the MAE needs a ViT with exactly one [CLS] token")
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.norm_pix_loss = norm_pix_loss
        dim = enc.embed_dim
        # Fixed, not learned, positions (as in the MAE paper); kept inside the timm model so the encoder's state
        # dict loads straight into a classifier of the same name.
        enc.pos_embed.data.copy_(sincos_2d(dim, self.grid, cls_token=True))
        enc.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(decoder_dim, self.grid, cls_token=True))
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, p*p*3)."""
        b, c, _, _ = images.shape
        p, g = self.patch_size, self.grid
        x = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*3) -> (B, 3, H, W)."""
        b = patches.shape[0]
        p, g = self.patch_size, self.grid
        x = patches.reshape(b, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, 3, g * p, g * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """Keep a random (1 - mask_ratio) of the L tokens per sample.
        x (B, L, D) -> kept (B, L_keep, D), mask (B, L) with 1 = masked, ids_restore (B, L)."""
        b, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        noise = torch.rand(b, length, generator=generator).to(x.device)  # a CPU generator serves any device
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """(B, 3, H, W) -> latent (B, 1 + L_keep, D), mask (B, L), ids_restore (B, L)."""
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + L_keep, D) -> predicted patches (B, L, p*p*3)."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        masks = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches only."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None):
        """-> (loss, predicted patches (B, L, p*p*3), mask (B, L))."""
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(images, pred, mask), pred, mask

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that load into `timm.create_model(encoder_name, img_size, patch_size, num_classes=N)`
        (strict=False: the new head stays freshly initialised)."""
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head")}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, H, W): visible patches as given, masked ones as predicted (pixel
        space, de-normalised with the visible image's own patch statistics when norm_pix_loss)."""
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, torch.Generator().manual_seed(seed))
        pred = self.forward_decoder(latent, ids_restore)
        target = self.patchify(images)
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        mixed = target * (1 - mask.unsqueeze(-1)) + pred * mask.unsqueeze(-1)
        return self.unpatchify(mixed).clamp(-1, 1)
