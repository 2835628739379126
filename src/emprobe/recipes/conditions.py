"""The verdict conditions of the seed-study recipes: small pure functions on records.

Each returns a bool decided from intervals (``{mean, lo, hi}`` records, ``Estimate`` s or
``versus`` rows with ``delta``), so each can be fed a null-effect input (and must fail) and
an effect input (and must pass): ``tests/test_recipe_conditions.py`` does both for every
function here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from emprobe.errors import DataError
from emprobe.evaluate.stats import Estimate, as_estimate

__all__ = ["IntervalLike", "above", "below", "task_kept", "negatives_within",
           "unlearning_contained", "beats_baseline", "monotone_share"]

IntervalLike = Estimate | Mapping[str, object] | Sequence[float] | float
"""What ``as_estimate`` reads as a 95 % interval: an ``Estimate``, a ``{mean, lo, hi}``
mapping (or a ``versus`` row with ``delta``), a ``(mean, lo, hi)`` triple or a number."""


def above(est: IntervalLike, null: float = 0.0) -> bool:
    """The 95 % interval lies wholly above ``null`` (a significant increase)."""
    return as_estimate(est).lo > null


def below(est: IntervalLike, null: float = 0.0) -> bool:
    """The 95 % interval lies wholly below ``null`` (a significant decrease)."""
    return as_estimate(est).hi < null


def _number(row: Mapping[str, object], key: str) -> float:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"trade-off row {row.get('name', '?')}: {key!r} is not a number ({value!r})")
    return float(value)


def task_kept(row: Mapping[str, object], base_row: Mapping[str, object]) -> bool:
    """The narrow task is learned: ``row``'s held-out task-loss interval lies below the
    base model's (keys ``task_loss_lo`` / ``task_loss_hi``, nats)."""
    return _number(row, "task_loss_hi") < _number(base_row, "task_loss_lo")


def negatives_within(negatives: Sequence[IntervalLike], weakest_positive: IntervalLike) -> bool:
    """Two-sided negative controls: every negative control's interval lies strictly inside
    ``(-w, +w)`` where ``w`` is the weakest positive control's lower bound (> 0). A score
    that any fine-tune moves, up OR down, by as much as a real effect fails."""
    w = as_estimate(weakest_positive).lo
    if not w > 0:
        return False
    return all(-w < as_estimate(n).lo and as_estimate(n).hi < w for n in negatives)


def unlearning_contained(retain_vs_unlearn: IntervalLike,
                         retain_ce_cost: IntervalLike,
                         max_cost: float = 0.0) -> bool:
    """Retain cross-entropy helps other domains: their refusal margin with retain CE minus
    without it is significantly above 0, and the retain CE does not cost the target
    domain's unlearning more than ``max_cost`` (``retain_ce_cost``: target-domain refusal
    margin with retain CE minus without; its interval's lower bound must stay <= the
    allowed cost, i.e. the target is not re-learned significantly)."""
    return above(retain_vs_unlearn) and as_estimate(retain_ce_cost).lo <= max_cost


def beats_baseline(value: IntervalLike, baseline: IntervalLike, factor: float = 1.0) -> bool:
    """``value``'s lower bound exceeds ``factor`` x ``baseline``'s upper bound (e.g. EM-pair
    overlap far above the norm-matched Gaussian baseline's)."""
    return as_estimate(value).lo > factor * as_estimate(baseline).hi


def monotone_share(points: Sequence[tuple[float, IntervalLike]]) -> bool:
    """The effect grows with the share: the highest share's interval lies above the lowest
    share's (``points``: ``(share, estimate)``)."""
    if len(points) < 2:
        return False
    pts = sorted(points, key=lambda p: p[0])
    return as_estimate(pts[-1][1]).lo > as_estimate(pts[0][1]).hi
