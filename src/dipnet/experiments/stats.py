"""Statistics over seeds: mean, standard deviation, Student-t 95% intervals and paired tests.

Runs of two methods with the same seed share data order and initialization, so they are
compared *paired*: the per-seed differences d_i = a_i - b_i are summarized by their mean, a
t interval mean(d) ± t_{0.975, n-1} s_d / sqrt(n), the paired t-test (t = mean(d) / (s_d /
sqrt(n)), df = n-1) and the exact Wilcoxon signed-rank test (every one of the 2^n sign
patterns enumerated when n is small). With 3 seeds the smallest two-sided Wilcoxon p-value is
2/2^3 = 0.25: a difference is flagged "within noise" whenever the t interval contains 0.
SciPy (a dependency of scikit-learn) supplies the t distribution and the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError


def t_quantile(q: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy import stats

    if df < 1:
        return math.nan
    return float(stats.t.ppf(q, df))


def _values(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with a two-sided Student-t confidence interval."""

    n: int
    mean: float
    std: float
    half_width: float
    level: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0:
            return "n/a"
        if not math.isfinite(self.half_width):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def summarize(values: Iterable[float], level: float = 0.95) -> Summary:
    """Mean, sample standard deviation (ddof=1) and the t interval half-width t_{(1+level)/2, n-1} s / sqrt(n).

    Non-finite and missing values are dropped; with one value the interval is undefined (nan).
    """
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    x = _values(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, level)
    if n == 1:
        return Summary(1, float(x[0]), math.nan, math.nan, level)
    std = float(x.std(ddof=1))
    return Summary(n, float(x.mean()), std, t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n), level)


@dataclass(frozen=True)
class PairedComparison:
    """Paired comparison of ``a`` against ``b`` over the seeds both have (d = a - b)."""

    n: int
    diff: Summary
    t_stat: float
    t_p: float
    wilcoxon_stat: float
    wilcoxon_p: float
    alpha: float = 0.05

    @property
    def within_noise(self) -> bool:
        """True when the interval of the mean difference contains 0 (or cannot be computed)."""
        d = self.diff
        return not (math.isfinite(d.half_width) and (d.low > 0 or d.high < 0))

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "too few seeds"
        if self.within_noise:
            return "within noise"
        return "better" if self.diff.mean > 0 else "worse"


def paired_t_test(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test on differences ``d``: (t, p). Constant d: p = 1 if all zero else 0."""
    x = _values(d)
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    sd = float(x.std(ddof=1))
    mean = float(x.mean())
    if sd == 0.0 or sd <= 1e-12 * abs(mean):  # constant differences (up to rounding)
        return (math.copysign(math.inf, mean), 0.0) if mean != 0 else (0.0, 1.0)
    from scipy import stats

    t = mean / (sd / math.sqrt(n))
    return t, float(2 * stats.t.sf(abs(t), n - 1))


def wilcoxon_signed_rank(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test on differences ``d``: (W+, p).

    Zero differences are dropped (Wilcoxon's convention); tied magnitudes get average ranks.
    For n <= 16 the p-value is exact: the fraction of the 2^n sign patterns whose |W+ - n(n+1)/4|
    is at least the observed one. Larger n uses SciPy's normal approximation.
    """
    x = _values(d)
    x = x[x != 0]
    n = len(x)
    if n == 0:
        return 0.0, 1.0
    from scipy import stats

    ranks = stats.rankdata(np.abs(x))
    w_plus = float(ranks[x > 0].sum())
    if n > 16:
        res = stats.wilcoxon(x, zero_method="wilcox", method="approx")
        return w_plus, float(res.pvalue)
    signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    w_all = (signs * ranks).sum(axis=1)
    center = n * (n + 1) / 4
    extreme = np.abs(w_all - center) >= abs(w_plus - center) - 1e-9
    return w_plus, float(extreme.mean())


def paired_compare(a: Mapping[Any, float], b: Mapping[Any, float], level: float = 0.95) -> PairedComparison:
    """Compare per-seed values ``a[seed]`` with ``b[seed]`` over the seeds present in both."""
    seeds = sorted(set(a) & set(b), key=str)
    pairs = [(float(a[s]), float(b[s])) for s in seeds if a[s] is not None and b[s] is not None]
    pairs = [p for p in pairs if math.isfinite(p[0]) and math.isfinite(p[1])]
    d = [x - y for x, y in pairs]
    t, tp = paired_t_test(d)
    w, wp = wilcoxon_signed_rank(d) if d else (math.nan, math.nan)
    return PairedComparison(len(d), summarize(d, level), t, tp, w, wp)


@dataclass(frozen=True)
class ComputeAccount:
    """Equal-compute accounting: example-gradients spent per run, relative to the baseline."""

    example_grads: Summary
    ratio: float
    wall_s: Summary


def compute_account(runs: Sequence[Mapping[str, Any]], baseline_runs: Sequence[Mapping[str, Any]]) -> ComputeAccount:
    """``runs`` and ``baseline_runs`` are final-metric dicts; ratio = mean example_grads / baseline's."""
    eg = summarize(r.get("example_grads") for r in runs)
    base = summarize(r.get("example_grads") for r in baseline_runs)
    ratio = eg.mean / base.mean if base.n and base.mean else math.nan
    return ComputeAccount(eg, ratio, summarize(r.get("wall_s") for r in runs))


def format_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
