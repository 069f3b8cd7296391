"""Test-time augmentation over the 8 flips/rotations (DihedralTTA), which evaluate measures and export serves."""

import pytest
import torch

from engine.models.classifier import DihedralTTA


def views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/90° rotations of a batch, written out one by one."""
    rotations = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A linear model on raw pixels: it sees every flip and turn as a different image."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7)).eval()


def test_its_softmax_is_each_images_mean_probability_over_the_eight_views(model):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = torch.stack([model(v).softmax(1) for v in views(x)]).mean(0)
        got = DihedralTTA(model)(x).softmax(1)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():  # each image's answer is its own, whatever else is in the batch
        alone = torch.cat([DihedralTTA(model)(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(DihedralTTA(model)(x), alone, atol=1e-5)


def test_a_turned_or_mirrored_lesion_gets_the_same_answer(model):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        tta = DihedralTTA(model)
        answers = [tta(v) for v in views(x)]
        plain = [model(v) for v in views(x)]
    assert all(torch.allclose(a, answers[0], atol=1e-5) for a in answers)
    assert not all(torch.allclose(p, plain[0], atol=1e-3) for p in plain)  # the plain model is not invariant
