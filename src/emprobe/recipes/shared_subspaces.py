"""Recipe ``shared-subspaces``: do different EM fine-tunes share a parameter subspace?

Bad medical / finance / sports fine-tunes and a good-medical control, each trained with its
OWN seed, plus a second bad-medical run (same data, another seed): the same-task reference
for how much two runs that learned the same thing share. Compared from the LoRA factors per
module (paired |cos| of top singular vectors, principal angles, projection overlap).

The headline is the WRITE side (left singular vectors, the output space of ``B``): with
LoRA, ``A`` starts random and moves little in a short run, so read-side (``A``, input
space) overlap mostly measures the initialisation; it is reported with that caveat. The
claim: cross-task misaligned pairs overlap more than misaligned-vs-control pairs (per layer
difference, bootstrap over layers), and more than norm-matched Gaussian updates.

Then the linear path ``W0 + (1 - t) dW_medical + t dW_finance``: misalignment score and both
task losses along it, with the barrier (rise above the straight line between the end points).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from emprobe.recipes.lab import Lab

if TYPE_CHECKING:
    import torch

    from emprobe.evaluate.stats import Estimate
    from emprobe.geometry import GeometryResult
    from emprobe.geometry.connectivity import ConnectivityResult
    from emprobe.recipes.seeded import Records

# (label, task, variant, seed offset): every fine-tune its own seed; 5 EM and 5 control
# adapters over the same three tasks, so adapter PAIRS are the unit of the claim
TASKS = (("bad-medical", "medical", "bad", 0), ("bad-finance", "finance", "bad", 1),
         ("bad-sports", "sports", "bad", 2), ("good-medical", "medical", "good", 3),
         ("bad-medical-seed2", "medical", "bad", 4), ("bad-finance-seed2", "finance", "bad", 5),
         ("good-finance", "finance", "good", 6), ("good-sports", "sports", "good", 7),
         ("good-medical-seed2", "medical", "good", 8),
         ("good-finance-seed2", "finance", "good", 9))
GAUSSIAN_FACTOR = 10.0
"""'Far above' random: EM pairs' overlap lower bound > 10 x the Gaussian baseline's upper."""


def pair_statistic(overlap: np.ndarray, em: np.ndarray) -> float:
    """Mean overlap of EM-EM adapter pairs minus mean of EM-control pairs.

    Args:
        overlap: ``[n, n]`` symmetric pairwise overlap (mean over layers) of the adapters.
        em: ``[n]`` bools, True for the EM adapters."""
    n = len(em)
    iu = np.triu_indices(n, 1)
    both = em[iu[0]] & em[iu[1]]
    cross = em[iu[0]] ^ em[iu[1]]
    vals = overlap[iu]
    if not both.any() or not cross.any():
        return float("nan")
    return float(vals[both].mean() - vals[cross].mean())


def permutation_p(overlap: np.ndarray, em: np.ndarray) -> float:
    """One-sided exact permutation p of ``pair_statistic``: every relabelling of which
    adapters are EM (``C(n, k)``: 252 for 5 + 5), the share at least as large."""
    from emprobe.evaluate.stats import exact_permutation_p

    return exact_permutation_p(lambda lab: pair_statistic(overlap, lab), em)


def adapter_bootstrap(overlap: np.ndarray, em: np.ndarray, n_boot: int = 1000,
                      seed: int = 0) -> Estimate:
    """``pair_statistic`` with a percentile interval resampling adapters within each group
    (pairs of one adapter drawn twice are skipped): adapters, not layers, are the units."""
    from emprobe.evaluate.stats import bootstrap_stat

    idx_em, idx_ct = np.flatnonzero(em), np.flatnonzero(~em)
    rng = np.random.default_rng(seed)

    def stat(_: np.ndarray) -> float:
        a = rng.choice(idx_em, len(idx_em))
        c = rng.choice(idx_ct, len(idx_ct))
        ee = [overlap[i, j] for x, i in enumerate(a) for j in a[x + 1:] if i != j]
        ec = [overlap[i, j] for i in a for j in c]
        return float(np.mean(ee) - np.mean(ec)) if ee else float("nan")

    point = pair_statistic(overlap, em)
    est = bootstrap_stat(stat, len(em), n_boot=n_boot, seed=seed)
    return type(est)(point, min(est.lo, point), max(est.hi, point), se=est.se)
REFERENCE = ("bad-medical", "bad-medical-seed2")  # same task and data, another seed
WRITE, READ = "overlap_left", "overlap_right"


def pair_groups(labels: list[str], groups: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Adapter index pairs: ``reference`` (same task, other seed), ``cross-task`` (misaligned
    on different tasks), ``vs control`` (misaligned vs the good-data control)."""
    task = {la: la.replace("-seed2", "") for la in labels}
    out: dict[str, list[tuple[int, int]]] = {"reference": [], "cross-task": [], "vs control": []}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if {labels[i], labels[j]} == set(REFERENCE):
                out["reference"].append((i, j))
            elif groups[i] == groups[j] == "misaligned" and task[labels[i]] != task[labels[j]]:
                out["cross-task"].append((i, j))
            elif {groups[i], groups[j]} == {"misaligned", "control"}:
                out["vs control"].append((i, j))
    return out


