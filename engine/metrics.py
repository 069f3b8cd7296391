"""Metrics: how well a classifier does on real data, and how good a synthetic image set is.

Classification (`classification_report`): accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1,
confusion matrix, one-vs-rest ROC-AUC and expected calibration error with reliability-diagram bins — the figures
that show whether the minority classes are learned, not just nv.

Synthetic-set quality, measured against the real set it imitates:

Pure functions on numpy arrays: feature matrices of shape (N, D), in whatever embedding the caller picks, or uint8
images of shape (N, H, W, 3). Fidelity and diversity: `frechet_distance`, `precision_recall`, `density_coverage`.
Memorisation: `nearest` synthetic-to-real distances, judged against `near_copy_threshold`. Redundancy inside one set:
`near_duplicate_groups`. Blur: `sharpness`. Distances are Euclidean, computed in float64 one bounded block at a time
(about 16M distances, 128 MiB, at most), so 10,000 x 10,000 never materialises as one matrix.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from scipy import linalg
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_BLOCK_CELLS = 1 << 24  # most float64 distances held at once
_GREY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights


def _feats(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, got shape {a.shape}")
    if len(a) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {len(a)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _same_width(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names} have different feature widths: {a.shape[1]} vs {b.shape[1]}")


def _distance_blocks(queries: np.ndarray, refs: np.ndarray, chunk: int = 4096) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, d) with d[i, j] = ||queries[rows][i] - refs[j]||, at most `chunk` query rows at a time."""
    step = max(1, min(chunk, _BLOCK_CELLS // max(1, len(refs))))
    ref_sq = np.einsum("ij,ij->i", refs, refs)
    for start in range(0, len(queries), step):
        q = queries[start : start + step]
        d = q @ refs.T
        d *= -2.0
        d += np.einsum("ij,ij->i", q, q)[:, None]
        d += ref_sq[None, :]
        np.maximum(d, 0.0, out=d)
        yield slice(start, start + len(q)), np.sqrt(d, out=d)


def _knn_radii(x: np.ndarray, k: int, name: str) -> np.ndarray:
    """(N,) distance from each row of `x` to its k-th nearest other row."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs 1 <= k < rows of {name} ({len(x)})")
    radii = np.empty(len(x))
    for rows, d in _distance_blocks(x, x):
        radii[rows] = np.partition(d, k, axis=1)[:, k]  # order statistic 0 is the row itself
    return radii


def _ball_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, strict: bool) -> np.ndarray:
    """(len(points),) how many balls B(centres[j], radii[j]) contain each point."""
    counts = np.empty(len(points), dtype=np.int64)
    for rows, d in _distance_blocks(points, centres):
        counts[rows] = (d < radii if strict else d <= radii).sum(axis=1)
    return counts


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features: FID in the caller's feature space.

    Follows pytorch-fid: if sqrtm(cov_a @ cov_b) is not finite (singular covariances, e.g. N < D), retry with eps*I
    added to both; a complex result with a negligible imaginary part keeps its real part. Tiny negative results
    from round-off are returned as 0.0. Raises ValueError when either set has fewer than 2 rows.
    """
    a, b = _feats(feats_a, "feats_a", min_rows=2), _feats(feats_b, "feats_b", min_rows=2)
    _same_width(a, b, "feats_a and feats_b")
    diff = a.mean(axis=0) - b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            worst = np.abs(covmean.imag).max()
            raise ValueError(f"sqrtm of the covariance product has imaginary part up to {worst:.3g}; not a valid FD")
        covmean = covmean.real
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return max(float(fd), 0.0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (M, D) `fake` against (N, D) `real`.

    Precision: share of fake rows inside some real row's k-NN ball (radius = distance to its k-th nearest real
    neighbour, boundary included). Recall: share of real rows inside some fake row's k-NN ball. Needs k < N and k < M.
    """
    r, f = _feats(real, "real"), _feats(fake, "fake")
    _same_width(r, f, "real and fake")
    precision = np.mean(_ball_counts(f, r, _knn_radii(r, k, "real"), strict=False) > 0)
    recall = np.mean(_ball_counts(r, f, _knn_radii(f, k, "fake"), strict=False) > 0)
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of (M, D) `fake` against (N, D) `real`, using real k-NN balls only.

    Density: real balls containing each fake row, averaged and divided by k (about 1 when fake matches real; can
    exceed 1). Coverage: share of real rows whose ball contains at least one fake row. Open balls, as in the paper's
    code, so `fake = real` gives (1.0, 1.0) up to float round-off on the k-th neighbour. Needs k < N.
    """
    r, f = _feats(real, "real"), _feats(fake, "fake")
    _same_width(r, f, "real and fake")
    radii = _knn_radii(r, k, "real")
    density = _ball_counts(f, r, radii, strict=True).sum() / (k * len(f))
    coverage = np.mean(nearest(r, f)[0] < radii)
    return float(density), float(coverage)


def sample_density(real: np.ndarray, fake: np.ndarray, k: int = 3) -> np.ndarray:
    """Per fake row: how many real k-NN balls contain it, divided by k — the per-sample term of density (Naeem et
    al. 2020). 0 means off the real manifold; about 1 means as typical as a real sample. Needs k < N."""
    r, f = _feats(real, "real"), _feats(fake, "fake")
    _same_width(r, f, "real and fake")
    return _ball_counts(f, r, _knn_radii(r, k, "real"), strict=False) / k


def matched_size(real: np.ndarray, fake: np.ndarray, metric, draws: int = 5, seed: int = 0) -> tuple:
    """`metric(real, fake)` with the larger set cut to the smaller one's size by random draws, averaged over
    `draws`: precision/recall and Fréchet distance all move with the sizes of the two sets (more fake rows make
    more k-NN balls and a higher recall; fewer rows make a larger FD), so sets compared must be of one size."""
    r, f = _feats(real, "real"), _feats(fake, "fake")
    n = min(len(r), len(f))
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(draws if max(len(r), len(f)) > n else 1):
        rr = r[rng.choice(len(r), n, replace=False)] if len(r) > n else r
        ff = f[rng.choice(len(f), n, replace=False)] if len(f) > n else f
        out = metric(rr, ff)
        results.append(out if isinstance(out, tuple) else (out,))
    mean = tuple(float(np.mean(column)) for column in zip(*results, strict=True))
    return mean if len(mean) > 1 else mean[0]


def frechet_distance_at(reference: np.ndarray, feats: np.ndarray, n: int, draws: int = 5, seed: int = 0) -> float:
    """Fréchet distance of `n` rows of (M, D) `feats` to all of (N, D) `reference`, averaged over `draws` random
    choices of the rows (one when n = M). FD grows as n shrinks, so two sets are compared at one n."""
    f = _feats(feats, "feats", min_rows=2)
    if not 2 <= n <= len(f):
        raise ValueError(f"n={n} must be between 2 and the {len(f)} rows of feats")
    rng = np.random.default_rng(seed)
    picks = [f] if n == len(f) else [f[rng.choice(len(f), n, replace=False)] for _ in range(draws)]
    return float(np.mean([frechet_distance(reference, p) for p in picks]))


def classifier_two_sample_test(real: np.ndarray, fake: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Can a small classifier tell (N, D) `real` rows from (M, D) `fake` ones? (Lopez-Paz & Oquab 2017.)

    The larger set is cut to the smaller one's size (chance is then exactly 0.5); a logistic regression on
    standardised features (PCA to at most 16 dimensions, so a few dozen rows do not fit noise) is scored on
    held-out folds. Returns accuracy, its 95% Wilson interval, a one-sided binomial p-value against chance, and the
    number of rows per side. Accuracy near 0.5 means the two sets cannot be told apart in this feature space."""
    from scipy.stats import binomtest
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r, f = _feats(real, "real"), _feats(fake, "fake")
    _same_width(r, f, "real and fake")
    n = min(len(r), len(f))
    if n < folds:
        raise ValueError(f"a two-sample test with {folds} folds needs at least {folds} rows per side, got {n}")
    rng = np.random.default_rng(seed)
    x = np.concatenate([r[rng.choice(len(r), n, replace=False)], f[rng.choice(len(f), n, replace=False)]])
    y = np.repeat([0, 1], n)
    dims = max(1, min(16, x.shape[1], n - n // folds - 1))
    model = make_pipeline(StandardScaler(), PCA(dims, random_state=seed), LogisticRegression(max_iter=1000))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    correct = int((pred == y).sum())
    low, high = binomtest(correct, 2 * n).proportion_ci(0.95, method="wilson")
    p_value = binomtest(correct, 2 * n, 0.5, alternative="greater").pvalue
    return {"accuracy": correct / (2 * n), "ci95": [float(low), float(high)], "p_value": float(p_value),
            "n_per_side": n}


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each (Q, D) query row, the Euclidean distance to its nearest (R, D) reference row and that row's index.

    Returns float64 distances (Q,) and int64 indices (Q,); ties go to the lowest index. Works through the queries
    `chunk` rows at a time (fewer when R is large) so memory stays bounded.
    """
    q, r = _feats(queries, "queries", min_rows=0), _feats(references, "references")
    _same_width(q, r, "queries and references")
    dist, index = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for rows, d in _distance_blocks(q, r, chunk):
        index[rows] = d.argmin(axis=1)
        dist[rows] = d[np.arange(len(d)), index[rows]]
    return dist, index


def near_copy_threshold(
    real_feats: np.ndarray, groups: Sequence[Hashable | None] | None = None, quantile: float = 0.01
) -> float:
    """Distance below which a synthetic row is a likely memorised copy of a real one, calibrated on (N, D) reals.

    For each real row, take the distance to its nearest other real row, skipping rows that share its group id
    (e.g. lesion id: two photos of one lesion are legitimately close; None means no group); return `quantile` of
    those distances. A row whose whole set of others shares its group has no candidate and is left out.
    """
    x = _feats(real_feats, "real_feats", min_rows=2)
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    codes = np.full(len(x), -1, dtype=np.int64)
    if groups is not None:
        if len(groups) != len(x):
            raise ValueError(f"groups has {len(groups)} entries for {len(x)} rows")
        ids: dict[Hashable, int] = {}
        codes = np.array([-1 if g is None else ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64)
    nn = np.empty(len(x))
    for rows, d in _distance_blocks(x, x):
        own = np.arange(rows.start, rows.stop)
        d[own - rows.start, own] = np.inf
        mine = codes[own, None]
        d[(mine == codes[None, :]) & (mine >= 0)] = np.inf
        nn[rows] = d.min(axis=1)
    finite = nn[np.isfinite(nn)]
    if not len(finite):
        raise ValueError("no two real rows belong to different groups; nothing to calibrate on")
    return float(np.quantile(finite, quantile))


def near_duplicate_groups(feats: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) int64 group id per (N, D) row: rows closer than `threshold` are linked, transitively.

    A row with no near duplicate gets -1; groups are numbered 0, 1, 2, ... in order of their first row.
    """
    x = _feats(feats, "feats")
    src, dst = [], []
    for rows, d in _distance_blocks(x, x):
        i, j = np.nonzero(d < threshold)
        i += rows.start
        src.append(i[j > i])
        dst.append(j[j > i])
    i, j = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(x), len(x)))
    _, labels = connected_components(graph, directed=False)
    _, first_row = np.unique(labels, return_index=True)
    multi = np.flatnonzero(np.bincount(labels) > 1)
    new_id = np.full(len(first_row), -1, dtype=np.int64)
    new_id[multi[np.argsort(first_row[multi])]] = np.arange(len(multi))
    return new_id[labels]


def sharpness(images: np.ndarray) -> np.ndarray:
    """(N,) float64 variance of the 4-neighbour Laplacian of each grey-level image; higher is sharper.

    `images` is (N, H, W, 3) RGB or (N, H, W) grey, H and W at least 3; values keep their scale (0..255 for uint8).
    Only interior pixels are used, so borders add no artefacts.
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[-1] != 3) or min(imgs.shape[1:3]) < 3:
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W) with H, W >= 3, got shape {imgs.shape}")
    out = np.empty(len(imgs))
    for n, img in enumerate(imgs):
        g = img @ _GREY if img.ndim == 3 else img.astype(np.float64)
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
        out[n] = lap.var()
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE of the top-class confidence over equal-width bins, and each bin's (confidence, accuracy, count) for a
    reliability diagram. probs (N, C), labels (N,)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += n / len(labels) * abs(conf - acc)
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": conf,
                          "accuracy": acc, "count": n})
    return float(ece), table


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Everything `evaluate` stores for one model on one split. probs (N, C) rows summing to 1, labels (N,)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    classes = list(range(len(class_names)))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    present = [c for c in classes if (labels == c).any()]
    auc_per_class = {}
    for c in present:
        if 0 < (labels == c).sum() < len(labels):
            auc_per_class[class_names[c]] = float(roc_auc_score(labels == c, probs[:, c]))
    ece, reliability = expected_calibration_error(probs, labels)
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "auc_ovr": float(np.mean(list(auc_per_class.values()))) if auc_per_class else float("nan"),
        "ece": ece,
        "per_class": {class_names[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                                       "f1": float(f1[c]), "support": int(support[c]),
                                       "auc": auc_per_class.get(class_names[c])} for c in classes},
        "confusion": confusion_matrix(labels, pred, labels=classes).tolist(),
        "reliability": reliability,
    }


