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
adjusted p-value is below 0.05.

A pre-registered hypothesis (a suite's ``[[hypotheses]]``) is tested by :func:`hypothesis_test`:
the one-sided t-test in its declared direction, the one-sided test the other way, and TOST
equivalence within its margin (:func:`tost`); :func:`adjust_family` Holm-adjusts each over
exactly the declared family. SciPy (a dependency of scikit-learn) supplies the t distribution.
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


ALTERNATIVES = ("greater", "less", "two-sided")


def t_test(d: Sequence[float], alternative: str = "two-sided", null: float = 0.0) -> tuple[float, float]:
    """One-sample t-test of mean(d) against ``null`` (df = n-1): (t, p), p for ``alternative``
    ("two-sided", "greater": mean > null, "less": mean < null). Constant d (up to rounding): p = 0
    when it lies on the alternative's side of ``null``, else 1."""
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    x = _values(d) - null
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    sd = float(x.std(ddof=1))
    mean = float(x.mean())
    if sd == 0.0 or sd <= 1e-12 * abs(mean):  # constant differences (up to rounding)
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
        side = {"two-sided": mean != 0, "greater": mean > 0, "less": mean < 0}[alternative]
        return t, 0.0 if side else 1.0
    from scipy import stats

    t = mean / (sd / math.sqrt(n))
    p = {"two-sided": 2 * stats.t.sf(abs(t), n - 1), "greater": stats.t.sf(t, n - 1),
         "less": stats.t.cdf(t, n - 1)}[alternative]
    return t, float(p)


def paired_t_test(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test on differences ``d``: (t, p). Constant d: p = 1 if all zero else 0."""
    return t_test(d)


def tost(d: Sequence[float], margin: float) -> tuple[float, Summary]:
    """Two one-sided tests of equivalence (Schuirmann 1987) of mean(d) within (-margin, +margin):
    p = max(p of mean > -margin, p of mean < +margin), and the 90% t interval of mean(d), which lies
    inside (-margin, +margin) exactly when p < 0.05."""
    if not (isinstance(margin, (int, float)) and margin > 0 and math.isfinite(margin)):
        raise ConfigError(f"an equivalence margin must be a positive number, got {margin!r}")
    lower, upper = t_test(d, "greater", -margin)[1], t_test(d, "less", margin)[1]
    return (max(lower, upper) if math.isfinite(lower) and math.isfinite(upper) else math.nan), summarize(d, level=0.90)


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


def holm_family(pvalues: Sequence[float]) -> list[float]:
    """Holm over exactly the ``len(pvalues)`` tests given: a missing (nan) p-value counts as 1,
    so the family stays the declared one, and stays nan in the result."""
    adjusted = holm([p if p is not None and math.isfinite(p) else 1.0 for p in pvalues])
    return [a if p is not None and math.isfinite(p) else math.nan for p, a in zip(pvalues, adjusted)]


@dataclass(frozen=True)
class HypothesisTest:
    """A declared comparison of ``a`` with ``b`` over paired seeds (d = a - b): ``p`` is the t-test's
    p-value in the declared ``direction`` ("greater": a > b, "less", or "two-sided"),
    ``p_opposite`` the one-sided p-value the other way (nan for "two-sided"), ``tost_p`` the TOST
    p-value within +-``margin`` (nan without one) with ``ci90`` its 90% interval. The ``holm_*``
    fields are the same p-values Holm-adjusted over the declared family (:func:`adjust_family`)."""

    n: int
    diff: Summary
    direction: str
    margin: float | None
    p: float
    p_opposite: float
    tost_p: float
    ci90: Summary
    holm_p: float | None = None
    holm_opposite_p: float | None = None
    holm_tost_p: float | None = None
    alpha: float = 0.05

    def _below(self, adjusted: float | None, raw: float) -> bool:
        p = raw if adjusted is None else adjusted
        return math.isfinite(p) and p < self.alpha

    @property
    def resolution(self) -> str:
        """"supported" (the declared direction, adjusted p < alpha), else "contradicted" (the
        opposite direction, adjusted p < alpha), else "equivalent" (adjusted TOST p < alpha), else
        "inconclusive"."""
        if self._below(self.holm_p, self.p):
            return "supported"
        if self._below(self.holm_opposite_p, self.p_opposite):
            return "contradicted"
        if self._below(self.holm_tost_p, self.tost_p):
            return "equivalent"
        return "inconclusive"


def hypothesis_test(d: Sequence[float], direction: str, margin: float | None = None) -> HypothesisTest:
    """Test differences ``d`` (a - b, in the units of ``margin``) for a declared hypothesis."""
    opposite = {"greater": "less", "less": "greater"}.get(direction)
    p = t_test(d, direction)[1]
    tost_p, ci90 = tost(d, margin) if margin is not None else (math.nan, summarize(d, level=0.90))
    return HypothesisTest(len(_values(d)), summarize(d), direction, margin, p,
                          t_test(d, opposite)[1] if opposite else math.nan, tost_p, ci90)


def adjust_family(tests: Sequence[HypothesisTest]) -> list[HypothesisTest]:
    """The tests with each kind of p-value (declared direction, opposite, TOST) Holm-adjusted over
    exactly these tests, the declared family (a test that could not be made counts as p = 1)."""
    holm_p, opposite, tost_p = (holm_family([getattr(t, k) for t in tests]) for k in ("p", "p_opposite", "tost_p"))
    return [replace(t, holm_p=a, holm_opposite_p=b, holm_tost_p=c) for t, a, b, c in zip(tests, holm_p, opposite, tost_p)]


def resolvable_difference(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` t interval of a mean paired difference over ``n`` seeds with
    spread ``sd``: differences smaller than this cannot be told from 0."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def paired_differences(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> list[float]:
    """``a[seed] - b[seed]`` over the seeds where both are finite numbers, in seed order."""
    seeds = sorted(set(a) & set(b), key=str)
    pairs = [(float(x), float(y)) for x, y in ((a[s], b[s]) for s in seeds) if x is not None and y is not None]
    return [x - y for x, y in pairs if math.isfinite(x) and math.isfinite(y)]


def paired_compare(a: Mapping[Any, float | None], b: Mapping[Any, float | None], level: float = 0.95) -> PairedComparison:
    """Compare per-seed values ``a[seed]`` with ``b[seed]`` over the seeds present in both."""
    d = paired_differences(a, b)
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


def format_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
