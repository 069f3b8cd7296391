"""Where the model looked: Grad-CAM for CNN students, attention rollout for ViT students, both on the PyTorch
classifier (the exported ONNX/TorchScript graphs expose neither gradients nor attention weights), and a colour
overlay of either on the picture the model saw."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Explainer = Callable[[torch.Tensor, int], np.ndarray]


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017): `layer`'s feature maps weighted by the spatial mean of the gradient of
    class `target`'s logit, ReLU'd. x (1, 3, S, S) -> (h, w) in [0, 1] at the layer's resolution."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: kept.append(output))
    try:
        with torch.enable_grad():
            logits = model(x)
            activation = kept[0]
            # autograd.grad, not backward(): no .grad left on the shared model's parameters between requests.
            (gradient,) = torch.autograd.grad(logits[0, target], activation)
    finally:
        handle.remove()
    weights = gradient[0].mean(dim=(1, 2), keepdim=True)
    return _unit_range(torch.relu((weights * activation[0].detach()).sum(0)))


def attention_rollout(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) for a timm VisionTransformer: per block, the head-averaged
    attention plus the identity for the residual path, rows renormalised, multiplied through the blocks; the
    class token's row over the patches is the map. x (1, 3, S, S) -> (grid_h, grid_w) in [0, 1].
    The blocks' attention must run unfused (see `use_unfused_attention`): the fused kernel never materialises
    the weights."""
    maps: list[torch.Tensor] = []
    handles = [block.attn.attn_drop.register_forward_hook(lambda _m, _i, output: maps.append(output.detach()))
               for block in model.blocks]  # attn_drop sees the softmaxed weights (identity in eval mode)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if len(maps) != len(model.blocks):
        raise RuntimeError("attention weights were not captured: call use_unfused_attention(model) first")
    tokens = maps[0].shape[-1]
    rollout = torch.eye(tokens)
    for attention in maps:
        mixed = 0.5 * attention[0].mean(0) + 0.5 * torch.eye(tokens)
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    prefix = model.num_prefix_tokens
    to_patches = rollout[0, prefix:] if prefix else rollout.mean(0)  # no class token: every token's view
    return _unit_range(to_patches.reshape(model.patch_embed.grid_size))


def use_unfused_attention(model: nn.Module) -> None:
    for block in model.blocks:
        block.attn.fused_attn = False


def explainer_for(model: nn.Module) -> tuple[str, Explainer] | None:
    """(method name, explain(x, target) -> map) for a timm ViT or a timm CNN we know the last feature layer of;
    None otherwise (the page then says the heatmap is unavailable)."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and hasattr(model, "patch_embed") and all(hasattr(b, "attn") for b in blocks):
        use_unfused_attention(model)
        return "attention rollout", lambda x, target: attention_rollout(model, x)
    # CNN feature maps in depth order: EfficientNet/MobileNet stages then conv_head + bn2, ResNet layer1-4.
    stages = [*getattr(model, "blocks", []), getattr(model, "bn2", None)] if hasattr(model, "bn2") else \
        [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    stages = [m for m in stages if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    if stages:
        return "Grad-CAM", lambda x, target: grad_cam(model, cam_layer(model, stages, x), x, target)
    return None


MIN_CAM_SIDE = 4


def cam_layer(model: nn.Module, stages: list[nn.Module], x: torch.Tensor) -> nn.Module:
    """The deepest feature map at least MIN_CAM_SIDE cells wide. Grad-CAM's usual last layer is 7x7 at 224 px,
    but at the tiny profile's 64 px it is 2x2 — four blotches, not a heatmap — so an earlier stage (4x4) is taken
    there; the deeper the layer, the more class-specific its map."""
    sides: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda m, _i, out: sides.__setitem__(m, out.shape[-1])) for m in stages]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return next((m for m in reversed(stages) if sides[m] >= MIN_CAM_SIDE), stages[-1])


def overlay(picture: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """uint8 (H, W, 3) picture with `heat` ((h, w) in [0, 1]) upsampled smoothly to it, in a jet colour map
    (blue = little, red = much)."""
    h, w = picture.shape[:2]
    up = F.interpolate(torch.as_tensor(heat, dtype=torch.float32)[None, None], size=(h, w), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    colour = np.stack([np.clip(1.5 - np.abs(4 * up - k), 0, 1) for k in (3, 2, 1)], axis=-1) * 255  # r, g, b
    return np.clip((1 - opacity) * picture + opacity * colour, 0, 255).astype(np.uint8)


def _unit_range(values: torch.Tensor) -> np.ndarray:
    values = values.float().numpy()
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
