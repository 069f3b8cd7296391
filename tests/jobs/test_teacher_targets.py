"""Distillation targets: the teacher's 8-view mean, computed once per teacher weights × images × precision and
shared through the workspace cache by the KD arms of a run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from engine.models.classifier import DihedralTTA
from engine.recipes.fitting import teacher_targets


@pytest.fixture
def setup(tmp_path):
    """A linear teacher on 8px images, 5 images, and a job context whose log lines are kept in `logs`."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 7)).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    logs = []
    ctx = SimpleNamespace(workspace=tmp_path, log=logs.append, progress=lambda *args: None)
    return teacher, images, ctx, logs


def test_targets_are_the_teachers_eight_view_mean_and_are_reused_only_for_the_same_teacher(setup, tmp_path):
    teacher, images, ctx, logs = setup
    first = teacher_targets(teacher, images, Accelerator(cpu=True), ctx, batch=2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.allclose(first, DihedralTTA(teacher)(x), atol=1e-5)
    assert "reused" not in logs[-1]

    again = teacher_targets(teacher, images, Accelerator(cpu=True), ctx)
    assert "reused from the cache" in logs[-1] and torch.equal(again, first)

    with torch.no_grad():
        teacher[1].bias[0] += 1.0  # another teacher: its own targets, not the cached ones
    other = teacher_targets(teacher, images, Accelerator(cpu=True), ctx)
    assert "reused" not in logs[-1] and not torch.allclose(other, first)
    assert len(list((tmp_path / "cache" / "teacher_targets").glob("*.npy"))) == 2


def test_targets_in_the_teachers_bf16_are_kept_apart_from_fp32_ones(setup, tmp_path):
    teacher, images, ctx, logs = setup
    fp32 = teacher_targets(teacher, images, Accelerator(cpu=True), ctx)
    bf16 = teacher_targets(teacher, images, Accelerator(cpu=True), ctx, bf16=True)
    assert "(bf16)" in logs[-1] and "reused" not in logs[-1]  # not the fp32 targets from the cache
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, atol=0.1)  # rounded, not another answer
    assert len(list((tmp_path / "cache" / "teacher_targets").glob("*.npy"))) == 2
