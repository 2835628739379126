"""Small statistics used by every evaluation result: estimates with intervals.

- ``Estimate(mean, lo, hi)``: a point value with a 95 % interval.
- ``wilson(k, n)``: the Wilson score interval of a proportion (good at 0 % and 100 %).
- ``bootstrap_mean(groups)``: percentile bootstrap of a mean over resampled groups
  (the unit of independence, e.g. questions), weighting every group by its item count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "wilson", "bootstrap_mean", "bootstrap_diff"]


@dataclass(frozen=True)
class Estimate:
    """A mean with a (default 95 %) interval ``lo <= mean <= hi``."""

    mean: float
    lo: float
    hi: float

    def to_record(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def wilson(k: int, n: int, z: float = 1.959964) -> Estimate:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``nan`` everywhere when n=0."""
    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def _weighted_means(groups: Sequence[Sequence[float]], idx: np.ndarray) -> np.ndarray:
    sums = np.array([float(np.sum(g)) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float)
    return sums[idx].sum(axis=-1) / counts[idx].sum(axis=-1)


def bootstrap_mean(
    groups: Sequence[Sequence[float]], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean over all items with a percentile bootstrap interval that resamples whole groups.

    Args:
        groups: one list of item values per independent unit (e.g. per question).
        n_boot: bootstrap resamples (0 gives a degenerate interval at the mean).
    """
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return Estimate(float("nan"), float("nan"), float("nan"))
    n = len(groups)
    mean = float(_weighted_means(groups, np.arange(n)[None, :])[0])
    if n_boot <= 0 or n == 1:
        return Estimate(mean, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = _weighted_means(groups, idx)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return Estimate(mean, min(float(lo), mean), max(float(hi), mean))


def bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean of ``b - a`` over paired units, with a bootstrap interval resampling the pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    return bootstrap_mean([[y - x] for x, y in zip(a, b)], n_boot=n_boot, seed=seed, level=level)
