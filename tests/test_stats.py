"""The statistics of the confirmation (jepa_search/stats.py) on inputs whose answers are known."""

import numpy as np
import pytest

from jepa_search import stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]) == pytest.approx(4.5)  # 3, 4, 5, 6
    assert stats.iqm([10.0, 20.0]) == 15.0  # under 4 runs: the mean
    assert stats.iqm([[1.0, 2.0, 3.0, 1000.0]]).tolist() == [2.5]  # over the last axis


def test_probability_of_improvement_counts_pairs_and_half_ties():
    assert stats.probability_of_improvement([2.0, 3.0], [1.0, 1.5]) == 1.0
    assert stats.probability_of_improvement([1.0], [2.0]) == 0.0
    assert stats.probability_of_improvement([1.0, 3.0], [1.0, 2.0]) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    runs = list(np.random.default_rng(1).normal(100.0, 30.0, size=10))
    for statistic in (stats.mean, stats.iqm):
        low, high = stats.bootstrap_ci(runs, statistic)
        assert low < float(statistic(runs)) < high
        assert high - low < max(runs) - min(runs)
        assert stats.bootstrap_ci(runs, statistic) == (low, high)
    assert stats.bootstrap_ci([5.0, 5.0, 5.0], stats.mean) == (5.0, 5.0)


def test_improvement_interval_is_stratified_by_configuration():
    better, worse = [10.0, 11.0, 12.0], [1.0, 2.0, 3.0]
    assert stats.improvement_ci(better, worse) == (1.0, 1.0)  # no resample of either side mixes them
    assert stats.improvement_ci([1.0, 3.0], [2.0, 2.5]) == (0.0, 1.0)  # two runs a side: anything is possible
    rng = np.random.default_rng(2)
    x, y = list(rng.normal(1.0, 1.0, 10)), list(rng.normal(0.0, 1.0, 10))
    low, high = stats.improvement_ci(x, y)
    assert 0.0 < low < stats.probability_of_improvement(x, y) < high < 1.0  # an interval around the estimate


def test_spearman_of_ranks_and_of_constant_returns():
    assert stats.spearman([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]) == pytest.approx(0.5)
    assert stats.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert np.isnan(stats.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
