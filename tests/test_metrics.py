from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from engine import metrics


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _gauss(rng: np.random.Generator, n: int, d: int, mean: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return (mean + scale * rng.standard_normal((n, d))).astype(np.float32)


# --- Fréchet distance ---------------------------------------------------------------------------------------------


def test_fd_zero_for_same_sample_and_small_for_same_gaussian(rng: np.random.Generator) -> None:
    a = _gauss(rng, 2000, 8)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, _gauss(rng, 2000, 8)) < 0.1


def test_fd_grows_with_mean_shift_as_squared_distance(rng: np.random.Generator) -> None:
    a, b = _gauss(rng, 2000, 8), _gauss(rng, 2000, 8)
    fds = [metrics.frechet_distance(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds) and fds[0] < fds[1]
    assert fds[3] == pytest.approx(8 * 2.0**2, rel=0.05)  # ||mu_a - mu_b||^2 dominates


def test_fd_matches_independent_formula(rng: np.random.Generator) -> None:
    a, b = _gauss(rng, 300, 5), _gauss(rng, 400, 5, mean=0.3, scale=1.7).astype(np.float64)
    a = a.astype(np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(cov_a cov_b) = sum of square roots of the (real, non-negative) eigenvalues of the product
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fd_works_with_fewer_rows_than_dims(rng: np.random.Generator) -> None:
    a, b = _gauss(rng, 10, 64), _gauss(rng, 12, 64)
    fd = metrics.frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)
    assert metrics.frechet_distance(a, b + 3.0) > fd


@pytest.mark.parametrize("rows_a, rows_b", [(1, 5), (5, 1), (0, 5)])
def test_fd_rejects_too_few_rows(rng: np.random.Generator, rows_a: int, rows_b: int) -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.frechet_distance(_gauss(rng, rows_a, 4), _gauss(rng, rows_b, 4))


def test_fd_rejects_mismatched_widths(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="feature widths"):
        metrics.frechet_distance(_gauss(rng, 5, 4), _gauss(rng, 5, 3))


# --- precision / recall, density / coverage -----------------------------------------------------------------------


def test_precision_recall_identical_and_far_apart(rng: np.random.Generator) -> None:
    real = _gauss(rng, 300, 8)
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(real, _gauss(rng, 300, 8, mean=50.0)) == (0.0, 0.0)


def test_precision_recall_sees_mode_collapse(rng: np.random.Generator) -> None:
    real = _gauss(rng, 500, 4)
    narrow = _gauss(rng, 500, 4, scale=0.2)  # realistic but not diverse
    precision, recall = metrics.precision_recall(real, narrow)
    assert precision > 0.9 and recall < 0.5


def test_precision_recall_needs_more_rows_than_k(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="k=3"):
        metrics.precision_recall(_gauss(rng, 3, 4), _gauss(rng, 10, 4))


def test_density_coverage(rng: np.random.Generator) -> None:
    real = _gauss(rng, 400, 4)
    density, coverage = metrics.density_coverage(real, real.copy())
    assert density == pytest.approx(1.0, abs=0.05) and coverage == 1.0  # closed balls would give (k + 1) / k = 1.2
    assert metrics.density_coverage(real, _gauss(rng, 400, 4, mean=50.0)) == (0.0, 0.0)
    density, coverage = metrics.density_coverage(real, _gauss(rng, 400, 4))
    assert 0.6 < density < 1.5 and coverage > 0.8
    density, coverage = metrics.density_coverage(real, _gauss(rng, 400, 4, scale=0.2))
    assert density > 1.1 and coverage < 0.3  # piled into the densest real balls, most real balls left empty


# --- nearest neighbours, near copies, near duplicates ----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [4096, 7, 1])
def test_nearest_matches_brute_force(rng: np.random.Generator, chunk: int) -> None:
    queries, refs = _gauss(rng, 50, 6), _gauss(rng, 37, 6)
    full = cdist(queries.astype(np.float64), refs.astype(np.float64))
    dist, index = metrics.nearest(queries, refs, chunk=chunk)
    assert dist.shape == index.shape == (50,)
    np.testing.assert_array_equal(index, full.argmin(axis=1))
    np.testing.assert_allclose(dist, full.min(axis=1), rtol=1e-9, atol=1e-9)


def test_nearest_finds_exact_copies(rng: np.random.Generator) -> None:
    refs = _gauss(rng, 20, 6)
    dist, index = metrics.nearest(refs[[4, 17, 4]], refs, chunk=2)
    np.testing.assert_array_equal(index, [4, 17, 4])
    assert dist.max() < 1e-5


def _line(xs: list[float]) -> np.ndarray:
    return np.array([[x, 0.0] for x in xs], dtype=np.float32)


def test_near_copy_threshold_excludes_self_and_same_group() -> None:
    feats = _line([0.0, 10.0, 20.0, 30.0, 0.01])  # rows 0 and 4: two photos of one lesion
    # Without groups the same-lesion pair sets the minimum; self-distance 0 never counts.
    assert metrics.near_copy_threshold(feats, quantile=0.0) == pytest.approx(0.01, abs=1e-4)
    grouped = metrics.near_copy_threshold(feats, groups=["a", "b", "c", "d", "a"], quantile=0.0)
    assert grouped == pytest.approx(9.99, abs=1e-4)
    # None means "no group": two ungrouped rows still count as distinct lesions.
    assert metrics.near_copy_threshold(feats, groups=[None] * 5, quantile=0.0) == pytest.approx(0.01, abs=1e-4)
    assert metrics.near_copy_threshold(feats, groups=["a", "b", "c", "d", "a"], quantile=1.0) == pytest.approx(10.0)


def test_near_copy_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.near_copy_threshold(_line([0.0]))
    with pytest.raises(ValueError, match="groups"):
        metrics.near_copy_threshold(_line([0.0, 1.0]), groups=["a"])
    with pytest.raises(ValueError, match="different groups"):
        metrics.near_copy_threshold(_line([0.0, 1.0]), groups=["a", "a"])


def test_near_duplicate_groups_transitive_and_ordered() -> None:
    # 0.0-0.5-1.0 is a chain (0.0 and 1.0 are 1.0 apart, above threshold) -> one group; 5.0 alone; 9.0/9.1 a pair.
    feats = _line([9.0, 0.0, 5.0, 0.5, 9.1, 1.0])
    groups = metrics.near_duplicate_groups(feats, threshold=0.6)
    assert groups.dtype.kind == "i"
    np.testing.assert_array_equal(groups, [0, 1, -1, 1, 0, 1])
    np.testing.assert_array_equal(metrics.near_duplicate_groups(feats, threshold=0.05), [-1] * 6)


# --- sharpness -----------------------------------------------------------------------------------------------------


def test_sharpness_drops_when_blurred(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    padded = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy : dy + 32, dx : dx + 32] for dy in range(3) for dx in range(3)) / 9.0
    flat = np.full((32, 32, 3), 128, dtype=np.uint8)
    scores = metrics.sharpness(np.stack([img, blurred.round().astype(np.uint8), flat]))
    assert scores.shape == (3,)
    assert scores[0] > 5 * scores[1] > 0
    assert scores[2] == 0.0


