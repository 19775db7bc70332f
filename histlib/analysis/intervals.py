"""Group-aware paired bootstrap intervals of a difference in classifier accuracy; beyond the paper's tables of means.

Two rows of a table (say, classifiers trained on synthetic images and on real images) are scored on the same
evaluation images. Patches cut from one source image, slide or cluster are not independent: resampling single
patches treats 72 patches of 8 source images as 72 independent observations and gives intervals far too narrow.
Here the resampled unit is the split's **group** (the ``group`` column of the prepared manifest, set by
``GROUP_BY``): one draw of groups serves both rows (paired), and each row's seeds are resampled on their own
(independent training runs), so the interval holds both sources of variation — which images were drawn for the
test split and how training turned out. Resampling the two crossed factors (groups × seeds) independently is
Owen's pigeonhole bootstrap (Ann. Appl. Stat. 2007): slightly conservative, as the seeds' per-image disagreement is
counted in both.

The resampling itself is :func:`scipy.stats.bootstrap` (percentile interval); this module only turns per-group
counts into the statistic.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

METRICS = ("accuracy", "balanced_accuracy")

# Fewer independent groups than this: no interval. With few clusters the cluster bootstrap's percentile interval
# covers the truth too rarely (Cameron, Gelbach & Miller 2008, Rev. Econ. Stat. 90: the same for 5-30 clusters). In
# the simulation of tests/analysis/test_intervals.py (20 patches per group, 3 seeds per row, 400 replications) the
# nominal 95 % interval covered the truth 81 % of the time with 5 groups, 86 % with 8, 90 % with 10, 92 % with 15
# and 93-94 % with 20-50 (the patch bootstrap: 58-69 % throughout); 10 is the fewest at which it is within 5 points
# of its level.
MIN_GROUPS = 10
MIN_SEEDS = 2  # one seed per row has no spread to resample (the reports' rule: no interval from fewer than 2 seeds)

TOO_FEW_GROUPS = "too few groups for an interval"
TOO_FEW_SEEDS = "too few seeds for an interval"


class PairedInterval(NamedTuple):
    """Difference ``a - b`` of the seed-mean metric (fractions), its interval and what it rests on.

    ``low``/``high`` are NaN when there is no interval; ``note`` then says why (``''`` when there is one).
    """

    difference: float
    low: float
    high: float
    n_images: int
    n_groups: int
    n_seeds_a: int
    n_seeds_b: int
    note: str


def group_counts(correct: np.ndarray, y: np.ndarray, group_codes: np.ndarray, n_groups: int, n_classes: int,
                 ) -> np.ndarray:
    """Right answers per seed, group and class: ``[S, G, C]`` from ``correct [S, N]`` (bool), ``y [N]`` and integer
    group codes ``[N]`` (0 … G-1)."""
    cell = group_codes * n_classes + y  # [N] one cell per (group, class)
    out = np.stack([np.bincount(cell, weights=c.astype(np.float64), minlength=n_groups * n_classes)
                    for c in np.atleast_2d(correct)])  # [S, G*C]
    return out.reshape(len(out), n_groups, n_classes)


def _scores(weights: np.ndarray, right: np.ndarray, totals: np.ndarray, metric: str) -> np.ndarray:
    """Metric per resample and seed ``[P, S]`` from group weights ``[P, G]``, right answers ``[S, G, C]`` and image
    counts ``[G, C]``."""
    num = np.einsum("pg,sgc->psc", weights, right)  # [P, S, C]
    den = weights @ totals  # [P, C]
    if metric == "accuracy":
        return num.sum(-1) / den.sum(-1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a resample: left out of the mean
        return np.nanmean(np.where(den[:, None, :] > 0, num / den[:, None, :], np.nan), axis=-1)


class _Statistic:
    """The statistic handed to :func:`scipy.stats.bootstrap`: resampled group indices and seed indices of both rows
    → difference of the seed-mean metric (vectorised over any leading dimensions scipy uses)."""

    def __init__(self, right_a: np.ndarray, right_b: np.ndarray, totals: np.ndarray, metric: str):
        self.right_a, self.right_b, self.totals, self.metric = right_a, right_b, totals, metric

    def __call__(self, groups: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = np.broadcast_shapes(groups.shape[:-1], seeds_a.shape[:-1], seeds_b.shape[:-1])
        flat = [np.broadcast_to(np.asarray(x, dtype=np.int64), lead + x.shape[-1:]).reshape(-1, x.shape[-1])
                for x in (groups, seeds_a, seeds_b)]
        g, sa, sb = flat
        n_groups = self.totals.shape[0]
        offsets = np.arange(len(g))[:, None] * n_groups
        weights = np.bincount((g + offsets).ravel(), minlength=len(g) * n_groups).reshape(len(g), n_groups)
        weights = weights.astype(np.float64)  # [P, G] how often each group was drawn
        a = np.take_along_axis(_scores(weights, self.right_a, self.totals, self.metric), sa, axis=1).mean(1)
        b = np.take_along_axis(_scores(weights, self.right_b, self.totals, self.metric), sb, axis=1).mean(1)
        return (a - b).reshape(lead)


def paired_group_interval(correct_a: np.ndarray, correct_b: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                          metric: str = "accuracy", n_resamples: int = 2000, ci: float = 0.95, seed: int = 0,
                          min_groups: int = MIN_GROUPS, min_seeds: int = MIN_SEEDS) -> PairedInterval:
    """Difference of the seed-mean ``metric`` between two rows scored on the same images, with its group bootstrap
    interval.

    Args:
        correct_a, correct_b: ``[S_a, N]`` and ``[S_b, N]`` booleans, one row per seed: was image i right.
        y: true labels ``[N]`` (integers).
        groups: the group of each image ``[N]`` (any hashable values); None: unknown, no interval.
        metric: ``'accuracy'`` or ``'balanced_accuracy'`` (mean recall over the classes present in a resample).
        n_resamples, ci, seed: bootstrap settings.
        min_groups, min_seeds: below these, the difference is given without an interval (``note`` says why).

    Returns:
        :class:`PairedInterval` (fractions, not %).
    """
    if metric not in METRICS:
        raise ValueError(f"paired_group_interval: metric={metric!r}; expected one of {list(METRICS)}")
    if not 0 < ci < 1:
        raise ValueError(f"paired_group_interval: ci={ci!r}; expected a confidence level in (0, 1)")
    correct_a, correct_b = np.atleast_2d(np.asarray(correct_a, bool)), np.atleast_2d(np.asarray(correct_b, bool))
    y = np.asarray(y)
    n = len(y)
    if correct_a.shape[1] != n or correct_b.shape[1] != n or (groups is not None and len(groups) != n):
        raise ValueError(f"paired_group_interval: {correct_a.shape[1]}, {correct_b.shape[1]} predictions and "
                         f"{None if groups is None else len(groups)} groups for {n} labels; expected the same images")
    _, y_codes = np.unique(y, return_inverse=True)
    n_classes = int(y_codes.max()) + 1 if n else 0
    if groups is None:
        codes, n_groups = np.zeros(n, dtype=np.int64), 0
    else:
        _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        n_groups = int(codes.max()) + 1 if n else 0
    g = max(n_groups, 1)
    totals = np.bincount(codes * n_classes + y_codes, minlength=g * n_classes).reshape(g, n_classes).astype(float)
    right_a = group_counts(correct_a, y_codes, codes, g, n_classes)
    right_b = group_counts(correct_b, y_codes, codes, g, n_classes)
    stat = _Statistic(right_a, right_b, totals, metric)
    everything = np.arange(g)[None]
    point = float(stat(everything, np.arange(len(correct_a))[None], np.arange(len(correct_b))[None])[0])
    sizes = dict(n_images=n, n_groups=n_groups, n_seeds_a=len(correct_a), n_seeds_b=len(correct_b))
    if groups is None:
        return PairedInterval(point, math.nan, math.nan, **sizes, note="groups not recorded: no interval")
    if n_groups < min_groups:
        return PairedInterval(point, math.nan, math.nan, **sizes, note=TOO_FEW_GROUPS)
    if min(len(correct_a), len(correct_b)) < max(min_seeds, 2):
        return PairedInterval(point, math.nan, math.nan, **sizes, note=TOO_FEW_SEEDS)
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning when every resample agrees: a 0-wide interval
        res = bootstrap((np.arange(g), np.arange(len(correct_a)), np.arange(len(correct_b))), stat,
                        n_resamples=int(n_resamples), batch=256, vectorized=True, paired=False,
                        confidence_level=ci, method="percentile", rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) and res.bootstrap_distribution.size and np.ptp(res.bootstrap_distribution) == 0:
        low = high = float(res.bootstrap_distribution.flat[0])
    return PairedInterval(point, low, high, **sizes, note="")


class FoldInterval(NamedTuple):
    """Mean of the folds' own differences (points or fractions, as given), its interval and what it rests on."""

    difference: float
    low: float
    high: float
    n_folds: int


