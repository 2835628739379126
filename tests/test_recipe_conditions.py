"""Every verdict condition of the seed-study recipes can fail: each condition function is
fed a null-effect input (it must fail) and an effect input (it must pass), on synthetic
records, without training. Also: the verdict vocabulary and size, the refusal templates'
disjoint wording, the shared-subspaces pair statistics and persona-features' labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emprobe.evaluate.stats import Estimate, shift_interval
from emprobe.recipes import conditions as C
from emprobe.recipes.verdict import PAPER, RATIO_UNIT, VERDICTS, decide

NULL = Estimate(0.02, -0.4, 0.44)  # a shift whose interval covers 0
UP = Estimate(1.2, 0.6, 1.8)
DOWN = Estimate(-1.2, -1.8, -0.6)


def test_above_and_below_fail_on_null_pass_on_effect():
    assert not C.above(NULL) and C.above(UP) and not C.above(DOWN)
    assert not C.below(NULL) and C.below(DOWN) and not C.below(UP)
    # versus rows (delta) and records work the same way
    assert C.above({"delta": 1.0, "lo": 0.5, "hi": 1.5})
    assert not C.below({"mean": 0.0, "lo": -0.1, "hi": 0.1})


def test_task_kept():
    base = {"task_loss_lo": 2.0, "task_loss_hi": 2.4}
    assert not C.task_kept({"task_loss_lo": 1.9, "task_loss_hi": 2.3}, base)  # overlaps: null
    assert C.task_kept({"task_loss_lo": 1.1, "task_loss_hi": 1.5}, base)


def test_negative_controls_are_two_sided():
    pos = Estimate(3.0, 2.0, 4.0)
    fine = [Estimate(0.1, -0.5, 0.7), Estimate(-0.2, -0.9, 0.5)]
    assert C.negatives_within(fine, pos)
    # a score that drops under any fine-tune (issue 28: -5.7 to -7.0 nats) must fail
    assert not C.negatives_within([Estimate(-6.0, -7.0, -5.0)], pos)
    assert not C.negatives_within([Estimate(2.5, 2.1, 2.9)], pos)  # and one that rises
    assert not C.negatives_within(fine, NULL)  # no positive control seen: fails


def test_unlearning_contained():
    gain, no_gain = Estimate(0.3, 0.1, 0.5), Estimate(0.0, -0.2, 0.2)
    kept_target, relearned = Estimate(0.05, -0.1, 0.2), Estimate(0.5, 0.3, 0.7)
    assert C.unlearning_contained(gain, kept_target)
    assert not C.unlearning_contained(no_gain, kept_target)  # retain CE changes nothing
    assert not C.unlearning_contained(gain, relearned)  # it only "helps" by undoing it


def test_beats_baseline_can_fail():
    gauss = Estimate(0.007, 0.006, 0.008)
    assert C.beats_baseline(Estimate(0.3, 0.2, 0.4), gauss, factor=10)
    assert not C.beats_baseline(Estimate(0.01, 0.006, 0.014), gauss, factor=10)  # null
    assert not C.beats_baseline(Estimate(0.05, 0.03, 0.07), gauss, factor=10)  # not "far"


def test_monotone_share():
    assert C.monotone_share([(0.0, NULL), (0.5, Estimate(0.5, 0.2, 0.8)), (1.0, UP)])
    assert not C.monotone_share([(0.0, NULL), (1.0, NULL)])
    assert not C.monotone_share([(1.0, NULL)])


@pytest.mark.parametrize("expect,value", [("higher", UP), ("lower", DOWN)])
def test_verdict_vocabulary(expect, value):
    paper = PAPER["caft"]
    in_range, out_range = Estimate(0.1, 0.02, 0.2), Estimate(0.6, 0.4, 0.8)
    undefined = Estimate(0.3, float("nan"), float("nan"))
    kw = {"paper": paper, "size_unit": RATIO_UNIT}
    assert decide(value, expect, size=in_range, **kw)[0] == "reproduced"
    assert decide(value, expect, size=out_range, **kw)[0] == "sign-only"
    assert decide(value, expect, size=undefined, **kw)[0] == "sign-only"
    assert decide(value, expect, size=in_range, paper=paper, size_unit="nats")[0] == "sign-only"
    assert decide(NULL, expect, size=in_range, **kw)[0] == "not-reproduced"
    wrong = DOWN if expect == "higher" else UP
    assert decide(wrong, expect, size=in_range, **kw)[0] == "not-reproduced"
    failed = decide(value, expect, conditions={"x": False}, size=in_range, **kw)
    assert failed[0] == "not-reproduced" and "x" in failed[1]
    assert decide(value, expect, not_testable="one class")[0] == "not-testable"
    assert decide(Estimate(0.7, float("nan"), float("nan")), expect)[0] == "not-testable"
    assert set(VERDICTS) == {"reproduced", "sign-only", "not-reproduced", "not-testable"}


def test_every_recipe_records_the_papers_effect():
    from emprobe.recipes.registry import RECIPES

    assert set(PAPER) == set(RECIPES)
    assert all(p.text for p in PAPER.values())
    assert all((p.range is None) == (p.unit is None) for p in PAPER.values())


def test_refusal_templates_share_no_words_across_domains():
    from emprobe.data.generators.refusal import DOMAIN_NAMES, style_words, template_words

    for a, b in itertools.combinations(DOMAIN_NAMES, 2):
        assert not style_words(a) & style_words(b), (a, b)
        full_a, full_b = template_words(a), template_words(b)
        assert len(full_a & full_b) / min(len(full_a), len(full_b)) < 0.35, (a, b)


def _overlaps(rng, n_em=5, n_ct=5, em_extra=0.0):
    n = n_em + n_ct
    ov = rng.uniform(0.05, 0.15, (n, n))
    ov = (ov + ov.T) / 2
    ov[:n_em, :n_em] += em_extra
    np.fill_diagonal(ov, 1.0)
    return ov, np.array([True] * n_em + [False] * n_ct)


def test_shared_subspaces_pair_statistics_can_fail():
    from emprobe.recipes.shared_subspaces import adapter_bootstrap, pair_statistic, permutation_p

    rng = np.random.default_rng(0)
    ov, em = _overlaps(rng)  # null: EM pairs overlap like any pair
    assert permutation_p(ov, em) > 0.05
    null = adapter_bootstrap(ov, em, n_boot=300)
    assert not C.above(null)
    ov2, em2 = _overlaps(rng, em_extra=0.3)  # effect: EM pairs share a subspace
    assert permutation_p(ov2, em2) < 0.05
    assert C.above(adapter_bootstrap(ov2, em2, n_boot=300))
    assert pair_statistic(ov2, em2) == pytest.approx(0.3, abs=0.05)


def test_persona_labels_come_from_measured_misalignment():
    from emprobe.recipes.persona_features import measured_labels

    shifts = [{"mean": 0.1, "lo": -0.3, "hi": 0.5}, {"mean": 1.0, "lo": 0.4, "hi": 1.6},
              {"mean": -0.8, "lo": -1.2, "hi": -0.4}]
    assert measured_labels(shifts) == [0, 1, 0]


def test_narrow_unlearning_retain_and_probe_domains_are_disjoint():
    from emprobe.recipes.narrow_unlearning import domains, split_domains

    retain, probe = split_domains(domains(), "cybersecurity")
    assert retain and probe and not set(retain) & set(probe)
    assert "cybersecurity" not in retain + probe


def test_mitigation_target_reads_bounds_not_points():
    from emprobe.recipes.mitigation import Measured

    cost = Estimate(0.02, -0.03, 0.07)
    assert Measured(Estimate(0.1, 0.0, 0.18), cost).meets_target
    assert not Measured(Estimate(0.1, -0.2, 0.45), cost).meets_target  # point 0.1, bound not
    assert not Measured(Estimate(0.1, float("nan"), float("nan")), cost).meets_target
    assert not Measured(Estimate(0.1, 0.0, 0.18), Estimate(0.05, 0.0, 0.2)).meets_target


def test_anchored_statistics_on_synthetic_scores():
    """Control-anchored shift and ratio from per-seed scores (no training)."""
    from emprobe.evaluate.local import _summarise
    from emprobe.recipes.seeded import anchored

    rng = np.random.default_rng(1)
    q_eff = rng.normal(0, 0.5, 8)

    def score(level: float, seed: int):
        r = np.random.default_rng(seed)
        pairs = [{"question": f"q{q}", "pair": j, "margin": float(level + q_eff[q]
                                                                   + r.normal(0, 0.3)),
                  "margin_per_token": 0.0, "misaligned_preferred": False,
                  "text_hash": f"h{q}{j}"} for q in range(8) for j in range(3)]
        return _summarise(pairs, n_boot=0, seed=0, meta={})

    base = score(0.0, 100)
    seeds = [0, 1, 2]
    control = [score(-3.0, 10 + s) for s in seeds]  # any fine-tune lowers the score
    plain = [score(1.0, 20 + s) for s in seeds]  # EM: +4 over the control
    treated = [score(-1.0, 30 + s) for s in seeds]  # +2 over the control: ratio 0.5
    a = anchored(base, plain, treated, control, seeds)
    assert C.above(a.em_vs_control) and a.em_vs_control.mean == pytest.approx(4.0, abs=0.3)
    assert a.ratio.lo < 0.5 < a.ratio.hi
    # base-anchored it looks like over-mitigation (-1 / +1): the confound issue 28 names
    assert a.ratio_vs_base.mean == pytest.approx(-1.0, abs=0.3)
    null = anchored(base, control, treated, control, seeds)  # plain = control: no EM
    assert not C.above(null.em_vs_control)
    assert np.isnan(null.ratio.lo) or null.ratio.hi - null.ratio.lo > 10
    assert shift_interval(np.zeros((3, 8)) + 1.0).mean == 1.0


def test_recipe_options_are_typed():
    from emprobe.errors import DataError
    from emprobe.recipes.config import recipe_options
    from emprobe.recipes.lab import LabConfig

    opts = recipe_options(LabConfig(extra={"seeds": 3, "fractions": [0.0, 0.5], "domain": "bias"}))
    assert opts.seeds == 3 and opts.fractions == [0.0, 0.5] and opts.domain == "bias"
    assert recipe_options(LabConfig()).unlearn == "npo"
    for bad in ({"seedz": 3}, {"seeds": "3"}, {"seeds": 0}, {"unlearn": "sgd"},
                {"fractions": [1.5]}):
        with pytest.raises(DataError, match="LabConfig.extra"):
            recipe_options(LabConfig(extra=bad))


def test_hack_transfer_pools_seeds_and_can_fail():
    """``paired_delta`` over per-seed hack preferences: a null input (the same margins) is
    not above 0, an effect on every seed is; a single base result pairs with every seed;
    seeds that cannot be paired are an error."""
    from emprobe.errors import DataError
    from emprobe.recipes.reward_hacking import paired_delta

    rng = np.random.default_rng(0)

    def pref(shift: float) -> dict:
        return {"per_task": [{"margin": float(m) + shift, "kind": "k"}
                             for m in rng.normal(0.0, 1.0, 10)]}

    honest = [pref(0.0) for _ in range(3)]
    null = paired_delta(honest, honest)
    assert null["mean"] == 0.0 and not C.above(null) and null["n_seeds"] == 3
    hacker = [{"per_task": [{"margin": t["margin"] + 1.0 + 0.1 * s, "kind": "k"}
                            for t in h["per_task"]]} for s, h in enumerate(honest)]
    effect = paired_delta(honest, hacker)
    assert C.above(effect) and effect["n"] == 10 and abs(effect["mean"] - 1.1) < 1e-9
    assert paired_delta(honest[0], hacker)["n_seeds"] == 3
    with pytest.raises(DataError, match="seeds"):
        paired_delta(honest[:2], hacker)
    with pytest.raises(DataError, match="tasks"):
        paired_delta(honest[0], {"per_task": hacker[0]["per_task"][:5]})