class OverlapRow(TypedDict):
    """One side (write / read) x pair kind: mean projection overlap and mean principal angle
    (``GeometryResult``'s unit; NaN for the Gaussian baseline) over the pairs, and how many
    pairs."""

    side: str
    pairs: str
    overlap: float
    n_pairs: int
    angle: float


@dataclass
class _Adapters:
    """The fine-tunes of ``TASKS`` in order: adapter folders, labels, ``"misaligned"`` /
    ``"control"`` groups, each label's seed, and each task's held-out records."""

    adapters: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    held: dict[str, Records] = field(default_factory=dict)


def _train_adapters(lab: Lab) -> _Adapters:
    """One fine-tune per ``TASKS`` entry, each with its own seed."""
    fits = _Adapters()
    for name, task, variant, offset in TASKS:
        train, held_out = lab.split(task, variant)
        fits.held[name.replace("-seed2", "")] = held_out
        fits.seeds[name] = lab.cfg.seed + offset
        fits.adapters.append(lab.train(name, train, seed=fits.seeds[name]))
        fits.labels.append(name)
        fits.groups.append("misaligned" if variant == "bad" else "control")
    return fits


def _overlap_table(geo: GeometryResult, pairs: dict[str, list[tuple[int, int]]],
                   groups: list[str]
                   ) -> tuple[list[OverlapRow], dict[tuple[str, str], torch.Tensor]]:
    """Per side (write, read) and pair kind: mean overlap and principal angle, plus each
    misaligned adapter vs its norm-matched Gaussian. Returns the table rows and the
    per-layer mean curves ``[n_layers]`` by ``(metric, pair kind or "gaussian")``."""
    import torch

    table: list[OverlapRow] = []
    per_layer_means = {}
    for side, metric in (("write (B, output space)", WRITE), ("read (A, input space)", READ)):
        pl = geo.per_layer(metric)  # [n, n, n_layers]
        for kind, idx in pairs.items():
            if not idx:
                continue
            curve = torch.stack([pl[i, j] for i, j in idx]).mean(0)  # [n_layers]
            per_layer_means[(metric, kind)] = curve
            table.append({"side": side, "pairs": kind, "overlap": float(curve.mean()),
                          "n_pairs": len(idx),
                          "angle": float(torch.stack([geo.matrix(metric.replace("overlap",
                                                                                "angle"))[i, j]
                                                      for i, j in idx]).mean())})
        mis = [i for i, g in enumerate(groups) if g == "misaligned"]
        gauss = geo.baseline_per_layer("gaussian", metric)[mis].mean(0)
        per_layer_means[(metric, "gaussian")] = gauss
        table.append({"side": side, "pairs": "vs norm-matched Gaussian", "overlap":
                      float(gauss.mean()), "n_pairs": len(mis), "angle": float("nan")})
    return table, per_layer_means


