"""Classifier training-step throughput on the CPU: the memory layout and precision the training jobs choose
(engine.recipes.fitting), each against plain fp32 NCHW measured in the same run. The jobs use channels_last
only where `prefers_channels_last` says so, and bf16 autocast where a profile sets mixed_precision.

    python bench/train_speed.py [--batch 64 --steps 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mae_speed import images_per_second  # noqa: E402
from engine.models.classifier import build_classifier, prefers_channels_last  # noqa: E402

# (arch, image size, timm kwargs): the tiny profile's students and teacher.
MODELS = [("efficientnet_b0", 64, {}), ("vit_tiny_patch16_224", 32, {"patch_size": 4, "depth": 6})]
VARIANTS = [("fp32 NCHW", False, False), ("fp32 channels_last", False, True),
            ("bf16 NCHW", True, False), ("bf16 channels_last", True, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    labels = torch.randint(0, 7, (args.batch,))
    print(f"{'model':<34}{'variant':<22}{'images/s':>10}{'ratio':>8}")
    for arch, size, kwargs in MODELS:
        baseline = None
        for name, bf16, channels_last in VARIANTS:
            torch.manual_seed(0)
            model = build_classifier(arch, 7, size, **kwargs)
            speed = images_per_second(model, args.batch, size, args.steps,
                                      lambda m, x: F.cross_entropy(m(x).float(), labels),
                                      bf16=bf16, channels_last=channels_last)
            baseline = baseline or speed
            print(f"{f'{arch} @{size}px':<34}{name:<22}{speed:>10.1f}{speed / baseline:>8.2f}")
        layout = "channels_last" if prefers_channels_last(arch) else "NCHW"
        print(f"{'':<34}the jobs train it {layout}")


if __name__ == "__main__":
    main()
