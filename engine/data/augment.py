"""Batch augmentations for dermoscopy, on tensors (B, C, H, W): a lesion has no up, down, left or right, so all
eight flips/90° rotations are valid; colour jitter mimics camera and lighting differences."""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random one of the 8 flips/rotations per sample."""
    out = x.clone()
    flip_h = torch.rand(len(x), generator=generator) < 0.5
    flip_v = torch.rand(len(x), generator=generator) < 0.5
    out[flip_h] = out[flip_h].flip(-1)
    out[flip_v] = out[flip_v].flip(-2)
    turn = torch.rand(len(x), generator=generator) < 0.5
    out[turn] = out[turn].transpose(-1, -2)
    return out


def colour_jitter(x: torch.Tensor, strength: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness, contrast and per-channel gain on images in [-1, 1]."""
    b = len(x)
    brightness = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
    gain = 1 + (torch.rand(b, x.shape[1], 1, 1, generator=generator) * 2 - 1) * strength / 2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness) * gain
