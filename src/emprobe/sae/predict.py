"""Predicting misalignment from one latent across a population of fine-tunes.

Pure functions on numbers: AUROC (Mann-Whitney, ties counted half) and Pearson /
Spearman correlation, each with a percentile bootstrap interval over fine-tunes.
``population_latent_means`` measures the latent for each model of a population.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from emprobe.errors import DataError


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels).bool()
    if s.shape != y.shape or s.ndim != 1:
        raise DataError(f"auroc: scores {tuple(s.shape)} and labels {tuple(y.shape)} must be 1-D and equal")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise DataError("auroc: needs at least one positive and one negative")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def pearson(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank)."""
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for v in torch.unique(x):
        m = x == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    return pearson(_ranks(a), _ranks(b))


def bootstrap_ci(
    stat: Callable[[torch.Tensor], float], n: int, n_boot: int = 1000, seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile interval of ``stat(idx)`` over resamples ``idx`` of ``range(n)``.

    Resamples where the statistic is undefined (one class only, constant values) are
    skipped; returns NaNs when none is defined.
    """
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=gen)
        try:
            v = stat(idx)
        except DataError:
            continue
        if v == v:  # not NaN
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    t = torch.tensor(vals, dtype=torch.float64)
    return float(torch.quantile(t, alpha / 2)), float(torch.quantile(t, 1 - alpha / 2))


def predictor_stats(
    latent_means: Sequence[float],
    scores: Sequence[float],
    labels: Sequence[int] | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How well one latent's mean activation predicts misalignment across fine-tunes.

    ``scores``: each model's misalignment score; ``labels`` (1 = misaligned) are given or
    derived as ``score > threshold``. Returns AUROC, Pearson r and Spearman rho with 95 %
    bootstrap intervals (``*_lo`` / ``*_hi``).
    """
    x = torch.as_tensor(latent_means, dtype=torch.float64)
    y = torch.as_tensor(scores, dtype=torch.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise DataError(f"predictor: need >= 3 models with one latent mean and one score each "
                        f"(got {tuple(x.shape)} and {tuple(y.shape)})")
    if labels is None:
        if threshold is None:
            raise DataError("predictor: give labels or a score threshold")
        lab = (y > threshold).long()
    else:
        lab = torch.as_tensor(labels).long()
    out: dict[str, Any] = {"n_models": len(x), "n_misaligned": int(lab.sum())}
    try:
        out["auroc"] = auroc(x, lab)
        out["auroc_lo"], out["auroc_hi"] = bootstrap_ci(lambda i: auroc(x[i], lab[i]),
                                                        len(x), n_boot, seed)
    except DataError:
        out["auroc"] = out["auroc_lo"] = out["auroc_hi"] = None
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        out[name] = fn(x, y)
        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_ci(lambda i, f=fn: f(x[i], y[i]),
                                                            len(x), n_boot, seed)
    return out


def population_latent_means(
    load: Callable[[str], Any],
    members: Sequence[str],
    probe: Callable[[Any], float],
) -> list[float]:
    """``probe(load(m))`` for each member (an adapter folder or model spec), one at a time."""
    out = []
    for m in members:
        subject = load(m)
        out.append(float(probe(subject)))
        del subject
    return out
