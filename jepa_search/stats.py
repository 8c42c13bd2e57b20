"""Statistics of a few noisy runs per configuration, as rliable computes them (Agarwal et al., 2021), in numpy.

With 2-10 seeds per configuration a mean alone says little: the interquartile mean resists one lucky or crashed
seed, the percentile bootstrap gives a 95% interval, and the probability of improvement says how often one
configuration's run beats another's. The bootstrap is stratified: it resamples runs with replacement within each
configuration, never across them. Seeded, so the files are the same every time they are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def mean(x: np.ndarray) -> np.ndarray:
    """The mean over the last axis (runs)."""
    return np.asarray(x, dtype=float).mean(axis=-1)


def iqm(x: np.ndarray) -> np.ndarray:
    """The interquartile mean over the last axis: the mean of the runs left after cutting floor(n/4) from each
    end (scipy's `trim_mean(x, 0.25)`, rliable's IQM); with fewer than 4 runs it is the mean."""
    x = np.sort(np.asarray(x, dtype=float), axis=-1)
    cut = x.shape[-1] // 4
    return x[..., cut : x.shape[-1] - cut].mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) over all pairs of a run of x and a run of y (last axis), ties counting one half."""
    x, y = np.asarray(x, dtype=float)[..., :, None], np.asarray(y, dtype=float)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def _resample(rng: np.random.Generator, runs: np.ndarray) -> np.ndarray:
    """BOOTSTRAP_REPS resamples of one configuration's runs, with replacement: shape (reps, n)."""
    return runs[rng.integers(len(runs), size=(BOOTSTRAP_REPS, len(runs)))]


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(runs: list[float], statistic: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of `statistic` (mean or iqm) of one configuration's runs."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return _interval(statistic(_resample(rng, np.asarray(runs, dtype=float))))


def improvement_ci(x: list[float], y: list[float]) -> tuple[float, float]:
    """The 95% interval of P(X > Y), resampling the runs of x and of y independently (stratified)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    xs, ys = _resample(rng, np.asarray(x, dtype=float)), _resample(rng, np.asarray(y, dtype=float))
    return _interval(probability_of_improvement(xs, ys))


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (scipy, a dependency of dm-control); nan when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)
