"""Pre-registered hypotheses (issue 24): a suite's [[hypotheses]] checked strictly when it loads,
their one-sided and TOST p-values against SciPy's t-tests and a closed form, Holm over exactly
the declared family against a brute-force closed testing procedure, each resolution, and the
report's table."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from dipnet.errors import ConfigError
from dipnet.experiments import RunStore, parse_suite, run_suite, write_report
from dipnet.experiments.hypotheses import from_meta, suite_results
from dipnet.experiments.stats import adjust_family, holm_family, hypothesis_test, t_test, tost
from dipnet.experiments.tables import task_tables

# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_one_sided_t_test_matches_scipy(alternative):
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        a, b = rng.normal(0.7, 0.03, n), rng.normal(0.69, 0.03, n)
        want = sps.ttest_rel(a, b, alternative=alternative)
        t, p = t_test(a - b, alternative)
        assert t == pytest.approx(want.statistic, rel=1e-9) and p == pytest.approx(want.pvalue, rel=1e-9, abs=1e-15)
        shifted = sps.ttest_1samp(a - b, 0.004, alternative=alternative).pvalue
        assert t_test(a - b, alternative, null=0.004)[1] == pytest.approx(shifted, rel=1e-9, abs=1e-15)


def test_tost_is_the_larger_one_sided_p_and_agrees_with_the_90_percent_interval():
    rng = np.random.default_rng(1)
    agree = set()
    for _ in range(200):
        n = int(rng.integers(2, 9))
        d = rng.normal(rng.normal(0, 0.5), rng.uniform(0.05, 1.0), n)
        margin = float(rng.uniform(0.1, 1.5))
        want = max(sps.ttest_1samp(d, -margin, alternative="greater").pvalue,
                   sps.ttest_1samp(d, margin, alternative="less").pvalue)
        p, ci = tost(d, margin)
        assert p == pytest.approx(want, rel=1e-9, abs=1e-15)
        inside = -margin < ci.low and ci.high < margin
        assert inside == (p < 0.05)
        agree.add(inside)
    assert agree == {True, False}  # both outcomes were exercised


def test_closed_form_with_one_degree_of_freedom():
    # n = 2: t has 1 degree of freedom, the Cauchy distribution, with sf(t) = 1/2 - atan(t)/pi
    t, p = t_test([1.0, 3.0], "greater")  # mean 2, sd sqrt(2), standard error 1
    assert t == pytest.approx(2.0) and p == pytest.approx(0.5 - math.atan(2.0) / math.pi, rel=1e-12)
    assert t_test([1.0, 3.0], "less")[1] == pytest.approx(0.5 + math.atan(2.0) / math.pi, rel=1e-12)
    p, ci = tost([-0.5, 0.5], 1.0)  # standard error 0.5: both one-sided t's are 2 in size
    assert p == pytest.approx(0.5 - math.atan(2.0) / math.pi, rel=1e-12)
    half = math.tan(math.pi * 0.45) * 0.5  # the t_{0.95, 1} quantile times the standard error
    assert (ci.low, ci.high) == (pytest.approx(-half), pytest.approx(half))


def _closed_testing(pvalues: list[float]) -> list[float]:
    """Holm as closed testing with Bonferroni: the adjusted p of H_i is the largest, over every
    subset S of the family holding i, of min(1, |S| min_{j in S} p_j)."""
    m = len(pvalues)
    out = []
    for i in range(m):
        others = [j for j in range(m) if j != i]
        out.append(max(min(1.0, (len(s) + 1) * min(pvalues[j] for j in (i, *s)))
                       for k in range(m) for s in itertools.combinations(others, k)))
    return out


def test_holm_over_the_family_matches_closed_testing():
    assert holm_family([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # by hand
    rng = np.random.default_rng(2)
    for m in range(1, 7):
        for _ in range(20):
            p = list(rng.choice([0.001, 0.01, 0.02, 0.04, 0.2, 0.6], m) * rng.uniform(0.5, 1.0, m))
            assert holm_family(p) == pytest.approx(_closed_testing(p))
    # a test that could not be made stays in the family as p = 1 (and is reported as nan)
    adjusted = holm_family([0.01, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(_closed_testing([0.01, 1.0, 0.02])[0]) == pytest.approx(0.03)
    assert math.isnan(adjusted[1])


@pytest.mark.parametrize("d, direction, margin, want", [
    ([2.0, 2.2, 1.9, 2.1, 2.05], "greater", 0.5, "supported"),
    ([2.0, 2.2, 1.9, 2.1, 2.05], "less", 0.5, "contradicted"),
    ([2.0, 2.2, 1.9, 2.1, 2.05], "two-sided", None, "supported"),
    ([0.02, -0.03, 0.01, 0.0, -0.01], "greater", 0.5, "equivalent"),
    ([0.02, -0.03, 0.01, 0.0, -0.01], "greater", None, "inconclusive"),
    ([1.0, -1.2, 0.3, 0.9, -0.4], "greater", 0.5, "inconclusive"),
    ([1.0], "greater", 0.5, "inconclusive"),
])
def test_each_resolution(d, direction, margin, want):
    assert adjust_family([hypothesis_test(d, direction, margin)])[0].resolution == want


def test_resolution_uses_the_family_adjusted_p():
    # p = 0.03 alone supports; in a family of three with two null results Holm makes it 0.09
    d = [0.5, 1.6, -0.1, 1.1, 0.6]
    alone = hypothesis_test(d, "greater")
    assert 0.01 < alone.p < 0.05
    null = hypothesis_test([0.1, -0.1, 0.2, -0.2, 0.0], "greater")
    family = adjust_family([alone, null, null])
    assert family[0].holm_p == pytest.approx(_closed_testing([alone.p, null.p, null.p])[0])
    assert adjust_family([alone])[0].resolution == "supported" and family[0].resolution == "inconclusive"


# ---------------------------------------------------------------- suite files

BASE = """
name = "pre"
seeds = [0, 1, 2, 3, 4]
[tasks.t1]
data = "synthetic"
model = "mlp"
[tasks.t2]
data = "synthetic"
model = "mlp"
epochs = 2
[methods.erm]
[methods.dipnet]
[methods.input-noise]
sweep = { sigma = [0.1, 0.2] }
"""
STUDY = BASE + """
[[hypotheses]]
a = "dipnet"
b = "erm"
direction = "greater"
margin = 0.5
[[hypotheses]]
a = "input-noise"
b = "erm"
task = "t2"
direction = "two-sided"
"""


def _hyp(body: str) -> str:
    return BASE + "[[hypotheses]]\n" + body


@pytest.mark.parametrize("text, message", [
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "bigger"'), "hypotheses[0].direction: must be one of greater, less, "
                                                          "two-sided, got 'bigger'"),
    (_hyp('a = "dipnt"\nb = "erm"\ndirection = "greater"'), "hypotheses[0].a: 'dipnt' is not one of the suite's "
                                                           "methods: erm, dipnet, input-noise"),
    (_hyp('a = "input-noise(sigma=0.1)"\nb = "erm"\ndirection = "greater"'), "is not one of the suite's methods"),
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "greater"\ntask = "t3"'), "hypotheses[0].task: 't3' is not one of "
                                                                         "the suite's tasks: t1, t2"),
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "greater"\nmargin = -1'), "hypotheses[0].margin must be a number in "
                                                                         "(0, 100]"),
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "greater"\nmargin = "0.5"'), "a quoted string"),
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "greater"\nalpha = 0.1'), "hypotheses[0].alpha: unknown key; "
                                                                         "allowed: a, b, task, direction, margin"),
    (_hyp('a = "dipnet"\nb = "erm"'), "hypotheses[0].direction: is missing"),
    (_hyp('a = "dipnet"\nb = "dipnet"\ndirection = "less"'), "compares 'dipnet' with itself"),
    (_hyp('a = "dipnet"\nb = "erm"\ndirection = "greater"\n[[hypotheses]]\na = "erm"\nb = "dipnet"\n'
          'direction = "less"\ntask = "t1"'), "hypotheses[1]: tests erm and dipnet on task 't1' again (hypotheses[0])"),
    ("hypotheses = []\n" + BASE, "hypotheses: must be one or more [[hypotheses]] tables"),
    ("hypotheses = 3\n" + BASE, "hypotheses: must be one or more [[hypotheses]] tables"),
])
def test_bad_hypotheses_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_suite(text, "pre.toml")
    assert str(info.value).startswith("pre.toml: ") and message in str(info.value) and "\n" not in str(info.value)


def test_a_suite_parses_its_hypotheses_and_the_store_records_them(tmp_path):
    suite = parse_suite(STUDY, "pre.toml")
    assert [(h.a, h.b, h.task, h.direction, h.margin) for h in suite.hypotheses] == [
        ("dipnet", "erm", "", "greater", 0.5), ("input-noise", "erm", "t2", "two-sided", None)]
    assert parse_suite(BASE, "pre.toml").hypotheses == []
    run_suite(suite, tmp_path / "s.sqlite", train_fn=_fake)
    with RunStore(tmp_path / "s.sqlite") as store:
        assert from_meta(store.get_meta("suite:pre")) == suite.hypotheses
    run_suite(parse_suite(BASE.replace('"pre"', '"plain"'), "plain.toml"), tmp_path / "s.sqlite", train_fn=_fake)
    with RunStore(tmp_path / "s.sqlite") as store:
        assert "hypotheses" not in store.get_meta("suite:plain")  # no key: earlier stores and exports read the same


# ---------------------------------------------------------------- over runs, and the report

_SHIFT = {"dipnet": 0.02, "input-noise": 0.0}
_NOISE = [0.004, -0.006, 0.006, -0.001, 0.002]


def _fake(config: dict, run_dir: str) -> dict:
    seed, method = config["seed"], config["method"]
    acc = 0.6 + 0.01 * seed + _SHIFT.get(method, 0.0) + (_NOISE[seed] if method != "erm" else 0.0)
    acc += 0.001 * config["epochs"] * (method == "dipnet") + (0.003 if config.get("method_params") == {"sigma": 0.2} else 0)
    return {"final": {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "train_acc": 0.9, "gap": 0.3,
                      "example_grads": 10, "wall_s": 1.0}, "history": []}


def test_the_family_is_exactly_the_declared_tests(tmp_path):
    run_suite(parse_suite(STUDY, "pre.toml"), tmp_path / "s.sqlite", train_fn=_fake)
    with RunStore(tmp_path / "s.sqlite") as store:
        tables = task_tables(store, "pre")
        results = suite_results(tables, store.get_meta("suite:pre"))
        acc = {(r.task, r.method, r.seed): r.final["test_acc"] for r in store.runs(suite="pre")}
    assert [(r.hypothesis.statement, r.task) for r in results] == [
        ("dipnet > erm", "t1"), ("dipnet > erm", "t2"), ("input-noise ≠ erm", "t2")]
    # the oracle: SciPy on the per-seed accuracies (input-noise: the configuration best on validation, sigma 0.2)
    seeds = range(5)
    pairs = [("t1", "dipnet", "greater"), ("t2", "dipnet", "greater"), ("t2", "input-noise(sigma=0.2)", "two-sided")]
    raw = [sps.ttest_rel([100 * acc[(t, m, s)] for s in seeds], [100 * acc[(t, "erm", s)] for s in seeds],
                         alternative=alt).pvalue for t, m, alt in pairs]
    assert [r.test.p for r in results] == pytest.approx(raw, rel=1e-9)
    assert [r.test.holm_p for r in results] == pytest.approx(_closed_testing(raw), rel=1e-9)
    tost_raw = [max(sps.ttest_1samp(d, -0.5, alternative="greater").pvalue,
                    sps.ttest_1samp(d, 0.5, alternative="less").pvalue)
                for d in ([100 * (acc[(t, "dipnet", s)] - acc[(t, "erm", s)]) for s in seeds] for t in ("t1", "t2"))]
    assert [r.test.tost_p for r in results[:2]] == pytest.approx(tost_raw, rel=1e-9)
    assert math.isnan(results[2].test.tost_p)  # no margin: no equivalence test
    # the task tables' Holm is over the suite's 4 comparisons with erm, a different family
    assert tables[0].family == 4 and "4 paired comparisons" in tables[0].holm_note()
    assert [r.test.resolution for r in results] == ["supported" if p < 0.05 else "inconclusive"
                                                    for p in _closed_testing(raw)]
    assert [r.test.resolution for r in results] == ["supported", "supported", "inconclusive"]


def test_the_report_shows_the_hypotheses_and_states_the_family(tmp_path):
    run_suite(parse_suite(STUDY, "pre.toml"), tmp_path / "s.sqlite", train_fn=_fake)
    files = write_report(tmp_path / "s.sqlite", tmp_path / "rep")
    md, page = files.markdown.read_text(), files.html.read_text()
    assert "## Pre-registered hypotheses: pre" in md and "| dipnet > erm | t1 | greater | ±0.5 | 5 |" in md
    assert "Family: the 2 declared hypotheses over their tasks, 3 tests, and nothing else" in md
    assert "Pre-registered hypotheses: pre" in page and "input-noise ≠ erm" in page
    assert md.index("Pre-registered") < md.index("## pre / t1")
    run_suite(parse_suite(BASE, "pre.toml"), tmp_path / "plain.sqlite", train_fn=_fake)
    plain = write_report(tmp_path / "plain.sqlite", tmp_path / "rep2").markdown.read_text()
    assert "Pre-registered" not in plain.split("A suite's pre-registered")[1] and "p (t, Holm): Holm over the 4" in plain


def test_a_finetune_suite_declares_hypotheses_too():
    pytest.importorskip("transformers")
    import dipnet.llm  # noqa: F401  (registers kind = "finetune")

    text = ('kind = "finetune"\nname = "ft"\nseeds = [0, 1]\n[train]\nmodel = "tiny-llama"\n[tasks.sums]\n'
            'task = "chain_sum"\n[methods.sft]\n[methods.neftune]\n')
    suite = parse_suite(text + '[[hypotheses]]\na = "neftune"\nb = "sft"\ndirection = "greater"\n', "ft.toml",
                        check_names=False)
    assert [(h.a, h.b, h.direction) for h in suite.hypotheses] == [("neftune", "sft", "greater")]
    with pytest.raises(ConfigError, match=r"ft.toml: hypotheses\[0\].b: 'dft' is not one of the suite's methods: sft, neftune"):
        parse_suite(text + '[[hypotheses]]\na = "neftune"\nb = "dft"\ndirection = "greater"\n', "ft.toml",
                    check_names=False)