def group_resample_counts(groups: Sequence[Hashable], resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, N): how many times each of N images is drawn when whole groups (lesions) are resampled with
    replacement. Images of one lesion are always drawn together, the same number of times: they are not
    independent evidence, so resampling them apart would make intervals too narrow."""
    codes = _codes(groups)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    if n_groups == 0:
        raise ValueError("no images to resample")
    drawn = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=resamples)
    return drawn[:, codes]


def paired_bootstrap(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, groups: Sequence[Hashable],
                     n_classes: int, resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Arm a minus arm b on the same test images, in macro-F1 and balanced accuracy, with a 95% percentile
    interval from resampling lesions (`groups`, one per image) with replacement — paired: both arms are scored
    on each resample. labels (N,) class indices; pred_a, pred_b (N,), or (S, N) for S seeds of each arm, whose
    figures are then averaged over the seeds, in the whole set and in every resample alike. Returns {metric: {a,
    b, diff, ci95, excludes_zero, per_seed}}; macro-F1 averages all n_classes (0 for a class never predicted nor
    present, as `classification_report`), balanced accuracy the classes present in the resample."""
    labels = np.asarray(labels, dtype=np.int64)
    pred_a, pred_b = (np.atleast_2d(np.asarray(v, dtype=np.int64)) for v in (pred_a, pred_b))
    if not pred_a.shape == pred_b.shape == (len(pred_a), len(labels)) or len(groups) != len(labels):
        raise ValueError(f"one label, a prediction per seed of each arm and one group per image: got {len(labels)} "
                         f"labels, predictions {pred_a.shape} and {pred_b.shape}, {len(groups)} groups")
    drawn = group_resample_counts(groups, resamples, seed)  # (R, N)
    shape = (n_classes, n_classes)
    images = np.arange(len(labels))

    def confusions(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole set's confusion (1, K, K) and each resample's (R, K, K) for one seed's predictions."""
        cells = np.zeros((len(labels), n_classes * n_classes))  # each image's cell of the confusion matrix
        cells[images, labels * n_classes + pred] = 1
        return cells.sum(0).reshape(1, *shape), (drawn @ cells).reshape(resamples, *shape)

    per_seed = [(confusions(a), confusions(b)) for a, b in zip(pred_a, pred_b, strict=True)]
    out = {}
    for name, score in (("macro_f1", _macro_f1), ("balanced_accuracy", _balanced_accuracy)):
        a_seeds = np.array([score(a_all)[0] for (a_all, _), _ in per_seed])
        b_seeds = np.array([score(b_all)[0] for _, (b_all, _) in per_seed])
        diffs = np.mean([score(a_drawn) - score(b_drawn) for (_, a_drawn), (_, b_drawn) in per_seed], axis=0)
        low, high = (float(q) for q in np.quantile(diffs, [0.025, 0.975]))
        a, b = float(a_seeds.mean()), float(b_seeds.mean())
        out[name] = {"a": a, "b": b, "diff": a - b, "ci95": [low, high], "excludes_zero": bool(low > 0 or high < 0),
                     "per_seed": (a_seeds - b_seeds).tolist(), "resamples": resamples, "groups": len(set(groups))}
    return out


def _codes(groups: Sequence[Hashable]) -> np.ndarray:
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)


