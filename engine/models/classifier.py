"""Classifiers: timm models built from scratch (students, teacher, the judge) and `SmallCNN`, the default
reference classifier (the selector). The reference and the judge are trained on real train images only; the
judge's penultimate features (`embed`) are the space of nearest-real distances, per-class Fréchet distance and
precision/recall (Inception weights cannot be downloaded here). Saved as a folder: `model.safetensors` +
`classifier.json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    """A saved reference classifier or judge (eval mode) and its record (arch, image_size, val recall per class …).
    Folders saved before references were timm-capable hold reference.pt + reference.json (a SmallCNN)."""
    if (path / "classifier.json").exists():
        return load_classifier(path)
    meta = json.loads((path / "reference.json").read_text())
    model = SmallCNN(len(meta["classes"]), meta["width"])
    model.load_state_dict(torch.load(path / "reference.pt", map_location="cpu", weights_only=True))
    return model.eval(), meta


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B, D): the features a classifier's last linear layer reads (SmallCNN's,
    or a timm model's pooled pre-logits)."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model.features(x)


def _last_layer(model: nn.Module) -> nn.Module:
    return model.get_classifier() if hasattr(model, "get_classifier") else model.head


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N, 3, H, W) -> (probabilities (N, C), features (N, D))."""
    probs, feats = [], []
    for i in range(0, len(images), batch):
        f = embed(model, images[i:i + batch])
        feats.append(f)
        probs.append(F.softmax(_last_layer(model)(f), dim=1))
    return torch.cat(probs), torch.cat(feats)


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) of a classifier on model inputs (N, 3, S, S) in [-1, 1], in batches."""
    return torch.cat([F.softmax(model(images[i:i + batch]), 1) for i in range(0, len(images), batch)]).numpy()


def build_classifier(arch: str, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """A timm model from scratch (pretrained=False: no downloads), or our SmallCNN ("small_cnn").
    ViTs take img_size/patch_size; CNNs take any input size."""
    if arch == "small_cnn":
        return SmallCNN(num_classes, **kwargs)
    import timm

    if arch.startswith(("vit_", "deit_")):
        kwargs = {"img_size": image_size, **kwargs}
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


class DihedralTTA(nn.Module):
    """Test-time augmentation: the mean of a classifier's probabilities over the 8 flips/90° rotations of each
    image. A lesion has no up or left, so every view is as valid as the original and their mean is a steadier
    answer, at 8x the compute: +0.012 test macro-F1 on average over the tiny profile's eight student arms
    (-0.009 to +0.034), and accuracy up in seven of them.
    (B, 3, S, S) -> (B, C) log mean probabilities; they act as logits (their softmax is the mean), so exported
    models and the demo need no change."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        turned = x.transpose(-1, -2)
        views = torch.cat([x, x.flip(-1), x.flip(-2), x.flip((-2, -1)),
                           turned, turned.flip(-1), turned.flip(-2), turned.flip((-2, -1))])
        probs = F.softmax(self.model(views).float(), dim=-1).unflatten(0, (8, -1)).mean(0)
        return probs.clamp_min(1e-12).log()


def prefers_channels_last(arch: str) -> bool:
    """Whether training runs faster with channels_last memory: CNNs do on CPU (EfficientNet-B0 at 64px 1.9x),
    ViTs, whose only convolution is the patch embedding, do not (0.96x; bench/train_speed.py)."""
    return not arch.startswith(("vit_", "deit_"))


def save_classifier(model: nn.Module, folder: Path, meta: dict) -> Path:
    """`model.safetensors` + `classifier.json` (arch, image_size, kwargs, classes, …): what evaluate, export and
    the demo load."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "classifier.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_classifier(folder: Path) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "classifier.json").read_text())
    model = build_classifier(meta["arch"], len(meta["classes"]), meta["image_size"], **meta.get("kwargs", {}))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), meta


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T) (Hinton et al., 2015).
    The T^2 keeps the soft term's gradients on the same scale whatever the temperature."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature**2 * soft
