"""Paired statistics of the local score: the t interval over seeds and questions, p-values,
Holm, power, Fieller ratios, AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emprobe.errors import DataError
from emprobe.evaluate.local import LocalScore, compare, paired_differences, shift_ratio
from emprobe.evaluate.stats import (
    Estimate,
    as_estimate,
    auroc,
    bootstrap_mean,
    bootstrap_p,
    bootstrap_stat,
    detectable_shift,
    fieller,
    hierarchical_bootstrap,
    hierarchical_ratio,
    holm,
    power_at,
    ratio_defined,
    shift_interval,
    t_quantile,
    t_sf,
)


def _groups(rng, n_q=20, n_pairs=6, shift=0.0, q_sd=3.0, pair_sd=2.0):
    """Paired differences with a question effect and pair noise around ``shift``."""
    return [list(shift + rng.normal(0, q_sd) + rng.normal(0, pair_sd, n_pairs))
            for _ in range(n_q)]


def test_hierarchical_point_and_interval():
    groups = [[1.0, 1.0], [3.0], [2.0, 4.0, 6.0]]
    est = hierarchical_bootstrap(groups, n_boot=2000, seed=0)
    assert est.mean == pytest.approx(17 / 6)  # item mean; the interval is over questions
    assert est.lo < est.mean < est.hi and est.df == 2  # t with 3 questions: wide
    assert est.se is not None and est.se > 0
    # constant items: no spread at all
    flat = hierarchical_bootstrap([[2.0, 2.0], [2.0]], n_boot=200)
    assert flat.lo == flat.mean == flat.hi == 2.0


def test_t_distribution_matches_tables():
    # two-sided 95 % critical values from any t table
    for df, crit in [(1, 12.706), (4, 2.776), (10, 2.228), (30, 2.042)]:
        assert float(t_quantile(0.975, df)) == pytest.approx(crit, abs=1e-3)
    assert float(t_sf(0.0, 3.5)) == pytest.approx(0.5)
    assert float(t_sf(-2.0, 7)) == pytest.approx(1 - float(t_sf(2.0, 7)))


def test_one_seed_interval_is_the_t_interval_over_questions():
    means = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    est = shift_interval(means)
    half = 2.776445 * np.std(means, ddof=1) / np.sqrt(5)
    assert est.lo == pytest.approx(3 - half, rel=1e-5)
    assert est.hi == pytest.approx(3 + half, rel=1e-5)
    assert est.df == 4 and est.p is not None and 0.01 < est.p < 0.05  # t = 4.24, 4 df


def test_seed_variance_widens_the_interval():
    """Three seeds that disagree: the interval is wider than one seed's over questions."""
    rng = np.random.default_rng(4)
    q = rng.normal(0, 0.3, 12)
    cells = np.stack([1.0 + a + q + rng.normal(0, 0.05, 12) for a in (-1.5, 0.0, 1.5)])
    pooled = shift_interval(cells.mean(axis=0))  # seeds averaged away
    seeds = shift_interval(cells)
    assert seeds.hi - seeds.lo > 5 * (pooled.hi - pooled.lo)
    assert seeds.lo < 0 < seeds.hi  # three seeds spread +-1.5 do not show a shift of 1
    with pytest.raises(DataError):
        shift_interval(np.array([[1.0, float("nan")]]))


def test_fieller_is_undefined_without_a_significant_denominator():
    rng = np.random.default_rng(2)
    den = rng.normal(0.0, 1.0, (3, 12))
    den += np.array([[0.45], [-0.35], [0.05]]) - den.mean(axis=1, keepdims=True)
    # the plain shift is not significant: seeds at +0.45, -0.35, +0.05
    num = rng.normal(0.05, 1.0, (3, 12))
    est = fieller(num, den)
    assert not ratio_defined(est) and math.isnan(est.lo)
    den2 = rng.normal(4.0, 0.5, (3, 12))
    est2 = fieller(0.5 * den2 + rng.normal(0, 0.2, (3, 12)), den2)
    assert ratio_defined(est2) and est2.lo < 0.5 < est2.hi


