"""Small statistics used by every evaluation result: estimates with intervals.

- ``Estimate(mean, lo, hi, p)``: a point value with a 95 % interval (and, where computed,
  a two-sided bootstrap p-value for "the mean is 0"). The one interval type of emprobe.
- ``wilson(k, n)``: the Wilson score interval of a proportion (good at 0 % and 100 %).
- ``as_estimate(value)``: an ``Estimate`` from a ``{mean, lo, hi}`` record, a
  ``(mean, lo, hi)`` tuple, any object with those attributes or a number.
- ``bootstrap_mean(groups)``: percentile bootstrap of a mean over resampled groups
  (the unit of independence, e.g. questions), weighting every group by its item count.
- ``bootstrap_stat(stat, n)``: percentile bootstrap of any statistic of ``n`` units
  (resampled indices), e.g. an AUROC or a correlation across fine-tunes.
- ``hierarchical_bootstrap(groups)``: two-stage bootstrap, resampling groups (questions)
  and then items (reference pairs) inside each drawn group. With paired differences as
  items it is the paired test of the local misalignment score.
- ``hierarchical_ratio(groups)``: the same resampling for a ratio of two means measured on
  the same items (e.g. an intervention's shift over the plain fine-tune's shift).
- ``holm(pvalues)``: Holm-Bonferroni adjusted p-values across a family of comparisons.
- ``detectable_shift(se)`` / ``power_at(shift, se)``: the power analysis of a paired test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from emprobe.errors import DataError

__all__ = [
    "Estimate",
    "as_estimate",
    "wilson",
    "bootstrap_mean",
    "bootstrap_stat",
    "bootstrap_diff",
    "hierarchical_bootstrap",
    "hierarchical_ratio",
    "bootstrap_p",
    "holm",
    "detectable_shift",
    "power_at",
]


@dataclass(frozen=True)
class Estimate:
    """A mean with a (default 95 %) interval ``lo <= mean <= hi``.

    ``p`` is a two-sided bootstrap p-value for the hypothesis "the true value is 0" when
    the estimate came from a paired test (``None`` otherwise); ``se`` the bootstrap
    standard error when known.
    """

    mean: float
    lo: float
    hi: float
    p: float | None = None
    se: float | None = None

    def to_record(self) -> dict[str, float]:
        rec = {"mean": self.mean, "lo": self.lo, "hi": self.hi}
        if self.p is not None:
            rec["p"] = self.p
        if self.se is not None:
            rec["se"] = self.se
        return rec

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies wholly above or below ``value``."""
        return self.lo > value or self.hi < value

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def as_estimate(value: Any) -> Estimate:
    """``value`` as an ``Estimate``: an ``Estimate`` as it is; a mapping with ``mean`` (or a
    ``versus`` row's ``delta``), ``lo`` and ``hi``; a ``(mean, lo, hi)`` tuple or list; any
    object with ``mean`` / ``lo`` / ``hi`` attributes; a number (a zero-width interval).

    Raises ``DataError`` for anything else (or non-numeric parts)."""
    if isinstance(value, Estimate):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Estimate(float(value), float(value), float(value))
    parts: list[Any]
    if isinstance(value, Mapping):
        parts = [value.get("mean", value.get("delta")), value.get("lo"), value.get("hi")]
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        parts = list(value)
    else:
        parts = [getattr(value, k, None) for k in ("mean", "lo", "hi")]
    try:
        mean, lo, hi = (float(x) for x in parts)
    except (TypeError, ValueError):
        raise DataError(f"expected an estimate (mean, lo, hi) or a number, got "
                        f"{type(value).__name__} {str(value)[:80]}") from None
    return Estimate(mean, lo, hi)


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


