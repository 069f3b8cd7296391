"""MAE training-step throughput: ours (engine.models.mae, around a timm VisionTransformer) against a plain
reference written the way the original MAE code is (its own patch embedding, [CLS] token, fixed position
embedding and decoder over timm Blocks), same sizes, measured in the same run. Prints images/s and the ratio,
and ours again under bf16 autocast (the pretrain_mae job's mixed_precision).

    python bench/mae_speed.py [--image-size 32 --patch 4 --depth 6 --batch 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.models.mae import MaskedAutoencoder, sincos_2d  # noqa: E402


class ReferenceMAE(nn.Module):
    """As in facebookresearch/mae models_mae.py: encoder and decoder written out, no timm model object."""

    def __init__(self, img_size, patch, dim, depth, heads, dec_dim, dec_depth, dec_heads):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_2d(dim, int(n**0.5), True), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_2d(dec_dim, int(n**0.5), True), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, dec_heads, 4.0, qkv_bias=True) for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * 3)
        self.patch = patch

    def forward(self, imgs, mask_ratio=0.75):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        ids_shuffle = torch.rand(b, n).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, g = self.patch, imgs.shape[2] // self.patch
        target = imgs.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, -1)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def images_per_second(model: nn.Module, batch: int, size: int, steps: int, loss_of, *, bf16: bool = False,
                      channels_last: bool = False) -> float:
    """Training throughput of `model` (AdamW steps on random images); optionally under bf16 autocast and with
    channels_last memory, the two CPU speed-ups the training jobs use."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    x = (torch.rand(batch, 3, size, size) * 2 - 1).contiguous(memory_format=memory_format)
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = MaskedAutoencoder("vit_tiny_patch16_224", args.image_size, args.patch, 128, 2, 4, depth=args.depth)
    reference = ReferenceMAE(args.image_size, args.patch, 192, args.depth, 3, 128, 2, 4)
    ref = images_per_second(reference, args.batch, args.image_size, args.steps, lambda m, x: m(x))
    our = images_per_second(ours, args.batch, args.image_size, args.steps, lambda m, x: m(x)[0])
    our_bf16 = images_per_second(ours, args.batch, args.image_size, args.steps, lambda m, x: m(x)[0], bf16=True)
    print(f"MAE train step, ViT embed 192 depth {args.depth}, {args.image_size}px patch {args.patch}, "
          f"batch {args.batch}")
    print(f"{'':<38}{'images/s':>10}{'ratio':>8}")
    print(f"{'reference (as in the MAE repo)':<38}{ref:>10.1f}{1:>8.2f}")
    print(f"{'engine.models.mae (timm ViT inside)':<38}{our:>10.1f}{our / ref:>8.2f}")
    print(f"{'  + bf16 autocast (mixed_precision)':<38}{our_bf16:>10.1f}{our_bf16 / ref:>8.2f}")


if __name__ == "__main__":
    main()