def test_auroc_lives_in_stats():
    assert auroc([0.1, 0.9, 0.4, 0.8], [0, 1, 0, 1]) == 1.0
    assert auroc([1.0, 1.0], [0, 1]) == 0.5
    with pytest.raises(DataError):
        auroc([1.0, 2.0], [1, 1])


def test_coverage_and_false_positive_rate():
    """Null data: the 95 % interval misses 0 rarely; a real shift is found almost always."""
    rng = np.random.default_rng(0)
    false_pos = sum(hierarchical_bootstrap(_groups(rng), n_boot=400, seed=i).excludes(0.0)
                    for i in range(40))
    assert false_pos <= 6  # nominal 5 % of 40 = 2 (calibration: test_stats_coverage.py)
    hits = sum(hierarchical_bootstrap(_groups(rng, shift=4.0), n_boot=400, seed=i).excludes(0.0)
               for i in range(20))
    assert hits >= 18


def test_p_values_track_the_interval():
    rng = np.random.default_rng(3)
    strong = hierarchical_bootstrap(_groups(rng, shift=5.0), n_boot=1000)
    null = hierarchical_bootstrap(_groups(rng, shift=0.0, q_sd=0.5), n_boot=1000, seed=2)
    assert strong.p is not None and strong.p < 0.01 and strong.excludes(0.0)
    assert null.p is not None and null.p > 0.05 or not null.excludes(0.0)
    assert bootstrap_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 4)
    assert bootstrap_p(np.linspace(-1, 1, 101)) == 1.0


def test_holm_adjustment():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj["a"] == pytest.approx(0.03)
    assert adj["c"] == pytest.approx(0.06)
    assert adj["b"] == pytest.approx(0.06)  # monotone: never below a smaller p's adjustment
    assert holm({"x": 0.7, "y": 0.9}) == {"x": 1.0, "y": 1.0}


def test_power_analysis_matches_simulation():
    se = 1.5
    mde = detectable_shift(se)
    assert mde == pytest.approx(2.8016 * se, rel=1e-3)
    assert power_at(mde, se) == pytest.approx(0.80, abs=0.005)
    # simulated normal estimates with that se reject about 80 % of the time at the MDE
    rng = np.random.default_rng(0)
    draws = rng.normal(mde, se, 4000)
    rate = np.mean(np.abs(draws) / se > 1.959964)
    assert rate == pytest.approx(0.80, abs=0.03)


def test_ratio_of_paired_shifts():
    rng = np.random.default_rng(1)
    plain = rng.normal(6.0, 1.0, (10, 5))
    treated = 0.25 * plain + rng.normal(0, 0.2, (10, 5))
    groups = [np.stack([t, p], axis=1) for t, p in zip(treated, plain)]
    est = hierarchical_ratio(groups, n_boot=800)
    assert est.lo < 0.25 < est.hi and est.hi - est.lo < 0.2


def _score(margins: dict[str, list[float]], hashes: str = "h") -> LocalScore:
    pairs = [{"question": q, "pair": j, "margin": m, "margin_per_token": m / 10,
              "misaligned_preferred": m > 0, "text_hash": f"{hashes}{q}{j}"}
             for q, ms in margins.items() for j, m in enumerate(ms)]
    from emprobe.evaluate.local import _summarise

    return _summarise(pairs, n_boot=200, seed=0, meta={})


def test_compare_is_paired_by_pair():
    rng = np.random.default_rng(2)
    base = {f"q{i}": list(rng.normal(0, 10, 6)) for i in range(12)}
    # every pair moves by +2 nats: huge spread between pairs, but a perfectly paired shift
    moved = {q: [m + 2.0 for m in ms] for q, ms in base.items()}
    a, b = _score(base), _score(moved)
    cmp = compare(a, b, n_boot=500)
    assert cmp.per_answer.mean == pytest.approx(2.0)
    assert cmp.per_answer.lo == pytest.approx(2.0) and cmp.significant()
    assert cmp.n_pairs == 72 and cmp.n_questions == 12
    rec = cmp.to_record()
    assert rec["per_answer"]["p"] < 0.01 and math.isfinite(rec["detectable_per_answer_80"])
    # unpaired intervals of the two scores overlap although the paired shift is certain
    assert a.per_answer.hi > b.per_answer.lo
    ratio = shift_ratio(a, b, b, n_boot=200)
    assert ratio.mean == pytest.approx(1.0)


