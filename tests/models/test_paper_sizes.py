"""The paper profile's models at their real size: ViT-H/14 MAE teacher, ViT-B/16 and EfficientNet-B0 students
at 224px — built, and one step at batch 1 (ViT-H forward only: a backward pass needs more memory than CI has)."""

import pytest
import torch

from engine.models.classifier import build_classifier
from engine.models.mae import MaskedAutoencoder
from engine.profiles import load_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paper():
    return load_profile("paper")


def test_vit_h14_mae_teacher_forward(paper):
    cfg = paper.jobs["pretrain_mae"]
    torch.manual_seed(0)
    mae = MaskedAutoencoder(cfg["encoder"], cfg["image_size"], cfg["patch_size"], cfg["decoder_dim"],
                            cfg["decoder_depth"], cfg["decoder_heads"])
    assert sum(p.numel() for p in mae.encoder.parameters()) > 600e6  # ViT-H: ~630M
    with torch.no_grad():
        loss, pred, mask = mae(torch.rand(1, 3, 224, 224) * 2 - 1)
    assert torch.isfinite(loss) and pred.shape == (1, 256, 14 * 14 * 3) and mask.sum() == 192
    del mae


@pytest.mark.parametrize("index", [0, 1])
def test_students_train_one_step_at_224(paper, index):
    student = paper.students[index]
    model = build_classifier(student["arch"], 7, student["image_size"], **student.get("arch_kwargs", {}))
    size = student["image_size"]
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    before = next(model.parameters()).detach().clone()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(1, 3, size, size)), torch.tensor([3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, next(model.parameters()))
