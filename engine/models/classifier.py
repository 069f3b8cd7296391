"""Classifiers. `SmallCNN` is the reference classifier that judges generated lesions: trained on the real train
split only, it gives each synthetic image the probability of its intended class, and its penultimate features
are the feature space for nearest-real distances and per-class Fréchet distance (Inception weights cannot be
downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv stages (/8 overall), global average pooling, a linear head. ~1.2M params at width 32."""

    def __init__(self, num_classes: int = 7, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.MaxPool2d(2), _block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))
        self.feature_dim = 8 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.head(self.features(x))


def load_reference(path: Path) -> tuple[torch.nn.Module, dict]:
    """The saved classifier (eval mode) and its metadata (image_size, val recall per class …)."""
    meta = json.loads((path / "reference.json").read_text())
    model = SmallCNN(len(meta["classes"]), meta["width"])
    model.load_state_dict(torch.load(path / "reference.pt", map_location="cpu", weights_only=True))
    return model.eval(), meta


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N, 3, H, W) -> (probabilities (N, C), features (N, D))."""
    probs, feats = [], []
    for i in range(0, len(images), batch):
        f = model.features(images[i:i + batch])
        feats.append(f)
        probs.append(F.softmax(model.head(f), dim=1))
    return torch.cat(probs), torch.cat(feats)