def test_sharpness_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="images must be"):
        metrics.sharpness(np.zeros((2, 8, 8, 4), dtype=np.uint8))


# --- classification ----------------------------------------------------------------------------------------------
def test_classification_report_on_a_known_case():
    from engine.metrics import classification_report

    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]])
    report = classification_report(probs, labels, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["c"]["f1"] == 0 and report["per_class"]["c"]["support"] == 1
    assert report["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.8, 0.0]))
    assert 0.5 < report["auc_ovr"] <= 1
    assert sum(b["count"] for b in report["reliability"]) == 6


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    from engine.metrics import expected_calibration_error

    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    ece, bins = expected_calibration_error(probs, labels)
    assert ece == pytest.approx(0) and bins[0]["accuracy"] == 0.5
    overconfident = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(overconfident, labels)[0] == pytest.approx(0.5)


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as reproduced on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert metrics.fleiss_kappa(ratings, range(5)) == pytest.approx(0.210, abs=5e-4)


def test_cohen_kappa_is_one_when_two_raters_agree_and_none_when_undefined():
    assert metrics.cohen_kappa(["accept", "reject", "accept"], ["accept", "reject", "accept"]) == 1.0
    assert metrics.cohen_kappa(["accept", "accept"], ["accept", "accept"]) is None  # no variation at all
    assert metrics.cohen_kappa(["accept", "reject"], ["reject", "accept"]) == -1.0


def test_review_agreement_uses_cohen_for_two_reviewers_and_fleiss_for_more():
    decisions = [("a", "df", "ann", "accept"), ("a", "df", "bob", "accept"), ("b", "df", "ann", "reject"),
                 ("b", "df", "bob", "reject"), ("c", "df", "ann", "accept"),  # only one reviewer: not counted
                 ("x", "vasc", "ann", "accept"), ("x", "vasc", "bob", "reject"), ("x", "vasc", "cy", "accept"),
                 ("y", "vasc", "ann", "reject"), ("y", "vasc", "bob", "reject"), ("y", "vasc", "cy", "reject")]
    rows = metrics.review_agreement(decisions, ["df", "vasc", "nv"], ["accept", "reject", "unsure"], "overall")
    assert list(rows) == ["overall", "df", "vasc", "nv"] and rows["overall"]["images"] == 4
    df = rows["df"]
    assert (df["reviewers"], df["images"], df["kappa"], df["method"]) == (["ann", "bob"], 2, 1.0, "cohen")
    assert df["percent_agreement"] == 1.0 and not df["enough"]  # 2 images: the studio says "not enough images"
    assert rows["vasc"]["method"] == "fleiss" and rows["vasc"]["images"] == 2
    assert -1 <= rows["vasc"]["kappa"] < 1
    assert rows["vasc"]["percent_agreement"] == pytest.approx((1 / 3 + 1) / 2)  # x: 1 of 3 pairs agree, y: all
    nv = rows["nv"]
    assert (nv["images"], nv["kappa"], nv["percent_agreement"], nv["kappa_ci95"]) == (0, None, None, None)


def test_agreement_on_a_hand_made_table_gives_the_known_kappa_percent_agreement_and_an_interval_around_it():
    """Two readers on 20 images: both accept 8, both reject 7, ann accepts / bob rejects 2, the reverse 3. Observed
    agreement 15/20 = 0.75; chance 10/20 x 11/20 + 10/20 x 9/20 = 0.5; kappa (0.75 - 0.5) / 0.5 = 0.5."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [("accept", "accept")] * 8 + [("reject", "reject")] * 7 + [("accept", "reject")] * 2 + \
        [("reject", "accept")] * 3
    per_image = [{"bob": b, "ann": a} for a, b in pairs]
    row = metrics.agreement(per_image, ["accept", "reject", "unsure"])
    assert row["method"] == "cohen" and row["images"] == 20 and row["enough"]
    assert row["percent_agreement"] == pytest.approx(0.75)
    assert row["kappa"] == pytest.approx(0.5) == pytest.approx(cohen_kappa_score(*zip(*pairs, strict=True)))
    assert row["table"]["accept"] == {"accept": 8, "reject": 2, "unsure": 0}  # ann's rows, bob's columns
    assert row["table"]["reject"] == {"accept": 3, "reject": 7, "unsure": 0}
    low, high = row["kappa_ci95"]
    assert -1 <= low < 0.5 < high <= 1 and high - low > 0.3  # 20 images: a wide interval, and it says so
    more = metrics.agreement(per_image * 10, ["accept", "reject", "unsure"])
    assert more["kappa"] == pytest.approx(0.5) and more["kappa_ci95"][1] - more["kappa_ci95"][0] < high - low


def test_sample_density_is_zero_off_the_real_manifold_and_about_one_on_it(rng):
    real = _gauss(rng, 400, 4)
    typical, far = real[:50] + 0.01, real[:5] + 100.0
    on = metrics.sample_density(real, typical, k=3)
    assert on.mean() > 0.5 and (metrics.sample_density(real, far, k=3) == 0).all()
    dens, _ = metrics.density_coverage(real, typical, k=3)
    assert on.mean() == pytest.approx(dens, rel=0.2)  # the per-sample terms of the set's density


# --- the judge's per-class figures: matched sizes, FD at a size, the two-sample test -------------------------------


def test_matched_size_hands_the_metric_two_sets_of_the_smaller_size(rng: np.random.Generator) -> None:
    real, fake = _gauss(rng, 40, 4), _gauss(rng, 400, 4)
    sizes = []
    metrics.matched_size(real, fake, lambda r, f: sizes.append((len(r), len(f))) or 0.0, draws=3)
    assert sizes == [(40, 40)] * 3
    # a big fake set alone would inflate recall: more k-NN balls cover more real rows
    unmatched = metrics.precision_recall(real, fake)[1]
    matched = metrics.matched_size(real, fake, metrics.precision_recall)[1]
    assert matched < unmatched


def test_frechet_distance_at_a_size_is_the_full_distance_at_full_size_and_grows_as_sets_shrink(
        rng: np.random.Generator) -> None:
    reference, x = _gauss(rng, 1000, 6), _gauss(rng, 500, 6)
    assert metrics.frechet_distance_at(reference, x, 500) == pytest.approx(metrics.frechet_distance(reference, x))
    assert metrics.frechet_distance_at(reference, x, 20) > metrics.frechet_distance_at(reference, x, 500)
    with pytest.raises(ValueError, match="between 2 and the 500 rows"):
        metrics.frechet_distance_at(reference, x, 501)


def test_two_sample_test_cannot_tell_one_distribution_from_itself(rng: np.random.Generator) -> None:
    result = metrics.classifier_two_sample_test(_gauss(rng, 200, 16), _gauss(rng, 300, 16))
    assert result["n_per_side"] == 200  # cut to the smaller set: chance is exactly 0.5
    assert result["ci95"][0] < 0.5 < result["ci95"][1] and result["p_value"] > 0.05


def test_two_sample_test_tells_apart_shifted_sets_with_an_interval_above_chance(rng: np.random.Generator) -> None:
    result = metrics.classifier_two_sample_test(_gauss(rng, 60, 16), _gauss(rng, 60, 16, mean=0.8))
    assert result["accuracy"] > 0.85 and result["ci95"][0] > 0.5 and result["p_value"] < 1e-6


def test_two_sample_test_needs_rows_for_its_folds(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="at least 5 rows per side"):
        metrics.classifier_two_sample_test(_gauss(rng, 4, 8), _gauss(rng, 50, 8))


# --- paired bootstrap over lesions (issue 22) ---

def lesion_test_set(n_lesions: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, a fairly good arm's predictions and lesion ids: 1-3 images per lesion, one class per lesion."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for lesion in range(n_lesions):
        images = rng.integers(1, 4)
        labels += [int(rng.integers(0, 7))] * images
        groups += [f"HAM_{lesion:07d}"] * images
    labels = np.array(labels)
    wrong = rng.random(len(labels)) < 0.35
    pred = np.where(wrong, rng.integers(0, 7, len(labels)), labels)
    return labels, pred, groups


def test_lesion_resampling_draws_every_image_of_a_lesion_together() -> None:
    _, _, groups = lesion_test_set(50)
    counts = metrics.group_resample_counts(groups, resamples=200, seed=3)
    assert counts.shape == (200, len(groups))
    ids = np.array(groups)
    for lesion in set(groups):
        mine = counts[:, ids == lesion]
        assert (mine == mine[:, :1]).all(), lesion  # never resampled apart
    per_lesion = np.array([counts[:, ids == lesion][:, 0] for lesion in sorted(set(groups))])
    assert (per_lesion.sum(0) == len(set(groups))).all()  # each resample draws as many lesions as there are
    assert (per_lesion == 0).any() and (per_lesion > 1).any()  # with replacement


def test_paired_bootstrap_of_identical_arms_is_zero_and_its_figures_match_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    labels, pred, groups = lesion_test_set()
    result = metrics.paired_bootstrap(labels, pred, pred, groups, n_classes=7)
    assert result["macro_f1"]["diff"] == 0 and result["macro_f1"]["ci95"] == [0.0, 0.0]
    assert not result["macro_f1"]["excludes_zero"] and result["macro_f1"]["groups"] == 300
    assert result["macro_f1"]["a"] == pytest.approx(f1_score(labels, pred, labels=range(7), average="macro"))
    assert result["balanced_accuracy"]["a"] == pytest.approx(balanced_accuracy_score(labels, pred))


def test_paired_bootstrap_finds_a_better_arm_and_not_a_noise_difference() -> None:
    labels, pred, groups = lesion_test_set()
    rng = np.random.default_rng(7)
    better = np.where(rng.random(len(labels)) < 0.5, labels, pred)  # half its mistakes fixed
    result = metrics.paired_bootstrap(labels, better, pred, groups, n_classes=7)
    for name in ("macro_f1", "balanced_accuracy"):
        low, high = result[name]["ci95"]
        assert 0 < low < result[name]["diff"] < high and result[name]["excludes_zero"], (name, result[name])


def test_paired_bootstrap_of_equally_good_arms_excludes_zero_about_one_time_in_twenty() -> None:
    """Two arms with the same error rate but their own mistakes, on 40 test sets: a 95% interval should miss
    zero in about 5% of them."""
    misses = 0
    for seed in range(40):
        labels, pred_a, groups = lesion_test_set(200, seed)
        rng = np.random.default_rng(1000 + seed)
        pred_b = np.where(rng.random(len(labels)) < 0.35, rng.integers(0, 7, len(labels)), labels)
        misses += metrics.paired_bootstrap(labels, pred_a, pred_b, groups, n_classes=7,
                                           resamples=500)["macro_f1"]["excludes_zero"]
    assert misses <= 6, misses


def test_resampling_lesions_gives_wider_intervals_than_resampling_images() -> None:
    """Ten images per lesion, each lesion all right or all wrong: treating its images as independent would
    understate the uncertainty; resampling lesions does not."""
    rng = np.random.default_rng(1)
    n_lesions, per = 60, 10
    labels = np.repeat(rng.integers(0, 3, n_lesions), per)
    right_a, right_b = rng.random(n_lesions) < 0.7, rng.random(n_lesions) < 0.7
    pred_a = np.where(np.repeat(right_a, per), labels, (labels + 1) % 3)
    pred_b = np.where(np.repeat(right_b, per), labels, (labels + 1) % 3)
    lesions = np.repeat(np.arange(n_lesions), per).tolist()
    by_lesion = metrics.paired_bootstrap(labels, pred_a, pred_b, lesions, n_classes=3)["macro_f1"]["ci95"]
    by_image = metrics.paired_bootstrap(labels, pred_a, pred_b, list(range(len(labels))), n_classes=3)
    width = by_lesion[1] - by_lesion[0]
    assert width > 2 * (by_image["macro_f1"]["ci95"][1] - by_image["macro_f1"]["ci95"][0])


def test_paired_bootstrap_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one label, a prediction per seed of each arm and one group per image"):
        metrics.paired_bootstrap(np.zeros(3), np.zeros(3), np.zeros(2), ["a", "b", "c"], n_classes=2)


def test_paired_bootstrap_over_seeds_averages_each_seeds_difference() -> None:
    labels, pred, groups = lesion_test_set()
    rng = np.random.default_rng(5)
    seeds_a = np.stack([np.where(rng.random(len(labels)) < 0.5, labels, pred) for _ in range(3)])
    seeds_b = np.stack([pred, pred, np.where(rng.random(len(labels)) < 0.2, labels, pred)])
    pooled = metrics.paired_bootstrap(labels, seeds_a, seeds_b, groups, n_classes=7, resamples=300)["macro_f1"]
    singles = [metrics.paired_bootstrap(labels, a, b, groups, n_classes=7, resamples=300)["macro_f1"]
               for a, b in zip(seeds_a, seeds_b, strict=True)]
    assert pooled["per_seed"] == pytest.approx([s["diff"] for s in singles])
    assert pooled["diff"] == pytest.approx(np.mean([s["diff"] for s in singles]))
    assert pooled["ci95"][0] < pooled["diff"] < pooled["ci95"][1]
    same_seed = metrics.paired_bootstrap(labels, seeds_a[:1], seeds_b[:1], groups, n_classes=7, resamples=300)
    assert same_seed["macro_f1"]["ci95"] == singles[0]["ci95"]  # one seed as (1, N) is the plain pair
