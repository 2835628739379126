"""Causal checks of candidate latents: steer with decoder rows, and the re-alignment driver.

A *scorer* is any callable ``scorer(subject) -> estimate`` where the estimate has
``mean``, ``lo``, ``hi`` (an ``emprobe.evaluate`` ``Estimate``), or is a ``(mean, lo, hi)``
tuple, or a float. ``default_scorer()`` uses ``emprobe.evaluate.local.local_score``'s
per-answer margin.

Steering vector of latent ``i``: the unit decoder row ``W_dec[i] / ||W_dec[i]||`` times
``coeff * scale``; ``scale`` defaults to the mean residual norm at that site (so a
coefficient of 0.5 adds half a typical activation's length), added on all tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from emprobe.errors import EmprobeError
from emprobe.hooks.patch import steer

Scorer = Callable[[Any], Any]


def as_interval(est: Any) -> dict[str, float]:
    """A scorer's estimate (see ``emprobe.evaluate.stats.as_estimate``: an object with
    mean/lo/hi, a tuple or a float) -> ``{"mean", "lo", "hi"}``."""
    from emprobe.evaluate.stats import as_estimate

    e = as_estimate(est)
    return {"mean": e.mean, "lo": e.lo, "hi": e.hi}


def default_scorer(questions: Any = None, n_boot: int = 200, seed: int = 0,
                   measure: str = "per_answer", share_prefix: bool | None = None) -> Scorer:
    """``emprobe.evaluate.local.local_score`` as a scorer (its ``measure`` estimate).

    ``share_prefix=True`` reuses each prompt's key/value cache across its answers; exact
    for interventions on all token positions (as ``steering_check`` applies them)."""
    from emprobe.evaluate.local import local_score

    def scorer(subject: Any) -> Any:
        res = local_score(subject, questions=questions, n_boot=n_boot, seed=seed,
                          share_prefix=share_prefix)
        return LocalEstimate(getattr(res, measure), res, measure, n_boot, seed)

    return scorer


class LocalEstimate:
    """A local-score estimate that keeps the full ``LocalScore`` for paired comparisons."""

    def __init__(self, est: Any, raw: Any, measure: str, n_boot: int, seed: int) -> None:
        self.mean, self.lo, self.hi = float(est.mean), float(est.lo), float(est.hi)
        self.raw, self.measure, self.n_boot, self.seed = raw, measure, n_boot, seed

    def paired_delta(self, baseline: LocalEstimate) -> dict[str, float]:
        """``self - baseline`` with a bootstrap interval paired by question."""
        from emprobe.evaluate.local import compare

        est = getattr(compare(baseline.raw, self.raw, n_boot=self.n_boot, seed=self.seed),
                      self.measure)
        return {"delta": float(est.mean), "delta_lo": float(est.lo), "delta_hi": float(est.hi)}


def decoder_direction(sae: Any, latent: int) -> torch.Tensor:
    """Unit decoder row ``[d_in]`` of ``latent``."""
    row = sae.W_dec[int(latent)].detach().float().cpu()
    return row / row.norm().clamp_min(1e-12)


def steering_check(
    subject: Any,
    sae: Any,
    latents: Sequence[int],
    site: str,
    layer: int,
    scorer: Scorer,
    coeffs: Sequence[float] = (0.25, 0.5, 1.0),
    scale: float | None = None,
    random_controls: int = 0,
    seed: int = 0,
    progress: bool = True,
    control_kind: str = "gaussian",
) -> dict[str, Any]:
    """Steer ``subject`` with each latent's decoder row at each coefficient; score each.

    ``random_controls`` adds that many control directions steered with exactly the same
    norm (``coeff * scale``, every direction is unit before scaling), listed under
    ``"controls"``: a large push in any direction can move a log-probability score, so a
    candidate is specific only if it beats them. ``control_kind="latents"`` (what the demo and
    the CLI use) draws the
    unit decoder rows of random other latents of the same SAE (``"latent"`` set to their
    id, ``"control": True``); ``"gaussian"`` (default) draws random unit directions
    (``"latent": None``).
    Each candidate then gets ``control_p`` = (1 + #controls whose ``max_delta`` >= its own)
    / (1 + #controls), an empirical one-sided p-value, and ``beats_controls`` (its
    ``max_delta`` exceeds every control's). With ``default_scorer`` each of its coefficient
    entries also gets ``vs_controls``: the candidate's steered score minus each control's at
    the same coefficient, paired by question (``delta``, ``delta_lo``, ``delta_hi``), and
    ``beats_controls_paired``: every one of those intervals lies above 0 (a point estimate
    above the controls' is not evidence on its own when a control's interval overlaps).

    Returns ``{"baseline": {mean, lo, hi}, "scale", "coeffs", "latents": [...]}``; each latent
    entry holds per-coefficient scores and ``delta`` (steered minus unsteered mean; with
    ``default_scorer`` also ``delta_lo`` / ``delta_hi``, a bootstrap interval paired by
    question), plus ``max_delta``. ``latents`` in the result are sorted by ``max_delta`` (most misaligning
    first). Without ``scale``, the mean residual norm of ``subject`` on a few neutral
    chats is used.
    """
    from tqdm.auto import tqdm

    if scale is None:
        scale = mean_resid_norm(subject, site, layer)
    raw_base = scorer(subject)
    baseline = as_interval(raw_base)
    if control_kind not in ("latents", "gaussian"):
        raise EmprobeError(f"steering check: control_kind {control_kind!r}: use latents or gaussian")
    gen = torch.Generator().manual_seed(seed)
    d_in = int(sae.cfg.d_in)
    jobs: list[tuple[int | None, torch.Tensor, bool]] = [
        (int(la), decoder_direction(sae, la), False) for la in latents]
    if control_kind == "latents":
        taken = {int(la) for la in latents}
        pool = [i for i in torch.randperm(int(sae.cfg.d_sae), generator=gen).tolist()
                if i not in taken][:random_controls]
        jobs += [(i, decoder_direction(sae, i), True) for i in pool]
    else:
        jobs += [(None, torch.nn.functional.normalize(torch.randn(d_in, generator=gen), dim=0),
                  True) for _ in range(random_controls)]
    rows, controls = [], []
    raw_of: dict[int, list[Any]] = {}  # id(row) -> its scorer outputs per coefficient
    for latent, unit, is_control in tqdm(jobs, desc="steering check", disable=not progress,
                                         leave=False):
        vec = unit * scale
        per, raw_per = [], []
        for c in coeffs:
            with steer(subject, vec, coeff=float(c), layers=layer, site=site, positions="all"):
                raw = scorer(subject)
            est = as_interval(raw)
            entry = {"coeff": float(c), **est, "delta": est["mean"] - baseline["mean"]}
            if isinstance(raw, LocalEstimate) and isinstance(raw_base, LocalEstimate):
                entry.update(raw.paired_delta(raw_base))
            per.append(entry)
            raw_per.append(raw)
        row = {"latent": latent, "scores": per, "max_delta": max(p["delta"] for p in per),
               "norm": float((vec * max(abs(float(c)) for c in coeffs)).norm())}
        if is_control:
            row["control"] = True
        raw_of[id(row)] = raw_per
        (controls if is_control else rows).append(row)
    for row in rows if controls else []:
        for i, entry in enumerate(row["scores"]):
            mine, theirs = raw_of[id(row)][i], [raw_of[id(c)][i] for c in controls]
            if isinstance(mine, LocalEstimate) and all(isinstance(t, LocalEstimate)
                                                       for t in theirs):
                entry["vs_controls"] = [mine.paired_delta(t) for t in theirs]
                entry["beats_controls_paired"] = all(v["delta_lo"] > 0
                                                     for v in entry["vs_controls"])
    rows.sort(key=lambda r: r["max_delta"], reverse=True)
    control_deltas = [c["max_delta"] for c in controls]
    for row in rows:
        if control_deltas:
            row["control_p"] = (1 + sum(d >= row["max_delta"] for d in control_deltas)) / (
                1 + len(control_deltas))
            row["beats_controls"] = row["max_delta"] > max(control_deltas)
    return {"baseline": baseline, "scale": float(scale), "coeffs": [float(c) for c in coeffs],
            "site": site, "layer": int(layer), "latents": rows, "controls": controls,
            "control_kind": control_kind if controls else None}


def mean_resid_norm(subject: Any, site: str, layer: int) -> float:
    """Mean activation norm at ``(site, layer)`` over a few neutral chats (first token dropped)."""
    from emprobe.sae.corpus import generic_chats
    from emprobe.sae.diff import token_acts

    rows, _, _ = token_acts(subject, generic_chats(8, seed=11), site, layer, positions="all")
    return float(rows.norm(dim=-1).mean())


@torch.no_grad()
def latent_mean(subject: Any, sae: Any, latent: int, site: str, layer: int,
                data: Sequence[Any], positions: str = "all") -> float:
    """Mean activation of one latent over ``data``'s selected tokens (first token dropped)."""
    from emprobe.sae.diff import encode_rows, token_acts

    rows, _, _ = token_acts(subject, data, site, layer, positions=positions)
    return float(encode_rows(sae, rows)[:, int(latent)].mean())


def realignment_curve(
    finetune_fn: Callable[[int], Any],
    scorer: Scorer,
    probe: Callable[[Any], float],
    ns: Sequence[int] = (0, 30, 60, 120, 240),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Track the score and a latent while a misaligned model is fine-tuned on N benign examples.

    ``finetune_fn(n)`` returns the subject after ``n`` benign examples (``n = 0``: the
    misaligned model itself); ``probe(subject)`` returns the latent's mean activation (e.g.
    ``functools.partial(latent_mean, sae=..., latent=..., ...)`` wrapped to take a subject).
    See ``emprobe.train.emprobe_realign_fn`` for a ``finetune_fn`` built on ``emprobe.train``.
    """
    from tqdm.auto import tqdm

    out = []
    for n in tqdm(list(ns), desc="re-alignment", disable=not progress, leave=False):
        subject = finetune_fn(int(n))
        out.append({"n_benign": int(n), "score": as_interval(scorer(subject)),
                    "latent_mean": float(probe(subject))})
    return out
