"""Predicting misalignment from one latent across a population of fine-tunes.

Pure functions on numbers: AUROC (``emprobe.evaluate.stats.auroc``, the one AUROC,
re-exported here) and Pearson /
Spearman correlation, each an ``Estimate`` with a percentile bootstrap interval over
fine-tunes (``emprobe.evaluate.stats.bootstrap_stat``).
``population_latent_means`` measures the latent for each model of a population.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict, TypeVar

import numpy as np
import torch

from emprobe.errors import DataError
from emprobe.evaluate.stats import auroc, auroc_p_value

if TYPE_CHECKING:
    from emprobe.evaluate.stats import Estimate

T = TypeVar("T")


class PredictorStats(TypedDict):
    """``predictor_stats``' result: counts, AUROC (``None`` with one class only), its
    permutation p-value, and Pearson r / Spearman rho, each with a bootstrap interval."""

    n_models: int
    n_misaligned: int
    auroc: Estimate | None
    auroc_p: float | None
    pearson: Estimate
    spearman: Estimate


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


def predictor_stats(
    latent_means: Sequence[float],
    scores: Sequence[float],
    labels: Sequence[int] | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> PredictorStats:
    """How well one latent's mean activation predicts misalignment across fine-tunes.

    ``scores``: each model's misalignment score; ``labels`` (1 = misaligned) are given or
    derived as ``score > threshold``. Returns ``{"n_models", "n_misaligned", "auroc",
    "auroc_p", "pearson", "spearman"}``: AUROC, Pearson r and Spearman rho as ``Estimate`` s
    with 95 % bootstrap intervals over models, and the AUROC's permutation p-value
    (``auroc_p_value``; ``auroc`` and ``auroc_p`` are ``None`` with one class only).
    """
    from emprobe.evaluate.stats import bootstrap_stat

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
    def resampled(fn: Callable[[torch.Tensor, torch.Tensor], float],
                  b: torch.Tensor) -> Estimate:
        def stat(idx: np.ndarray) -> float:
            i = torch.from_numpy(idx)
            return fn(x[i], b[i])

        return bootstrap_stat(stat, len(x), n_boot=n_boot, seed=seed)

    auc: Estimate | None
    auc_p: float | None
    try:
        auc = resampled(auroc, lab)
        auc_p = auroc_p_value(x, lab, seed=seed)
    except DataError:  # one class only
        auc, auc_p = None, None
    r = resampled(pearson, y)
    rho = resampled(spearman, y)
    return {"n_models": len(x), "n_misaligned": int(lab.sum()), "auroc": auc, "auroc_p": auc_p,
            "pearson": r, "spearman": rho}


def population_latent_means(
    load: Callable[[str], T],
    members: Sequence[str],
    probe: Callable[[T], float],
) -> list[float]:
    """``probe(load(m))`` for each member (an adapter folder or model spec), one at a time."""
    out = []
    for m in members:
        subject = load(m)
        out.append(float(probe(subject)))
        del subject
    return out
