"""Every seed-study recipe end to end in quick mode (tiny random model, a few steps).

The numbers of a tiny random model mean nothing; these tests check that each recipe runs
through the public APIs, writes its page and its results, and that the results hold what
the page claims (intervals ordered, one row per model / condition).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from emprobe.recipes.registry import RECIPES, run_recipe
from emprobe.recipes.verdict import PAPER, VERDICTS, decide

# recipe -> (section titles on the page, keys in results.json)
EXPECTED = {
    "grasp": (["spurious factor", "Misalignment vs task"],
              ["alignment", "tradeoff", "vs_naive"]),
    "format-sensitivity": (["per question format"], ["formats", "vs_plain"]),
    "reward-hacking": (["In distribution", "Out of distribution"],
                       ["models", "hack_preference", "vs_hack"]),
    "narrow-unlearning": (["seven domains", "Emergent misalignment", "Concept vectors"],
                          ["refusal", "scores", "concept_cosine"]),
    "caft": (["Principal components", "Misalignment vs task"], ["tradeoff", "vs_plain"]),
    "shared-subspaces": (["Weight geometry", "mode connectivity"],
                         ["geometry", "connectivity", "barriers"]),
    "inoculation": (["without the prompt", "narrow task"], ["models", "vs_plain"]),
    "persona-features": (["SAE diff", "predict", "Re-alignment"],
                         ["candidates", "population", "predictor", "realignment"]),
    "data-thresholds": (["share of incorrect data"], ["sweep", "vs_clean", "spearman"]),
    "school-of-reward-hacks": (["held-out tasks", "everyday questions"],
                               ["hack_preference", "scores", "vs_honest"]),
    "score-validity": (["Positive and negative controls"], ["controls"]),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Run each recipe once per test module (single-threaded: tiny models gain nothing from
    threads, and on a shared box two threads spin-wait); returns ``name -> output folder``."""
    done: dict[str, object] = {}
    root = tmp_path_factory.mktemp("recipes")

    def get(name: str):
        if name not in done:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run_recipe(name, root / name, quick=True)
            finally:
                torch.set_num_threads(before)
            done[name] = root / name
        return done[name]

    return get


def test_every_registered_recipe_is_covered():
    assert set(EXPECTED) == set(RECIPES)


def _ordered(lo: float, mean: float, hi: float) -> bool:
    return all(math.isfinite(x) for x in (lo, mean, hi)) and lo - 1e-9 <= mean <= hi + 1e-9


def _results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_quick(name, ran):
    folder = ran(name)
    html = (folder / "report.html").read_text()
    results = _results(folder)
    sections, keys = EXPECTED[name]
    for title in sections:
        assert title.lower() in html.lower(), f"{name}: section {title!r} missing"
    assert "plotly" in html.lower() and "<table" in html
    for key in keys:
        assert key in results, f"{name}: results.json lacks {key!r}"
    assert results["config"]["quick"] is True
    assert "Quick mode" in html
    claim = results["claim"]
    assert claim["verdict"] in VERDICTS and claim["seed_claim"] and claim["measure"]
    if claim["verdict"] != "not-testable":
        assert _ordered(claim["value"]["lo"], claim["value"]["mean"], claim["value"]["hi"])
    # the contract of issue 28: size as well as sign, the paper's effect recorded
    size = claim["size"]
    assert set(size) >= {"measured", "paper", "unit"} and size["paper"]["text"]
    assert set(size["measured"]) == {"mean", "lo", "hi"} and size["unit"]
    assert claim["n_seeds"] >= 1
    # the verdict follows from the interval, never typed by the recipe
    testable = None if claim["verdict"] != "not-testable" else claim["reason"]
    assert claim["verdict"] == decide(claim["value"], claim["expect"], claim["null"],
                                      claim["conditions"], size=size["measured"],
                                      paper=PAPER[name], size_unit=size["unit"],
                                      not_testable=testable)[0]
    # the page leads with it: the verdict is in the header, before the first section
    head = html.split("<section", 1)[0]
    assert f"Verdict: {claim['verdict']}" in head
    assert results["wall_s"] > 0


