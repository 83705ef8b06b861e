"""strata.experiments.statistics against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from strata.errors import StrataError
from strata.experiments.statistics import (
    bootstrap_ci,
    cohens_d,
    holm,
    mean_ci,
    min_wilcoxon_p,
    paired_effect_size,
    paired_test,
)


def test_mean_ci_of_a_known_sample():
    # x = 1..5: mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445105 -> half-width 2.776445 * sqrt(2.5)/sqrt(5)
    ci = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert ci.mean == pytest.approx(3.0)
    assert ci.sd == pytest.approx(math.sqrt(2.5))
    assert ci.low == pytest.approx(3.0 - half, rel=1e-9)
    assert ci.high == pytest.approx(3.0 + half, rel=1e-9)
    assert ci.half_width == pytest.approx(half, rel=1e-9)
    assert ci.to_dict()["n"] == 5


def test_mean_ci_edge_cases():
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.half_width)
    same = mean_ci([0.5, 0.5, 0.5])
    assert (same.low, same.high, same.half_width) == (0.5, 0.5, 0.0)
    with pytest.raises(StrataError):
        mean_ci([])
    with pytest.raises(StrataError):
        mean_ci([1.0, float("nan")])


def test_paired_t_on_known_data():
    a = [0.70, 0.72, 0.75, 0.71]
    b = [0.68, 0.69, 0.70, 0.70]
    # differences 0.02, 0.03, 0.05, 0.01: mean 0.0275, sd 0.0170783 -> t = 0.0275 / (sd / 2) = 3.2205
    d = np.array([0.02, 0.03, 0.05, 0.01])
    t_hand = d.mean() / (d.std(ddof=1) / 2)
    res = paired_test(a, b)
    assert res.t_statistic == pytest.approx(t_hand, rel=1e-6)
    assert res.t_p_value == pytest.approx(2 * stats.t.sf(t_hand, df=3), rel=1e-6)
    assert res.mean_diff == pytest.approx(0.0275)
    assert res.effect_size_dz == pytest.approx(t_hand / 2, rel=1e-6)  # d_z = t / sqrt(n)
    assert res.wilcoxon_p_value == pytest.approx(0.125)  # all 4 positive: exact p = 2 / 2^4
    assert (res.wins, res.losses) == (4, 0)
    assert res.diff_low < res.mean_diff < res.diff_high


def test_paired_test_identical_and_constant_shift():
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.t_p_value == 1.0 and same.wilcoxon_p_value == 1.0 and math.isnan(same.effect_size_dz)
    shifted = paired_test([3.0, 4.0, 5.0], [2.0, 3.0, 4.0])  # difference exactly constant: t infinite
    assert shifted.t_p_value == 0.0
    assert shifted.wilcoxon_p_value == pytest.approx(0.25)
    with pytest.raises(StrataError):
        paired_test([1, 2], [1, 2, 3])


def test_effect_sizes_and_holm():
    a, b = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]
    # pooled sd: var(a) = 4, var(b) = 1 -> sqrt(2.5); d = (4 - 2) / sqrt(2.5)
    assert cohens_d(a, b) == pytest.approx(2 / math.sqrt(2.5))
    assert paired_effect_size(a, b) == pytest.approx(2.0 / 1.0)  # diffs 1, 2, 3: mean 2, sd 1
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, float("nan"), 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert min_wilcoxon_p(3) == 0.25


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=200)
    low, high = bootstrap_ci(x, n_resamples=500)
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(200), rel=0.25)