def _macro_f1(confusion: np.ndarray) -> np.ndarray:
    """(R, K, K) confusion counts (rows true, columns predicted) -> (R,) macro-F1 over all K classes."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(2) + confusion.sum(1)  # 2 TP + FN + FP
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=denominator > 0)
    return f1.mean(1)


def _balanced_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(R, K, K) -> (R,) mean recall over the classes present."""
    support = confusion.sum(2)
    recall = np.divide(np.diagonal(confusion, axis1=1, axis2=2), support, out=np.full(support.shape, np.nan),
                       where=support > 0)
    return np.nanmean(recall, 1)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (None when undefined: fewer than two items, or
    both raters always gave one and the same label)."""
    if len(a) != len(b):
        raise ValueError(f"one label per item from each rater: got {len(a)} and {len(b)}")
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    index = {c: j for j, c in enumerate(sorted(set(a) | set(b), key=str))}
    kappa = _cohen_kappas(np.array([index[x] for x in a]), np.array([index[x] for x in b]), len(index), 0, 0)[0]
    return float(kappa)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]], categories: Sequence[Hashable]) -> float | None:
    """Fleiss' kappa; `ratings` holds each item's labels from however many raters rated it (at least two).
    With varying raters per item, each item's agreement is taken over its own rater pairs and the chance term
    from the pooled label shares (the usual generalisation; with equal counts it is Fleiss' original)."""
    rows = [r for r in ratings if len(r) >= 2]
    if len(rows) < 2:
        return None
    index = {c: j for j, c in enumerate(categories)}
    counts = np.zeros((len(rows), len(categories)))
    for i, row in enumerate(rows):
        for label in row:
            counts[i, index[label]] += 1
    kappa = _fleiss_kappas(counts, 0, 0)[0]
    return None if np.isnan(kappa) else float(kappa)


MIN_AGREEMENT_IMAGES = 10  # below this many shared images, kappa swings too far to read: the studio says so


def review_agreement(decisions: Sequence[tuple[str, str, str, str]], classes: Sequence[str],
                     categories: Sequence[str], overall: str | None = None) -> dict[str, dict]:
    """Per class, from (image_id, class, reviewer, decision) rows: `agreement` over the images two or more
    reviewers decided. With `overall` (a key), first a row over every class at once."""
    per_class: dict[str, dict[str, dict[str, str]]] = {cls: {} for cls in classes}
    for image_id, label, reviewer, decision in decisions:
        if label in per_class:
            per_class[label].setdefault(image_id, {})[reviewer] = decision
    out = {overall: agreement([d for images in per_class.values() for d in images.values()], categories)} \
        if overall else {}
    return out | {cls: agreement(list(images.values()), categories) for cls, images in per_class.items()}


def agreement(per_image: Sequence[dict[str, str]], categories: Sequence[str], resamples: int = 1000,
              seed: int = 0) -> dict:
    """Agreement between readers, from each image's {reader: decision}, on the images two or more of them read:
    how many (`images`; `enough` from MIN_AGREEMENT_IMAGES on), the share of reader pairs that agree
    (`percent_agreement`), the table of reader pairs' decisions (`table[first][second]`, the readers of a pair in
    name order: with two readers, the first reader's rows against the second's columns), and chance-corrected
    agreement — Cohen's kappa when exactly two readers share images, Fleiss' when more do — with a 95% interval
    from resampling images."""
    shared = [d for d in per_image if len(d) >= 2]
    readers = sorted({r for d in shared for r in d})
    index = {c: j for j, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)), np.int64)
    counts = np.zeros((len(shared), len(categories)))
    for i, decided in enumerate(shared):
        ordered = [index[decided[r]] for r in sorted(decided)]
        for a, first in enumerate(ordered):
            counts[i, first] += 1
            for second in ordered[a + 1:]:
                table[first, second] += 1
    row: dict = {"reviewers": sorted({r for d in per_image for r in d}), "images": len(shared),
                 "enough": len(shared) >= MIN_AGREEMENT_IMAGES, "min_images": MIN_AGREEMENT_IMAGES,
                 "percent_agreement": None, "kappa": None, "kappa_ci95": None, "method": None,
                 "table": {c: dict(zip(categories, map(int, table[i]), strict=True))
                           for i, c in enumerate(categories)}}
    if not shared:
        return row
    row["percent_agreement"] = float(_pair_agreement(counts[None])[0])
    if len(readers) == 2:
        first, second = (np.array([index[d[r]] for d in shared]) for r in readers)
        kappas, row["method"] = _cohen_kappas(first, second, len(categories), resamples, seed), "cohen"
    else:
        kappas, row["method"] = _fleiss_kappas(counts, resamples, seed), "fleiss"
    kappa, spread = kappas[0], kappas[1:][np.isfinite(kappas[1:])]
    if len(shared) >= 2 and np.isfinite(kappa):
        row["kappa"] = float(kappa)
        if len(spread) >= resamples // 2:
            row["kappa_ci95"] = [float(v) for v in np.percentile(spread, [2.5, 97.5])]
    return row


