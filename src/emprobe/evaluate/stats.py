"""Statistics of every evaluation result: estimates with intervals.

- ``Estimate(mean, lo, hi, p, se, df)``: a point value with a 95 % interval. The one
  interval type of emprobe.
- ``shift_interval(cells)``: THE interval of a paired shift. ``cells`` are per-seed,
  per-unit (question) means ``[n_seeds, n_units]``; the variance combines seeds and units
  (crossed random effects, ``crossed_cov``) and the interval is Student's t with
  Satterthwaite df. Seeds are the experimental unit when there are >= 2. Its coverage and
  type-I error are checked by simulation (``tests/test_stats_coverage.py``).
  ``paired_shift`` / ``hierarchical_bootstrap`` (one seed) / ``bootstrap_diff`` (paired
  values) are the same routine on other input shapes.
- ``fieller(num, den)``: a ratio of two shifts on the same seeds and units with Fieller's
  interval; undefined (NaN bounds) when the denominator is not significant.
- ``auroc`` / ``auroc_p_value``: the one AUROC (Mann-Whitney, ties half) and its exact or
  permutation p-value.
- ``wilson(k, n)``: the Wilson score interval of a proportion (good at 0 % and 100 %).
- ``as_estimate(value)``: an ``Estimate`` from a ``{mean, lo, hi}`` record, a
  ``(mean, lo, hi)`` tuple, any object with those attributes or a number.
- ``bootstrap_mean(groups)`` / ``bootstrap_stat(stat, n)``: percentile bootstraps of a
  grouped mean or any statistic of ``n`` units (AUROC, correlations across fine-tunes).
- ``holm(pvalues)``: Holm-Bonferroni adjusted p-values across a family of comparisons.
- ``detectable_shift(se)`` / ``power_at(shift, se)``: the power analysis of a paired test.
- ``t_sf`` / ``t_quantile``: Student's t tail and quantile (fractional df, no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import SupportsFloat, SupportsIndex

import numpy as np
from numpy.typing import ArrayLike

from emprobe.errors import DataError

__all__ = [
    "Estimate",
    "as_estimate",
    "wilson",
    "shift_interval",
    "shift_intervals",
    "crossed_cov",
    "unit_term",
    "cell_means",
    "paired_shift",
    "fieller",
    "fieller_ratios",
    "ratio_defined",
    "auroc",
    "auroc_p_value",
    "t_sf",
    "t_quantile",
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

    ``p`` is a two-sided p-value for the hypothesis "the true value is 0" when the
    estimate came from a paired test (``None`` otherwise); ``se`` its standard error and
    ``df`` the degrees of freedom of its t interval, when known.
    """

    mean: float
    lo: float
    hi: float
    p: float | None = None
    se: float | None = None
    df: float | None = None

    def to_record(self) -> dict[str, float]:
        rec = {"mean": self.mean, "lo": self.lo, "hi": self.hi}
        if self.p is not None:
            rec["p"] = self.p
        if self.se is not None:
            rec["se"] = self.se
        if self.df is not None:
            rec["df"] = self.df
        return rec

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies wholly above or below ``value``."""
        return self.lo > value or self.hi < value

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def as_estimate(value: object) -> Estimate:
    """``value`` as an ``Estimate``: an ``Estimate`` as it is; a mapping with ``mean`` (or a
    ``versus`` row's ``delta``), ``lo`` and ``hi``; a ``(mean, lo, hi)`` tuple or list; any
    object with ``mean`` / ``lo`` / ``hi`` attributes; a number (a zero-width interval).

    Raises ``DataError`` for anything else (or non-numeric parts)."""
    if isinstance(value, Estimate):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Estimate(float(value), float(value), float(value))
    parts: list[object]
    if isinstance(value, Mapping):
        parts = [value.get("mean", value.get("delta")), value.get("lo"), value.get("hi")]
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        parts = list(value)
    else:
        parts = [getattr(value, k, None) for k in ("mean", "lo", "hi")]
    try:
        mean, lo, hi = (_to_float(x) for x in parts)
    except (TypeError, ValueError):
        raise DataError(f"expected an estimate (mean, lo, hi) or a number, got "
                        f"{type(value).__name__} {str(value)[:80]}") from None
    return Estimate(mean, lo, hi)


def _to_float(x: object) -> float:
    """``float(x)`` for what ``float`` accepts (numbers, numeric strings, objects with
    ``__float__`` / ``__index__``); ``TypeError`` for anything else, as ``float`` raises."""
    if isinstance(x, (str, bytes, bytearray, SupportsFloat, SupportsIndex)):
        return float(x)
    raise TypeError(f"float() argument must be a string or a real number, not {type(x).__name__}")


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
    """Mean of ``b - a`` over paired units with ``shift_interval``'s t interval (the pairs
    are the units; ``n_boot`` / ``seed`` are ignored, kept for callers)."""
    del n_boot, seed
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    if not len(a):
        return Estimate(float("nan"), float("nan"), float("nan"))
    return shift_interval(np.array([y - x for x, y in zip(a, b)], dtype=float), level)


# -- Student t without scipy ------------------------------------------------------------------
def _beta_cf(a: np.ndarray, b: np.ndarray, x: np.ndarray, iters: int = 300) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), elementwise."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < tiny, tiny, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, iters + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            d = 1.0 / d
            delta = d * c
            h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-13):
            break
    return h


def _betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Regularised incomplete beta ``I_x(a, b)`` for ``0 <= x <= 1``, elementwise."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, x)))
    xs = np.clip(x, 1e-300, 1 - 1e-16)
    lgam = np.vectorize(math.lgamma, otypes=[float])
    front = np.exp(lgam(a + b) - lgam(a) - lgam(b) + a * np.log(xs) + b * np.log1p(-xs))
    direct = xs < (a + 1.0) / (a + b + 2.0)
    aa, bb = np.where(direct, a, b), np.where(direct, b, a)
    xx = np.where(direct, xs, 1.0 - xs)
    cf = front * _beta_cf(aa, bb, xx) / aa
    out = np.where(direct, cf, 1.0 - cf)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, out))


def t_sf(x: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """Upper tail ``P(T > x)`` of Student's t with ``df`` (may be fractional) degrees of
    freedom, elementwise."""
    x, df = np.broadcast_arrays(np.clip(np.asarray(x, dtype=float), -1e100, 1e100),
                                np.asarray(df, dtype=float))
    tail = 0.5 * _betainc(df / 2.0, np.full_like(df, 0.5), df / (df + x * x))
    return np.where(x >= 0, tail, 1.0 - tail)


def t_quantile(p: float, df: np.ndarray | float) -> np.ndarray:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t, elementwise over ``df`` (>= 1
    after clamping: a Satterthwaite df below 1 is treated as 1, the conservative side)."""
    df = np.maximum(np.asarray(df, dtype=float), 1.0)
    lo, hi = np.zeros_like(df), np.full_like(df, 1e4)
    for _ in range(70):  # bisection: the tail is monotone; 1e4 / 2^70 is far below float eps
        mid = 0.5 * (lo + hi)
        above = t_sf(mid, df) > 1.0 - p
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return 0.5 * (lo + hi)


