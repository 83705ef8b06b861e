"""Small-sample statistics for comparing training runs over seeds (scipy.stats underneath).

Why these and not more: a comparison has a handful of seeds per arm, and runs of different arms with the
same seed share data order and backbone initialisation, so the natural unit is the *paired* difference per
seed. We report the t-based 95% CI of each mean, a paired t-test and a Wilcoxon signed-rank test on the
per-seed differences, the paired effect size d_z = mean(diff) / sd(diff) (and Cohen's d with a pooled sd
for context), and Holm's step-down adjustment when several arms are tested against one baseline.

Honest limits, stated where they are computed: with n = 3 seeds the smallest two-sided exact Wilcoxon
p-value is 0.25, so it can never reject at 0.05; the t-test assumes roughly normal differences; the
bootstrap CI is unreliable below ~10 values. Every function returns plain floats (NaN where a quantity is
undefined, e.g. a CI from one value) so results serialise to JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from strata.errors import StrataError

NAN = float("nan")


def _array(values: Sequence[float], name: str = "values") -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1:
        raise StrataError(f"{name} must be a flat list of numbers")
    if not np.all(np.isfinite(x)):
        raise StrataError(f"{name} holds NaN or infinite values; drop failed runs before summarising")
    return x


@dataclass(frozen=True)
class MeanCI:
    """Mean with a two-sided t confidence interval (NaN bounds when n < 2)."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if math.isfinite(self.low) else NAN

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "half_width": self.half_width}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean ± t_{n-1} x sd / sqrt(n): the CI for the mean of a few seeds (sd is the sample sd, ddof 1)."""
    x = _array(values)
    n = len(x)
    if n == 0:
        raise StrataError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, NAN, n, NAN, NAN, confidence)
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return MeanCI(mean, 0.0, n, mean, mean, confidence)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
    return MeanCI(mean, sd, n, float(low), float(high), confidence)


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) - mean(b)) / pooled sd (ddof 1): the unpaired standardised difference."""
    x, y = _array(a, "a"), _array(b, "b")
    if len(x) < 2 or len(y) < 2:
        return NAN
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    if pooled == 0:
        return NAN
    return float((x.mean() - y.mean()) / math.sqrt(pooled))


def paired_effect_size(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d_z = mean(a - b) / sd(a - b): the effect size that matches the paired t-test."""
    diff = _paired_diff(a, b)
    if len(diff) < 2:
        return NAN
    sd = float(diff.std(ddof=1))
    return NAN if sd == 0 else float(diff.mean() / sd)


def _paired_diff(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = _array(a, "a"), _array(b, "b")
    if len(x) != len(y):
        raise StrataError(f"paired samples differ in length ({len(x)} vs {len(y)}); pair runs by seed")
    return x - y


@dataclass(frozen=True)
class PairedTest:
    """a - b over paired observations (seeds): mean difference, its CI, t-test, Wilcoxon, d_z, Cohen's d."""

    n: int
    mean_diff: float
    diff_low: float
    diff_high: float
    t_statistic: float
    t_p_value: float
    wilcoxon_statistic: float
    wilcoxon_p_value: float
    effect_size_dz: float
    cohens_d: float
    wins: int  # seeds where a > b
    losses: int  # seeds where a < b

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test (scipy.stats.ttest_rel) and Wilcoxon signed-rank (exact for small n) of a vs b.

    Identical samples give t/Wilcoxon p = 1 (no evidence of a difference) rather than an error; n < 2 gives
    NaN tests.
    """
    diff = _paired_diff(a, b)
    n = len(diff)
    ci = mean_ci(diff, confidence) if n else MeanCI(NAN, NAN, 0, NAN, NAN, confidence)
    t_stat = t_p = w_stat = w_p = NAN
    if n >= 2:
        if np.all(diff == 0):
            t_stat, t_p, w_stat, w_p = 0.0, 1.0, 0.0, 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero-variance differences -> inf t
                res = stats.ttest_rel(_array(a), _array(b))
            t_stat, t_p = float(res.statistic), float(res.pvalue)
            if not math.isfinite(t_p):  # constant non-zero difference: t is infinite
                t_p = 0.0
            w = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
            w_stat, w_p = float(w.statistic), float(w.pvalue)
    return PairedTest(
        n=n,
        mean_diff=ci.mean,
        diff_low=ci.low,
        diff_high=ci.high,
        t_statistic=t_stat,
        t_p_value=t_p,
        wilcoxon_statistic=w_stat,
        wilcoxon_p_value=w_p,
        effect_size_dz=paired_effect_size(a, b) if n else NAN,
        cohens_d=cohens_d(a, b),
        wins=int((diff > 0).sum()),
        losses=int((diff < 0).sum()),
    )


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon p-value reachable with n non-zero differences: 2 / 2**n."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), NaN entries passed through untouched."""
    p = np.asarray(list(p_values), dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = p.copy()
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                 confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI (scipy.stats.bootstrap); only meaningful with ~10+ values (e.g. examples)."""
    x = _array(values)
    if len(x) < 2 or np.all(x == x[0]):
        v = float(statistic(x)) if len(x) else NAN
        return (v, v) if len(x) else (NAN, NAN)
    res = stats.bootstrap((x,), lambda s, axis=-1: statistic(s, axis=axis), confidence_level=confidence,
                          n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


__all__ = [
    "MeanCI",
    "PairedTest",
    "mean_ci",
    "cohens_d",
    "paired_effect_size",
    "paired_test",
    "min_wilcoxon_p",
    "holm",
    "bootstrap_ci",
]