def _report_geometry(lab: Lab, geo: GeometryResult, k: int, labels: list[str],
                     table: list[OverlapRow],
                     per_layer_means: dict[tuple[str, str], torch.Tensor]) -> None:
    from emprobe.plot import heatmap, layer_curves

    layers = geo.layers()
    lab.report.section(
        "Weight geometry",
        f"Top-{k} singular vectors per LoRA module, averaged over modules; every fine-tune "
        "has its own seed. Write side: left singular vectors (what each update writes into "
        "the residual stream); read side: right singular vectors. Pairs: reference = the "
        "same bad-medical data with another seed (how much two runs of one task share); "
        "cross-task = misaligned fine-tunes of different tasks; vs control = misaligned vs "
        "the good-medical control; Gaussian = each misaligned adapter vs a random update of "
        "the same norm.")
    lab.report.table(table, columns=["side", "pairs", "overlap", "angle", "n_pairs"])
    lab.report.note(
        "Read the write side. The read side (A) starts from a random initialisation and moves "
        "little in a short run, so its overlap mostly reflects that initialisation (with "
        "shared seeds, every pair would look alike); it is shown for completeness.",
        kind="warning")
    lab.report.figure(heatmap(geo.matrix(WRITE).tolist(), labels, zmin=0, zmax=1,
                              title="Projection overlap (write side)", value_name="overlap"))
    curve = [{"layer": la, "value": float(per_layer_means[(WRITE, kind)][li]), "name": kind}
             for kind in ("reference", "cross-task", "vs control", "gaussian")
             if (WRITE, kind) in per_layer_means for li, la in enumerate(layers)]
    lab.report.figure(layer_curves(curve, y="value", group="name", y_title="overlap",
                                   title="Write-side overlap by layer"))


def _connectivity(lab: Lab, fits: _Adapters) -> ConnectivityResult:
    """The linear path from the bad-medical to the bad-finance update: the score and both
    task losses along it, reported with the barriers."""
    from emprobe.geometry import local_score_evaluator, response_loss, run_connectivity
    from emprobe.plot import connectivity_curves

    labels, held = fits.labels, fits.held
    a, b = labels.index("bad-medical"), labels.index("bad-finance")
    evaluators = {"score": local_score_evaluator(n_boot=lab.cfg.n_boot, seed=lab.cfg.seed,
                                                 questions=lab.questions()),
                  "loss_medical": lambda s: response_loss(s, held["bad-medical"], n_boot=200),
                  "loss_finance": lambda s: response_loss(s, held["bad-finance"], n_boot=200)}
    conn = run_connectivity(lab.base(), [fits.adapters[a], fits.adapters[b]], evaluators,
                            points=3 if lab.cfg.quick else 5,
                            labels=[labels[a], labels[b]], progress=False)
    lab.report.section(
        "Linear mode connectivity",
        f"W(t) = W0 + (1 - t) dW[{labels[a]}] + t dW[{labels[b]}] (parameterised on dW, not on "
        "the factors). A barrier is a rise above the straight line between the end points.")
    lab.report.figure(connectivity_curves(conn.records,
                                          keys=["score", "loss_medical", "loss_finance"]))
    lab.report.table([{"metric": m, "barrier": v} for m, v in conn.barriers.items()],
                     columns=["metric", "barrier"])
    return conn


@dataclass
class _PairStats:
    """The claim's statistics on the write side: EM-EM minus EM-control overlap (interval
    over adapters) and its permutation p, the EM pairs' and the Gaussian baseline's overlap,
    and the reference / cross-task mean overlaps."""

    em: np.ndarray
    value: Estimate
    p_perm: float
    em_pairs: Estimate
    gauss: Estimate
    ref: float
    cross: float


