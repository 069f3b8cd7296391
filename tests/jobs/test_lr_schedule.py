"""The warm-up + cosine learning-rate factor that the training recipes share."""

from itertools import pairwise

import pytest

from engine.recipes.common import warmup_cosine


def test_warms_up_linearly_then_decays_to_zero():
    total, warmup = 100, 10
    factors = [warmup_cosine(step, total, warmup) for step in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    after = factors[warmup:]
    assert all(a > b for a, b in pairwise(after))
    assert after[-1] < 0.01
    assert warmup_cosine(total + 5, total, warmup) == pytest.approx(0.0)  # resumed past the end: stays at 0


def test_without_warm_up_starts_at_the_peak():
    assert warmup_cosine(0, 50, 0) == pytest.approx(1.0)