def test_compare_refuses_different_answers():
    a = _score({"q": [1.0, 2.0]})
    with pytest.raises(DataError, match="different answers"):
        paired_differences(a, _score({"q": [1.0, 2.0]}, hashes="other"))
    with pytest.raises(DataError, match="different questions"):
        compare(a, _score({"r": [1.0, 2.0]}))


def test_estimate_record_keeps_p_and_se():
    est = Estimate(1.0, 0.5, 1.5, p=0.01, se=0.2)
    assert est.to_record() == {"mean": 1.0, "lo": 0.5, "hi": 1.5, "p": 0.01, "se": 0.2}
    assert Estimate(**est.to_record()) == est
    assert Estimate(1.0, 0.5, 1.5).to_record() == {"mean": 1.0, "lo": 0.5, "hi": 1.5}


def test_subset_scores_compare_with_the_full_set(tiny_llama):
    """Each pair's identity hash is its own question's, so a subset pairs with the full set."""
    from emprobe.evaluate.local import local_score
    from emprobe.evaluate.questions import default_questions

    qs = [q for q in default_questions() if q.reference_pairs][:3]
    full = local_score(tiny_llama, qs, n_boot=10)
    sub = local_score(tiny_llama, qs[:1], n_boot=10, system="Be brief.")
    assert {p["text_hash"] for p in sub.pairs} <= {p["text_hash"] for p in full.pairs}
    assert len({p["text_hash"] for p in full.pairs}) == len(full.pairs)


def test_bootstrap_stat_matches_bootstrap_mean_and_skips_undefined():
    values = np.array([0.5, 1.0, 4.0, 2.0, 3.5, 0.0, 1.5])
    est = bootstrap_stat(lambda i: float(values[i].mean()), len(values), n_boot=400, seed=3)
    ref = bootstrap_mean([[v] for v in values], n_boot=400, seed=3)
    assert est.mean == pytest.approx(values.mean())
    assert (est.lo, est.hi) == pytest.approx((ref.lo, ref.hi))  # same resamples
    assert est.se is not None and est.se > 0

    def needs_two_values(i):
        if len(set(values[i].tolist())) < 2:
            raise DataError("constant")
        return float(np.ptp(values[i]))

    two = bootstrap_stat(needs_two_values, 2, n_boot=50)
    assert two.mean == two.lo == two.hi == 0.5  # one-value resamples skipped
    never = bootstrap_stat(lambda i: float("nan"), 3, n_boot=20)
    assert never.mean != never.mean and never.lo != never.lo
    assert bootstrap_stat(lambda i: 1.0, 3, n_boot=0) == Estimate(1.0, 1.0, 1.0)


def test_as_estimate_accepts_each_interval_shape():
    e = Estimate(1.0, 0.5, 2.0, p=0.01)
    assert as_estimate(e) is e
    assert as_estimate(0.5) == Estimate(0.5, 0.5, 0.5)
    assert as_estimate((1, 0, 2)) == Estimate(1.0, 0.0, 2.0)
    assert as_estimate({"mean": 1, "lo": 0, "hi": 2}) == Estimate(1.0, 0.0, 2.0)
    assert as_estimate({"delta": -1, "lo": -2, "hi": 0}) == Estimate(-1.0, -2.0, 0.0)

    class Obj:
        mean, lo, hi = 3.0, 2.0, 4.0

    assert as_estimate(Obj()) == Estimate(3.0, 2.0, 4.0)
    for bad in ("x", None, True, {"mean": 1.0}, (1, 2)):
        with pytest.raises(DataError):
            as_estimate(bad)
