"""The judge's report on one class: a generator that samples the real distribution meets the bars; one that
collapses onto a few images fails the recall bar and is told apart by the two-sample test."""

import numpy as np

from engine.recipes.score import class_fidelity


def gauss(n: int, seed: int, mean: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return mean + scale * np.random.default_rng(seed).standard_normal((n, 8))


def report(syn: np.ndarray, intended_rate: float = 0.9, ceiling: float = 0.9) -> dict:
    judged = np.arange(len(syn)) < intended_rate * len(syn)
    return class_fidelity(syn, judged, np.zeros(len(syn), bool), ceiling, real_train=gauss(300, 1),
                          real_val=gauss(40, 2), real_held_out=gauss(40, 3))


def test_a_faithful_generator_meets_the_bars_and_cannot_be_told_apart():
    row = report(gauss(400, 4))
    assert row["bars"] == {"intended_rate": True, "precision": True, "recall": True}
    assert row["fd"] < 2 * row["fd_floor"] and row["fd_at_n"] == 40
    assert row["c2st"]["ci95"][0] < 0.5 and row["c2st"]["p_value"] > 0.05  # not told apart
    assert row["real_vs_real"]["n"] == 40 and abs(row["recall"] - row["real_vs_real"]["recall"]) < 0.15


def test_a_collapsed_generator_fails_recall_and_is_told_apart():
    row = report(gauss(400, 5, scale=0.1))  # every image near the class mean
    assert not row["bars"]["recall"] and row["fd"] > 3 * row["fd_floor"]
    assert row["c2st"]["ci95"][0] > 0.5


def test_the_intended_rate_is_held_to_0_8_of_the_judges_ceiling():
    assert report(gauss(400, 6), intended_rate=0.7, ceiling=0.85)["bars"]["intended_rate"]  # 0.70 >= 0.68
    assert not report(gauss(400, 6), intended_rate=0.6, ceiling=0.85)["bars"]["intended_rate"]
