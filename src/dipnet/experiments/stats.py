"""Statistics over seeds: mean, standard deviation (ddof = 1), Student-t 95% intervals, paired
tests, effect sizes and the Holm correction for many comparisons.

Runs of two methods with the same seed share data order and initialization, so they are
compared *paired*: the per-seed differences d_i = a_i - b_i are summarized by their mean, a
t interval mean(d) ± t_{0.975, n-1} s_d / sqrt(n), the paired t-test (t = mean(d) / (s_d /
sqrt(n)), df = n-1), the exact sign-flip permutation test of mean(d) (all 2^n sign patterns,
exact for the few seeds suites run; it needs no normality, and with n seeds its smallest
two-sided p-value is 2/2^n: 0.25 for 3, 0.0625 for 5), and the paired effect size
d_z = mean(d) / s_d (Cohen 1988). A suite makes many comparisons at once: :func:`holm` adjusts
their t-test p-values (Holm 1979), and a difference is called better or worse only when its
adjusted p-value is below 0.05. SciPy (a dependency of scikit-learn) supplies the t distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError


def t_quantile(q: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy import stats

    if df < 1:
        return math.nan
    return float(stats.t.ppf(q, df))


def _values(values: Iterable[float | None]) -> np.ndarray:
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


def summarize(values: Iterable[float | None], level: float = 0.95) -> Summary:
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
    """Paired comparison of ``a`` against ``b`` over the seeds both have (d = a - b).

    ``holm_p`` is the t-test p-value adjusted over every comparison of the suite (set by
    :func:`adjust`); without it the verdict uses the unadjusted one."""

    n: int
    diff: Summary
    t_stat: float
    t_p: float
    sign_flip_p: float
    effect_size: float
    holm_p: float | None = None
    alpha: float = 0.05

    @property
    def p(self) -> float:
        return self.t_p if self.holm_p is None else self.holm_p

    @property
    def within_noise(self) -> bool:
        """True unless the (Holm-adjusted) p-value is below ``alpha`` and the interval excludes 0."""
        d = self.diff
        excludes = math.isfinite(d.half_width) and (d.low > 0 or d.high < 0)
        return not (excludes and math.isfinite(self.p) and self.p < self.alpha)

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


def sign_flip_test(d: Sequence[float]) -> float:
    """Two-sided exact permutation p-value of mean(d) under symmetry about 0: the share of the
    2^n sign patterns whose |mean| is at least the observed one (n <= 20; beyond, 2^20 patterns
    drawn with a fixed seed)."""
    x = _values(d)
    n = len(x)
    if n == 0:
        return math.nan
    observed = abs(float(x.mean())) - 1e-12 * max(1.0, float(np.abs(x).max()))
    if n <= 20:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(0).choice((-1, 1), size=(2**20, n))
    return float((np.abs(signs @ np.abs(x)) / n >= observed).mean())


def effect_size(d: Sequence[float]) -> float:
    """Paired effect size d_z = mean(d) / sd(d) (ddof = 1); nan below 2 values or with sd 0."""
    x = _values(d)
    if len(x) < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    return float(x.mean()) / sd if sd > 0 else math.nan


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979): with the m finite p-values sorted,
    ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``; nan stays nan (and does not count)."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p))
    m = len(finite)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjust(comparisons: Sequence[PairedComparison | None]) -> list[PairedComparison | None]:
    """The comparisons with their Holm-adjusted p-values (over all of them) filled in."""
    adjusted = holm([c.t_p if c is not None else math.nan for c in comparisons])
    return [None if c is None else replace(c, holm_p=a) for c, a in zip(comparisons, adjusted)]


def resolvable_difference(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` t interval of a mean paired difference over ``n`` seeds with
    spread ``sd``: differences smaller than this cannot be told from 0."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def paired_compare(a: Mapping[Any, float | None], b: Mapping[Any, float | None], level: float = 0.95) -> PairedComparison:
    """Compare per-seed values ``a[seed]`` with ``b[seed]`` over the seeds present in both."""
    seeds = sorted(set(a) & set(b), key=str)
    pairs = [(float(x), float(y)) for x, y in ((a[s], b[s]) for s in seeds) if x is not None and y is not None]
    pairs = [p for p in pairs if math.isfinite(p[0]) and math.isfinite(p[1])]
    d = [x - y for x, y in pairs]
    t, tp = paired_t_test(d)
    return PairedComparison(len(d), summarize(d, level), t, tp, sign_flip_test(d), effect_size(d))


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