def _interval(mean: float, boots: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return min(float(lo), mean), max(float(hi), mean)


def bootstrap_p(boots: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of ``null``: twice the smaller tail share, +1 smoothed."""
    boots = np.asarray(boots, dtype=float)
    boots = boots[np.isfinite(boots)]
    n = len(boots)
    if n == 0:
        return float("nan")
    below = (np.sum(boots <= null) + 1) / (n + 1)
    above = (np.sum(boots >= null) + 1) / (n + 1)
    return float(min(1.0, 2 * min(below, above)))


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
    lo, hi = _interval(mean, boots, level)
    return Estimate(mean, lo, hi)


def bootstrap_stat(
    stat: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """``stat`` of ``n`` independent units with a percentile bootstrap interval.

    ``stat(idx)`` computes the statistic on the units ``idx`` (an int array, with repeats in
    the resamples); the point value is ``stat(arange(n))``, whose errors propagate.
    Resamples where the statistic is undefined (it raises emprobe's ``DataError`` or
    returns NaN: one class only, constant values) are skipped;
    the interval is NaN when none is defined. ``se`` is the bootstrap standard error.
    """
    value = float(stat(np.arange(n)))
    if n_boot <= 0:
        return Estimate(value, value, value)
    rng = np.random.default_rng(seed)
    vals = []
    for idx in rng.integers(0, n, size=(n_boot, n)):
        try:
            v = float(stat(idx))
        except DataError:
            continue
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return Estimate(value, float("nan"), float("nan"))
    boots = np.array(vals)
    if math.isfinite(value):
        lo, hi = _interval(value, boots, level)
    else:
        alpha = (1.0 - level) / 2
        lo, hi = (float(q) for q in np.quantile(boots, [alpha, 1 - alpha]))
    se = float(np.std(boots, ddof=1)) if len(boots) > 1 else None
    return Estimate(value, lo, hi, se=se)


def bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean of ``b - a`` over paired units, with a bootstrap interval resampling the pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    return bootstrap_mean([[y - x] for x, y in zip(a, b)], n_boot=n_boot, seed=seed, level=level)


def _padded(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Groups of ``[n_items, n_vars]`` -> padded ``[n_groups, max_items, n_vars]``, sizes."""
    sizes = np.array([len(g) for g in groups])
    width = int(sizes.max())
    n_vars = groups[0].shape[1]
    out = np.zeros((len(groups), width, n_vars))
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
    return out, sizes


def hierarchical_means(
    groups: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage bootstrap of item means: ``(point [n_vars], boots [n_boot, n_vars])``.

    Each resample draws ``n_groups`` groups with replacement and, inside every drawn
    group, as many items as it has, with replacement; the statistic is the mean over all
    drawn items (each group weighted by its size, as in the point estimate).

    Args:
        groups: one array ``[n_items, n_vars]`` per independent unit (question); the
            ``n_vars`` columns are resampled together (joint statistics such as ratios).
    """
    groups = [np.asarray(g, dtype=float).reshape(len(g), -1) for g in groups if len(g)]
    if not groups:
        raise ValueError("no non-empty groups to bootstrap")
    values, sizes = _padded(groups)
    point = np.concatenate(groups).mean(axis=0)
    n_g, width, n_vars = values.shape
    if n_boot <= 0:
        return point, np.empty((0, n_vars))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_g, size=(n_boot, n_g))  # [boot, slot]
    size = sizes[pick]  # [boot, slot]
    inner = np.floor(rng.random((n_boot, n_g, width)) * size[..., None]).astype(int)
    keep = np.arange(width)[None, None, :] < size[..., None]  # [boot, slot, width]
    drawn = values[pick[..., None], inner]  # [boot, slot, width, n_vars]
    sums = (drawn * keep[..., None]).sum(axis=(1, 2))
    counts = keep.sum(axis=(1, 2))[:, None]
    return point, sums / counts


def hierarchical_bootstrap(
    groups: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean over items with a two-stage (groups, then items) bootstrap interval and p-value.

    ``p`` tests "the true mean is 0" (meaningful when the items are paired differences);
    ``se`` is the bootstrap standard error.
    """
    arrays = [np.asarray(g, dtype=float)[:, None] for g in groups if len(g)]
    if not arrays:
        return Estimate(float("nan"), float("nan"), float("nan"))
    point, boots = hierarchical_means(arrays, n_boot, seed)
    mean = float(point[0])
    if len(boots) == 0:
        return Estimate(mean, mean, mean)
    b = boots[:, 0]
    lo, hi = _interval(mean, b, level)
    return Estimate(mean, lo, hi, p=bootstrap_p(b), se=float(np.std(b, ddof=1)))


def hierarchical_ratio(
    groups: Sequence[np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Estimate:
    """A function of several item means (default: ratio ``mean[:, 0] / mean[:, 1]``).

    Args:
        groups: one array ``[n_items, n_vars]`` per group; columns measured on the same
            items (e.g. the intervention's and the plain fine-tune's shift of each pair).
        fn: maps means ``[..., n_vars]`` to the statistic ``[...]``.
    """
    f = fn if fn is not None else (lambda m: m[..., 0] / m[..., 1])
    point, boots = hierarchical_means(groups, n_boot, seed)
    value = float(f(point))
    if len(boots) == 0:
        return Estimate(value, value, value)
    b = f(boots)
    b = b[np.isfinite(b)]
    lo, hi = _interval(value, b, level)
    return Estimate(value, lo, hi, se=float(np.std(b, ddof=1)))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, kept monotone), by name."""
    items = sorted(pvalues.items(), key=lambda kv: kv[1])
    m = len(items)
    out: dict[str, float] = {}
    running = 0.0
    for rank, (name, p) in enumerate(items):
        adj = min(1.0, (m - rank) * float(p))
        running = max(running, adj)
        out[name] = running
    return out


def detectable_shift(se: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true shift a two-sided test at ``alpha`` detects with ``power``.

    ``(z_{1 - alpha / 2} + z_{power}) * se`` (normal approximation; 2.80 se at 80 %/5 %).
    """
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def power_at(shift: float, se: float, alpha: float = 0.05) -> float:
    """Probability that a two-sided test at ``alpha`` detects a true ``shift`` (normal)."""
    if se <= 0:
        return 1.0 if shift != 0 else alpha
    z = NormalDist()
    crit = z.inv_cdf(1 - alpha / 2)
    d = abs(shift) / se
    return z.cdf(d - crit) + z.cdf(-d - crit)