# -- the one interval routine for paired shifts ----------------------------------------------
POOL_P = 0.05
"""Preliminary-test level for pooling the unit (question) variance component into the
residual (chosen by the coverage simulation: 0.25 and above were conservative, type-I
2-4 %, when question variance is small)."""


def _f_sf(f: np.ndarray, d1: float, d2: float) -> np.ndarray:
    """Upper tail ``P(F > f)`` of the F distribution with ``(d1, d2)`` df, elementwise."""
    f = np.maximum(np.asarray(f, dtype=float), 0.0)
    x = d2 / (d2 + d1 * f)
    return _betainc(np.full_like(x, d2 / 2.0), np.full_like(x, d1 / 2.0), x)


def _mean_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Two-way ANOVA mean (cross-)products of cells ``[..., S, Q]`` (S, Q >= 2):
    ``(ms_seed, ms_unit, ms_resid)``, each ``[...]``."""
    n_s, n_q = x.shape[-2:]
    gx, gy = x.mean(axis=(-2, -1)), y.mean(axis=(-2, -1))
    rx, ry = x.mean(axis=-1), y.mean(axis=-1)  # [..., S]
    cx, cy = x.mean(axis=-2), y.mean(axis=-2)  # [..., Q]
    ms_s = n_q * ((rx - gx[..., None]) * (ry - gy[..., None])).sum(-1) / (n_s - 1)
    ms_q = n_s * ((cx - gx[..., None]) * (cy - gy[..., None])).sum(-1) / (n_q - 1)
    ex = x - rx[..., :, None] - cx[..., None, :] + gx[..., None, None]
    ey = y - ry[..., :, None] - cy[..., None, :] + gy[..., None, None]
    ms_e = (ex * ey).sum(axis=(-2, -1)) / ((n_s - 1) * (n_q - 1))
    return ms_s, ms_q, ms_e


def unit_term(x: np.ndarray) -> np.ndarray:
    """Whether the unit (question) variance component of cells ``[..., S, Q]`` enters the
    variance: its F test against the residual has p < ``POOL_P`` (always True for one seed,
    where units are the only term)."""
    x = np.asarray(x, dtype=float)
    n_s, n_q = x.shape[-2:]
    if n_s < 2 or n_q < 2:
        return np.ones(x.shape[:-2], dtype=bool)
    ms_s, ms_q, ms_e = _mean_squares(x, x)
    del ms_s
    return _f_sf(ms_q / np.maximum(ms_e, 1e-300), n_q - 1, (n_s - 1) * (n_q - 1)) < POOL_P


def crossed_cov(x: np.ndarray, y: np.ndarray | None = None,
                units: np.ndarray | None = None, resid: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grand means, the covariance of the two grand means, and its Satterthwaite df.

    Args:
        x, y: cell means ``[..., n_seeds, n_units]`` (units: questions, pairs or records;
            leading dimensions are independent data sets). ``y=None``: the variance of x.
        units: whether the unit term enters (``[...]`` bools; default ``unit_term(x)``).
        resid: subtract the residual mean square where both terms enter (the unbiased
            estimate); ``False`` gives the larger, always positive semi-definite one.

    The cells follow a crossed random-effects model ``m[s, q] = mu + a_s + b_q + e_sq``:
    the claim generalises over seeds AND units, so
    ``Var(mean) = s_a^2 / S + s_b^2 / Q + s_e^2 / (S Q)``, estimated from the two-way ANOVA
    mean squares as ``(MS_seed + MS_unit - MS_resid) / (S Q)``. The seed term always
    enters (with no question effect this is the exact t over seed means, ``S - 1`` df);
    a unit term whose F test against the residual is not significant at ``POOL_P`` is
    pooled into the residual (its component taken as 0; Bancroft's rule), which keeps
    the interval from being conservative when questions hardly differ. One seed: the
    classic ``var(unit means) / Q`` with ``Q - 1`` df (the seed variance cannot be seen and
    the interval is over units only). One unit: over seeds, ``S - 1`` df.

    Returns ``(mean_x [...], cov [...], df [...])``.
    """
    x = np.asarray(x, dtype=float)
    y = x if y is None else np.asarray(y, dtype=float)
    n_s, n_q = x.shape[-2:]
    gx = x.mean(axis=(-2, -1))
    if n_s * n_q < 2:
        nan = np.full(gx.shape, np.nan)
        return gx, nan, nan
    if n_s == 1 or n_q == 1:
        axis, n = (-1, n_q) if n_s == 1 else (-2, n_s)
        dx = x - x.mean(axis=axis, keepdims=True)
        dy = y - y.mean(axis=axis, keepdims=True)
        cov = (dx * dy).sum(axis=(-2, -1)) / (n - 1) / n
        return gx, cov, np.full(gx.shape, float(n - 1))
    use_q = unit_term(x) if units is None else np.asarray(units, dtype=bool)
    ms_s, ms_q, ms_e = _mean_squares(x, y)
    df_s, df_q, df_e = n_s - 1, n_q - 1, (n_s - 1) * (n_q - 1)
    c_e = -use_q.astype(float) if resid else np.zeros(use_q.shape)  # MS_resid's coefficient
    total = ms_s + np.where(use_q, ms_q, 0.0) + c_e * ms_e
    denom = ms_s**2 / df_s + np.where(use_q, ms_q**2 / df_q, 0.0) + c_e**2 * ms_e**2 / df_e
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, total**2 / denom, float(df_s))
    df = np.clip(np.nan_to_num(df, nan=1.0), 1.0, float(n_s * n_q - 1))
    return gx, total / (n_s * n_q), df