def _resampled(n: int, resamples: int, seed: int) -> np.ndarray:
    """(1 + resamples, n) image indices: the images as they are, then resamples with replacement (int32: a
    thousand resamples of 10,000 images is 40 MB)."""
    drawn = np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int32)
    return np.vstack([np.arange(n, dtype=np.int32)[None], drawn])


def _cohen_kappas(first: np.ndarray, second: np.ndarray, k: int, resamples: int, seed: int, chunk: int = 100
                  ) -> np.ndarray:
    """(1 + resamples,) Cohen's kappa of two readers' category indices, on the images and on resamples of them
    (drawn `chunk` at a time, so thousands of images stay small in memory); NaN where undefined."""
    picks = _resampled(len(first), resamples, seed)
    out = []
    for start in range(0, len(picks), chunk):
        part = picks[start:start + chunk]
        codes = (first * k + second)[part] + np.arange(len(part))[:, None] * k * k
        tables = np.bincount(codes.ravel(), minlength=len(part) * k * k).reshape(len(part), k, k) / len(first)
        observed = np.trace(tables, axis1=1, axis2=2)
        chance = (tables.sum(2) * tables.sum(1)).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(chance < 1, (observed - chance) / (1 - chance), np.nan))
    return np.concatenate(out)


def _pair_agreement(counts: np.ndarray) -> np.ndarray:
    """(R, n, k) decisions per image and category -> (R,) mean share of each image's reader pairs that agree."""
    n = counts.sum(2)
    return ((counts * (counts - 1)).sum(2) / (n * (n - 1))).mean(1)


def _fleiss_kappas(counts: np.ndarray, resamples: int, seed: int, chunk: int = 100) -> np.ndarray:
    """(1 + resamples,) Fleiss' kappa (`fleiss_kappa`) of per-image category counts (n, k), on the images and on
    resamples of them; NaN where undefined."""
    picks = _resampled(len(counts), resamples, seed)
    out = []
    for start in range(0, len(picks), chunk):
        drawn = counts[picks[start:start + chunk]]  # (r, n, k)
        shares = drawn.sum(1) / drawn.sum((1, 2))[:, None]
        chance = (shares ** 2).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(chance < 1, (_pair_agreement(drawn) - chance) / (1 - chance), np.nan))
    return np.concatenate(out)