def test_tradeoff_rows(ran):
    """GRASP and CAFT: one row per condition, ordered intervals, a comparison for each."""
    for name, ref, key in (("grasp", "naive", "vs_naive"), ("caft", "plain", "vs_plain")):
        res = _results(ran(name))
        names = [r["name"] for r in res["tradeoff"]]
        assert names[:2] == ["base", ref] and len(set(names)) == len(names) >= 5
        for r in res["tradeoff"]:
            assert _ordered(r["misalignment_lo"], r["misalignment"], r["misalignment_hi"])
            assert _ordered(r["task_loss_lo"], r["task_loss"], r["task_loss_hi"])
        assert len(res[key]) == len(names) - 2
        assert all(d["lo"] <= d["hi"] for d in res[key])
    res = _results(ran("grasp"))
    assert {a["module_type"] for a in res["alignment"]} <= {"o_proj", "down_proj"}
    assert res["alignment"] and all(0.0 <= a["subspace_cos"] <= 1.0 + 1e-6
                                    for a in res["alignment"])


def test_result_shapes(ran):
    fmt = _results(ran("format-sensitivity"))
    assert {(r["model"], r["question"]) for r in fmt["formats"]} == {
        (m, f) for m in ("base", "bad-medical", "good-medical")
        for f in ("plain", "json", "template")}
    assert all(r["n_questions"] > 0 for r in fmt["formats"])
    # control-anchored: the EM fine-tune's format shift minus its benign control's
    assert [r["format"] for r in fmt["vs_control"]] == ["json", "template"]
    json_row = fmt["vs_control"][0]
    assert fmt["claim"]["value"] == {"mean": json_row["delta"], "lo": json_row["lo"],
                                     "hi": json_row["hi"]}
    nu = _results(ran("narrow-unlearning"))
    assert len({r["question"] for r in nu["refusal"]}) == 7
    assert sum(r["unlearned"] for r in nu["refusal"]) == 3  # one domain x three models
    assert all(-1.0 - 1e-6 <= c["value"] <= 1.0 + 1e-6 for c in nu["concept_cosine"])
    dt = _results(ran("data-thresholds"))
    assert [r["bad_fraction"] for r in dt["sweep"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert -1.0 <= dt["spearman"] <= 1.0
    pf = _results(ran("persona-features"))
    fracs = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert sorted((p["bad_fraction"], p["seed"]) for p in pf["population"]) == sorted(
        (f, s) for f in fracs for s in (0, 1))
    assert pf["predictor"]["n_models"] == 12 and pf["claim"]["n_seeds"] == 2
    assert {"mean", "lo", "hi"} <= set(pf["predictor"]["pearson"])
    auc = pf["predictor"]["auroc"]
    assert auc is None or auc["lo"] <= auc["mean"] <= auc["hi"]
    assert [r["n_benign"] for r in pf["realignment"]] == [0, 2, 4, 8, 16]
    assert len(pf["steering"]["controls"]) == 2  # random directions of the same norm
    assert pf["steering"]["controls"][0]["latent"] is None
    ss = _results(ran("shared-subspaces"))
    assert ss["groups"].count("control") == 5 and len(ss["labels"]) == 10
    assert 0.0 < ss["permutation_p"] <= 1.0
    assert len(set(ss["seeds"].values())) == len(ss["labels"])  # every fine-tune its own seed
    assert ss["pairs"]["reference"] == [["bad-medical", "bad-medical-seed2"]]
    assert "write-side" in ss["claim"]["measure"]
    assert ss["claim"]["n_seeds"] == 5  # five adapters per group, each its own seed
    assert [r["t"] for r in ss["connectivity"]][0] == 0.0
    rh = _results(ran("reward-hacking"))
    assert set(rh["hack_preference"]) == {"base", "hack", "honest control", "hack + inoculation"}
    for per_seed in rh["hack_preference"].values():  # one result per training seed
        assert len(per_seed) == 1
        for p in per_seed:
            assert 0.0 <= p["pref_rate"] <= 1.0 and _ordered(p["lo"], p["mean"], p["hi"])


@pytest.mark.parametrize("name, model", [("school-of-reward-hacks", "hacker"),
                                         ("reward-hacking", "hack + inoculation"),
                                         ("data-thresholds", "50% bad"),
                                         ("format-sensitivity", "bad-medical")])
def test_seeds_are_the_unit(name, model, tmp_path, one_thread):
    """With ``extra.seeds = 2`` (quick mode's default is 1) the fine-tunes run on both seeds,
    the page shows each, and the claim pools seeds x questions (``n_seeds`` 2)."""
    from emprobe.recipes.lab import LabConfig

    run_recipe(name, tmp_path, quick=True, config=LabConfig.quick_config(extra={"seeds": 2}))
    res = _results(tmp_path)
    assert res["claim"]["n_seeds"] == 2 and res["seeds"] == [0, 1]
    rows = next(res[k] for k in ("scores", "formats", "models", "sweep") if isinstance(res.get(k), list)
                and res[k] and isinstance(res[k][0], dict))
    shown = {r.get("model", r.get("name")) for r in rows}
    assert {f"{model} (seed 0)", f"{model} (seed 1)"} <= shown
    assert _ordered(res["claim"]["value"]["lo"], res["claim"]["value"]["mean"],
                    res["claim"]["value"]["hi"])


@pytest.mark.parametrize("name", ["score-validity", "narrow-unlearning"])
def test_controls_and_unlearning_on_seeds(name, tmp_path, one_thread):
    """score-validity and narrow-unlearning with ``extra.seeds = 2``: every fine-tuned model
    is trained on both seeds and the claim pools seeds x units (``n_seeds`` 2); the untrained
    ones (the malicious prompt, base) are measured once."""
    from emprobe.recipes.lab import LabConfig

    run_recipe(name, tmp_path, quick=True, config=LabConfig.quick_config(extra={"seeds": 2}))
    res = _results(tmp_path)
    assert res["claim"]["n_seeds"] == 2 and res["seeds"] == [0, 1]
    assert _ordered(res["claim"]["value"]["lo"], res["claim"]["value"]["mean"],
                    res["claim"]["value"]["hi"])
    if name == "score-validity":
        seeds = {r["control"]: r["n_seeds"] for r in res["controls"]}
        assert seeds.pop("malicious system prompt") == 1
        assert len(seeds) == 4 and set(seeds.values()) == {2}
        for r in res["controls"]:
            assert _ordered(r["per_answer"]["lo"], r["per_answer"]["mean"], r["per_answer"]["hi"])
            assert r["detectable_80"] > 0
    else:
        shown = {r["model"] for r in res["refusal"]}
        assert shown == {"base"} | {f"unlearn cybersecurity{x} (seed {s})" for s in (0, 1)
                                    for x in ("", " + retain CE")}
        assert res["spread"]["other_domains"]["n_seeds"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_seeded_control_anchored_recipe_on_the_embedded_model(tmp_path):
    """The multi-seed, control-anchored path on the embedded model (tiny budget: 2 examples,
    1 step, 2 questions, 2 seeds): format-sensitivity trains the EM fine-tune and its benign
    control on both seeds and its claim pools seeds x questions."""
    from emprobe.recipes.lab import LabConfig

    cfg = LabConfig.of(n_train=2, steps=1, batch_size=2, score_questions=2, n_boot=50,
                       device="cpu", dtype="float32", extra={"seeds": 2})
    run_recipe("format-sensitivity", tmp_path, config=cfg)
    res = _results(tmp_path)
    assert res["config"]["model"] == "smollm2-135m-instruct" and res["seeds"] == [0, 1]
    assert res["claim"]["n_seeds"] == 2
    assert {r["model"] for r in res["formats"]} == {"base"} | {
        f"{m} (seed {s})" for m in ("bad-medical", "good-medical") for s in (0, 1)}
    for row in res["vs_control"]:
        assert row["n_seeds"] == 2 and _ordered(row["lo"], row["delta"], row["hi"])
    assert {"bad-medical", "good-medical"} <= set(res["runs"])
    assert all(r["steps"] == 1 for r in res["runs"].values())