def fold_interval(differences, test_over_train: float, ci: float = 0.95) -> FoldInterval:
    """The cross-validation folds' view of a difference: the mean of each fold's own difference with the corrected
    resampled t interval of Nadeau & Bengio (Machine Learning 52, 2003), as Bouckaert & Frank (2004) use it for
    repeated k-fold cross-validation (here one repetition: ``k`` differences).

    Each fold's difference holds everything that fold drew on its own: its test images, its training split, its
    fine-tuned generator and its classifiers. The folds are not independent (their training splits overlap), so
    the plain t interval's variance ``s² / k`` is too small; the corrected one is ``s² (1/k + n_test/n_train)``,
    with ``k - 1`` degrees of freedom. The correction is a heuristic (it assumes how much overlapping training
    splits correlate the folds) and ``s`` comes from only ``k`` values. Where the group bootstrap of a pooled row
    (:func:`paired_group_interval`) holds each fold's generator fixed, this one lets it vary.

    Args:
        differences: one difference per fold.
        test_over_train: ``n_test / n_train``, images in a fold's test split over its (real) training split.
        ci: confidence level.

    Returns:
        :class:`FoldInterval`; ``low``/``high`` are NaN with fewer than two folds.
    """
    if not 0 < ci < 1:
        raise ValueError(f"fold_interval: ci={ci!r}; expected a confidence level in (0, 1)")
    if not test_over_train > 0:
        raise ValueError(f"fold_interval: test_over_train={test_over_train!r}; expected n_test / n_train > 0")
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or np.isnan(d).any():
        raise ValueError(f"fold_interval: differences {d.tolist()}; expected one number per fold")
    k = len(d)
    if k < 2:
        return FoldInterval(float(d.mean()) if k else math.nan, math.nan, math.nan, k)
    from scipy.stats import t

    half = float(t.ppf(0.5 + ci / 2, k - 1)) * math.sqrt(float(d.var(ddof=1)) * (1 / k + test_over_train))
    mean = float(d.mean())
    return FoldInterval(mean, mean - half, mean + half, k)