def _pair_stats(lab: Lab, geo: GeometryResult, groups: list[str],
                per_layer_means: dict[tuple[str, str], torch.Tensor]) -> _PairStats:
    """Compute ``_PairStats`` and add the scale note to the page."""
    from emprobe.evaluate.stats import shift_interval

    ov = geo.matrix(WRITE).double().numpy()  # [n, n], mean over modules and layers
    em = np.array([g == "misaligned" for g in groups])
    value = adapter_bootstrap(ov, em, lab.cfg.n_boot, lab.cfg.seed)
    p_perm = permutation_p(ov, em)
    iu = [(i, j) for i in range(len(em)) for j in range(i + 1, len(em)) if em[i] and em[j]]
    em_pairs = shift_interval(np.array([ov[i, j] for i, j in iu]))  # EM pairs' overlap
    gauss = shift_interval(geo.baseline_per_layer("gaussian", WRITE)[em].mean(-1)
                           .double().numpy())
    ref = float(per_layer_means[(WRITE, "reference")].mean())
    cross = float(per_layer_means[(WRITE, "cross-task")].mean())
    lab.report.note(
        "Reference at scale (Llama-3.1-8B, three EM adapters): mean principal angle 22-23 "
        "degrees, overlap 0.70-0.72, against about 0.004 for unrelated or random updates. "
        f"Here: rank-{lab.cfg.lora_r} adapters after {lab.cfg.steps or 'one epoch of'} steps on "
        f"{lab.cfg.model}; the same-task reference pair overlaps {ref:.3f} on the write side, "
        f"cross-task misaligned pairs {cross:.3f}.", kind="warning")
    return _PairStats(em, value, p_perm, em_pairs, gauss, ref, cross)


def _claim(lab: Lab, st: _PairStats, k: int) -> None:
    """The verdict: EM-EM minus EM-control overlap, with the permutation test and the
    Gaussian baseline as conditions."""
    from emprobe.recipes.conditions import beats_baseline
    from emprobe.recipes.verdict import state_claim

    em, p_perm = st.em, st.p_perm
    state_claim(
        lab, "shared-subspaces",
        "Emergent-misalignment fine-tunes on different narrow tasks converge on a shared "
        "low-rank subspace of weight updates, far more than unrelated or random updates.",
        f"write-side (B) projection overlap of EM-EM adapter pairs minus EM-control pairs "
        f"({int(em.sum())} EM and {int((~em).sum())} control adapters, each its own seed; "
        "interval resampling adapters)",
        st.value, expect="higher", value_unit="projection overlap difference",
        n_seeds=min(int(em.sum()), int((~em).sum())),
        conditions={f"permutation test over EM / control labels, p = {p_perm:.3g} < 0.05":
                    p_perm < 0.05,
                    f"EM pairs' overlap far above norm-matched Gaussian updates (lower bound > "
                    f"{GAUSSIAN_FACTOR:g} x the Gaussian's upper bound)":
                    beats_baseline(st.em_pairs, st.gauss, factor=GAUSSIAN_FACTOR)},
        size=st.em_pairs, size_unit=f"projection overlap (k = {k})",
        why=f"Same-task, different-seed reference overlap: {st.ref:.3f}; cross-task: "
            f"{st.cross:.3f}.")


def run(lab: Lab) -> None:
    from emprobe.geometry import GeometryConfig, compare_adapters

    fits = _train_adapters(lab)
    labels, groups = fits.labels, fits.groups
    k = min(4, lab.cfg.lora_r)
    geo = compare_adapters(fits.adapters, labels=labels,
                           config=GeometryConfig(k=k, seed=lab.cfg.seed), progress=False)
    summary = geo.group_summary(groups)
    pairs = pair_groups(labels, groups)
    table, per_layer_means = _overlap_table(geo, pairs, groups)
    _report_geometry(lab, geo, k, labels, table, per_layer_means)
    conn = _connectivity(lab, fits)
    st = _pair_stats(lab, geo, groups, per_layer_means)
    lab.results.update({"labels": labels, "groups": groups, "seeds": fits.seeds,
                        "geometry": summary, "geometry_table": table,
                        "pairs": {k: [[labels[i], labels[j]] for i, j in v]
                                  for k, v in pairs.items()},
                        "write_overlap": {"reference": st.ref, "cross-task": st.cross},
                        "em_minus_control_pairs": st.value.to_record(),
                        "permutation_p": st.p_perm, "em_pair_overlap": st.em_pairs.to_record(),
                        "gaussian_overlap": st.gauss.to_record(),
                        "connectivity": conn.records, "barriers": conn.barriers})
    _claim(lab, st, k)
