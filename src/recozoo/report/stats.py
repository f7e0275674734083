"""Statistics over per-user test metrics: paired tests, Holm correction, bootstrap intervals.

Paired tests compare two models on the same test users (Demšar, JMLR 2006; Sakai, SIGIR 2014):
the Wilcoxon signed-rank test (no normality assumption) and the paired t-test, both two-sided,
with Holm's step-down correction over the models compared against the best (Holm, Scand. J.
Statist. 1979).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

#: level below which a (Holm-adjusted) p-value marks a difference as significant.
ALPHA = 0.05


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of one model against a reference on the users both evaluated."""

    n_users: int
    mean_difference: float  # other - reference
    p_wilcoxon: float
    p_ttest: float


def paired_test(reference: pd.Series, other: pd.Series) -> PairedTest:
    """Wilcoxon signed-rank and paired t-test of ``other`` against ``reference``.

    Args:
        reference, other: per-user values indexed by user; users missing from either side or with
            NaN (no target of that kind) are left out.
    """
    pairs = pd.concat([reference.rename("a"), other.rename("b")], axis=1, join="inner").dropna()
    diff = (pairs["b"] - pairs["a"]).to_numpy(dtype=float)
    if len(diff) == 0:
        return PairedTest(0, math.nan, math.nan, math.nan)
    if not np.any(diff):  # identical lists: no evidence of a difference
        return PairedTest(len(diff), 0.0, 1.0, 1.0)
    p_wilcoxon = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    if np.allclose(diff, diff[0]):  # a constant shift: t is infinite
        p_ttest = 0.0
    else:
        p_ttest = float(stats.ttest_1samp(diff, 0.0).pvalue)
    return PairedTest(len(diff), float(diff.mean()), p_wilcoxon, p_ttest)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    valid = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        adjusted[i] = running
    return adjusted


def bootstrap_ci(values: pd.Series, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over users (NaN values left out)."""
    data = values.dropna().to_numpy(dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        mean = float(data.mean()) if len(data) else math.nan
        return mean, mean
    result = stats.bootstrap((data,), np.mean, confidence_level=confidence,
                             n_resamples=n_resamples, method="percentile",
                             random_state=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