def shift_intervals(cells: np.ndarray, level: float = 0.95
                    ) -> dict[str, np.ndarray]:
    """``shift_interval`` over many data sets at once: ``cells [..., S, Q]`` ->
    arrays ``mean, lo, hi, se, df, p`` of shape ``[...]`` (the coverage test's path)."""
    mean, var, df = crossed_cov(cells)
    se = np.sqrt(np.maximum(var, 0.0))
    half = t_quantile(0.5 + level / 2, np.nan_to_num(df, nan=1.0)) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, np.abs(mean) / se, np.where(mean == 0, 0.0, np.inf))
    p = 2.0 * t_sf(np.nan_to_num(tstat, nan=0.0), np.nan_to_num(df, nan=1.0))
    p = np.where(np.isfinite(df), np.minimum(p, 1.0), np.nan)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "se": se, "df": df, "p": p}


def shift_interval(cells: ArrayLike, level: float = 0.95
                   ) -> Estimate:
    """THE interval of a paired shift: mean with a t interval, two-sided p and se.

    Args:
        cells: ``[n_seeds, n_units]`` per-seed, per-unit means of the paired differences
            (e.g. seed x question means of ``score(fine-tune) - score(control)``), or a
            1-D ``[n_units]`` array for one seed. The point value is the plain mean of the
            cells (every unit weighs the same; every seed too).

    Seeds are the experimental unit when there are >= 2 of them, and questions are
    resampled too (``crossed_cov``); the interval uses Student's t with Satterthwaite df.
    Its coverage is checked by simulation in ``tests/test_stats_coverage.py``.
    """
    arr = np.asarray(cells, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"shift_interval: cells must be [n_seeds, n_units], got shape "
                        f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError("shift_interval: cells hold NaN or infinite values")
    r = shift_intervals(arr, level)
    mean = float(r["mean"])
    if not math.isfinite(float(r["se"])):
        return Estimate(mean, mean, mean)
    return Estimate(mean, min(float(r["lo"]), mean), max(float(r["hi"]), mean),
                    p=float(r["p"]), se=float(r["se"]), df=float(r["df"]))


def cell_means(seeds: Sequence[Mapping[str, Sequence[float]]]) -> tuple[np.ndarray, list[str]]:
    """``[n_seeds, n_units]`` means of per-unit item values, one mapping per seed.

    Every seed must hold the same units (e.g. question ids); raises ``DataError`` otherwise.
    Returns the cells and the sorted unit names."""
    if not seeds:
        raise DataError("cell_means: no seeds")
    units = sorted(seeds[0])
    for i, s in enumerate(seeds):
        if sorted(s) != units:
            raise DataError(f"cell_means: seed {i} holds other units than seed 0")
        if any(len(s[u]) == 0 for u in units):
            raise DataError(f"cell_means: seed {i} has a unit without items")
    return np.array([[float(np.mean(s[u])) for u in units] for s in seeds]), units


def paired_shift(seeds: Sequence[Sequence[Sequence[float]]], level: float = 0.95) -> Estimate:
    """``shift_interval`` of item values nested seed -> unit (question) -> items (pairs)."""
    groups = [[list(g) for g in s if len(g)] for s in seeds]
    if not groups or not groups[0]:
        return Estimate(float("nan"), float("nan"), float("nan"))
    n_q = len(groups[0])
    if any(len(g) != n_q for g in groups):
        raise DataError("paired_shift: every seed must hold the same number of units")
    return shift_interval(np.array([[np.mean(u) for u in g] for g in groups]), level)


def hierarchical_bootstrap(
    groups: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """One seed's paired shift over groups (questions) of items (pairs): the item mean with
    a cluster-robust t interval over groups (``Q - 1`` df).

    The variance is ``Q / (Q - 1) * sum_q w_q^2 (mean_q - mean)^2`` with ``w_q = n_q / N``;
    with equal group sizes this is exactly ``shift_interval`` of the group means. Kept
    under its old name for its callers; it no longer resamples (the two-stage bootstrap
    it replaced overestimated the SE and undercovered with few questions). ``n_boot`` and
    ``seed`` are ignored."""
    del n_boot, seed
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return Estimate(float("nan"), float("nan"), float("nan"))
    sizes = np.array([len(g) for g in arrays], dtype=float)
    means = np.array([g.mean() for g in arrays])
    if np.all(sizes == sizes[0]):
        return shift_interval(means, level)
    if not np.all(np.isfinite(means)):
        raise DataError("hierarchical_bootstrap: items hold NaN or infinite values")
    n_q = len(arrays)
    w = sizes / sizes.sum()
    mean = float((w * means).sum())
    se = math.sqrt(n_q / (n_q - 1) * float((w**2 * (means - mean) ** 2).sum()))
    df = float(n_q - 1)
    if se == 0:
        return Estimate(mean, mean, mean, p=1.0 if mean == 0 else 0.0, se=0.0, df=df)
    half = float(t_quantile(0.5 + level / 2, df)) * se
    p = float(2.0 * t_sf(abs(mean) / se, df))
    return Estimate(mean, mean - half, mean + half, p=min(p, 1.0), se=se, df=df)


def fieller_ratios(num: np.ndarray, den: np.ndarray, level: float = 0.95
                   ) -> dict[str, np.ndarray]:
    """Fieller intervals of ``mean(num) / mean(den)`` over many data sets at once.

    Args:
        num, den: cell means ``[..., S, Q]`` measured on the same seeds and units.

    The set ``{theta: |mean(num - theta den)| <= t * se(num - theta den)}``, with the
    (co)variances of ``crossed_cov`` on one term structure (that of
    ``num - ratio * den``) and its df. Returns arrays ``ratio, lo, hi, defined`` ``[...]``:
    ``defined`` is False (and the bounds NaN) when the denominator's own
    ``shift_interval`` contains 0: the confidence set is then unbounded and the ratio is
    reported as undefined.
    """
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    mn, md = num.mean(axis=(-2, -1)), den.mean(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(md != 0, mn / np.where(md != 0, md, 1.0), np.nan)
    theta = np.nan_to_num(ratio)
    z = num - theta[..., None, None] * den
    units = unit_term(z)
    _, v_z, df = crossed_cov(z, units=units)
    # the same terms for every (co)variance; where that estimate is not positive at the
    # ratio, the positive semi-definite one (no residual subtracted)
    psd = ~(v_z > 0)
    covs = [np.where(psd, crossed_cov(a, b, units, resid=False)[1], crossed_cov(a, b, units)[1])
            for a, b in ((num, num), (den, den), (num, den))]
    v_nn, v_dd, v_nd = covs
    t2 = t_quantile(0.5 + level / 2, df) ** 2
    a = md**2 - t2 * v_dd
    b = mn * md - t2 * v_nd
    c = mn**2 - t2 * v_nn
    d = shift_intervals(den, level)
    defined = np.isfinite(a) & (a > 0) & ((d["lo"] > 0) | (d["hi"] < 0))
    root = np.sqrt(np.maximum(b * b - a * c, 0.0))
    safe_a = np.where(defined, a, 1.0)
    lo = np.where(defined, (b - root) / safe_a, np.nan)
    hi = np.where(defined, (b + root) / safe_a, np.nan)
    return {"ratio": ratio, "lo": lo, "hi": hi, "defined": defined}


def fieller(num: np.ndarray | Sequence[Sequence[float]],
            den: np.ndarray | Sequence[Sequence[float]], level: float = 0.95) -> Estimate:
    """``mean(num) / mean(den)`` with Fieller's interval (seeds and units resampled as in
    ``shift_interval``). Undefined denominators (not significant): the point ratio with NaN
    bounds (``Estimate.lo`` / ``hi`` NaN; see ``ratio_defined``)."""
    n, d = (np.asarray(v, dtype=float) for v in (num, den))
    n, d = (v[None, :] if v.ndim == 1 else v for v in (n, d))
    if n.shape != d.shape or n.ndim != 2:
        raise DataError(f"fieller: num {n.shape} and den {d.shape} must be equal [S, Q]")
    r = fieller_ratios(n, d, level)
    ratio = float(r["ratio"])
    if not bool(r["defined"]):
        return Estimate(ratio, float("nan"), float("nan"))
    return Estimate(ratio, min(float(r["lo"]), ratio), max(float(r["hi"]), ratio))


def ratio_defined(est: Estimate) -> bool:
    """Whether a ratio estimate has finite bounds (Fieller: its denominator is significant)."""
    return math.isfinite(est.lo) and math.isfinite(est.hi)


def hierarchical_ratio(groups: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> Estimate:
    """One seed's ``mean(col 0) / mean(col 1)`` over groups of items ``[n_items, 2]``:
    ``fieller`` of the group means (kept name; ``n_boot`` / ``seed`` are ignored)."""
    del n_boot, seed
    arrays = [np.asarray(g, dtype=float).reshape(len(g), -1) for g in groups if len(g)]
    if not arrays:
        raise DataError("hierarchical_ratio: no non-empty groups")
    means = np.array([a.mean(axis=0) for a in arrays])  # [Q, 2]
    return fieller(means[None, :, 0], means[None, :, 1], level)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2).

    ``scores`` / ``labels``: 1-D, equal length; raises ``DataError`` with one class only."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise DataError(f"auroc: scores {s.shape} and labels {y.shape} must be 1-D and equal")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise DataError("auroc: needs at least one positive and one negative")
    greater = float((pos[:, None] > neg[None, :]).sum())
    ties = float((pos[:, None] == neg[None, :]).sum())
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def auroc_p_value(scores: ArrayLike, labels: ArrayLike,
                  n_perm: int = 20000, seed: int = 0) -> float:
    """One-sided permutation p-value of ``auroc(scores, labels)`` (chance: labels shuffled).

    Exact (every assignment of the positives) when there are at most ``n_perm`` of them,
    else ``n_perm`` random shuffles with the ``(1 + hits) / (1 + n_perm)`` correction. Unlike
    a bootstrap interval over models, which collapses to [1, 1] when the classes separate
    perfectly, it says how likely that separation is by chance with so few models."""

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    observed = auroc(s, y)
    n, k = len(y), int(y.sum())
    if math.comb(n, k) <= n_perm:
        return exact_permutation_p(lambda lab: auroc(s, lab), y)
    rng = np.random.default_rng(seed)
    hits = sum(auroc(s, y[rng.permutation(n)]) >= observed - 1e-12 for _ in range(n_perm))
    return (1 + hits) / (1 + n_perm)


def exact_permutation_p(statistic: Callable[[np.ndarray], float], labels: np.ndarray) -> float:
    """One-sided exact permutation p: the share of all ``C(n, k)`` relabellings of the ``k``
    positives in ``labels`` [n] (bool) whose ``statistic(labels)`` is at least the observed."""
    import itertools

    y = np.asarray(labels).astype(bool)
    n, k = len(y), int(y.sum())
    observed = statistic(y)
    hits = total = 0
    for pos in itertools.combinations(range(n), k):
        lab = np.zeros(n, dtype=bool)
        lab[list(pos)] = True
        hits += statistic(lab) >= observed - 1e-12
        total += 1
    return hits / total


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
