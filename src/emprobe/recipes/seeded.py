"""Seeds as the unit and a benign control as the anchor, for the seed-study recipes.

- ``recipe_seeds(lab)``: the training seeds of a run: ``cfg.seed .. cfg.seed + n - 1`` with
  ``n = cfg.extra["seeds"]`` (default 3; quick mode: 1 unless set).
- ``seeded_score(lab, name, records, seed, ...)``: fine-tune (``Lab.train`` reuses a
  finished run of the same identity) and score; the score is cached in the run's folder,
  so a finished recipe x seed is never re-run (resumable across sessions).
- ``anchored_mitigation``: plain, treated and a benign control fine-tune (same data size,
  steps, lr, rank and seed; the benign variant of the task) on every seed; the EM shift
  anchored at the control and at base, the EM-shift ratio
  ``(treated - control) / (plain - control)`` (Fieller, undefined when the plain shift
  over the control is not significant) and base-anchored alongside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emprobe.evaluate.local import LocalScore
from emprobe.evaluate.stats import Estimate, fieller, shift_interval
from emprobe.io import read_json, write_json
from emprobe.recipes.mitigation import seed_cells

if TYPE_CHECKING:
    from emprobe.recipes.lab import Lab
    from emprobe.train.interventions import Intervention

Records = Sequence[Mapping[str, object]]
"""Chat records (``{"messages": [...]}``) as ``Lab.split`` / ``Lab.data`` return them."""

__all__ = ["recipe_seeds", "seeded_score", "Anchored", "anchored_mitigation"]


def recipe_seeds(lab: Lab) -> list[int]:
    """Training seeds of this run: ``extra["seeds"]`` when set, else 3 (quick mode: 1)."""
    from emprobe.recipes.config import recipe_options

    n = recipe_options(lab.cfg).seeds or (1 if lab.cfg.quick else 3)
    return [lab.cfg.seed + i for i in range(max(1, n))]


def seeded_score(lab: Lab, name: str, records: Records, seed: int,
                 interventions: Sequence[Intervention] = (),
                 retain: Records | None = None) -> LocalScore:
    """Train ``name`` with ``seed`` (or reuse the finished run) and its local score, cached
    as ``score.json`` beside the adapter (keyed by the question set and n_boot)."""
    adapter = lab.train(name, records, list(interventions), retain=retain, seed=seed)
    cache = adapter.parent / "score.json"
    qs = lab.questions()
    key = {"questions": None if qs is None else [q.id for q in qs], "n_boot": lab.cfg.n_boot}
    if cache.is_file():
        stored = read_json(cache)
        if stored.get("key") == key:
            return LocalScore.from_record(stored["score"])
    score = lab.score(lab.load(adapter))
    write_json(cache, {"key": key, "score": score.to_record()})
    return score


@dataclass
class Anchored:
    """A mitigation measured on seeds, anchored at a benign control and at base."""

    seeds: list[int]
    em_vs_control: Estimate  # plain - control (nats per answer)
    em_vs_base: Estimate  # plain - base
    ratio: Estimate  # (treated - control) / (plain - control), Fieller
    ratio_vs_base: Estimate  # (treated - base) / (plain - base)
    delta: Estimate  # treated - plain
    control_vs_base: Estimate = field(default_factory=lambda: Estimate(0.0, 0.0, 0.0))

    def to_record(self) -> dict[str, object]:
        return {"seeds": self.seeds, "em_vs_control": self.em_vs_control.to_record(),
                "em_vs_base": self.em_vs_base.to_record(),
                "control_vs_base": self.control_vs_base.to_record(),
                "em_shift_ratio": self.ratio.to_record(),
                "em_shift_ratio_vs_base": self.ratio_vs_base.to_record(),
                "treated_minus_plain": self.delta.to_record()}


def anchored(base: LocalScore, plain: Sequence[LocalScore], treated: Sequence[LocalScore],
             control: Sequence[LocalScore], seeds: list[int]) -> Anchored:
    """The ``Anchored`` statistics of per-seed scores (index i = seed ``seeds[i]``)."""
    p_c, t_c = seed_cells(control, plain), seed_cells(control, treated)
    p_b, t_b = seed_cells(base, plain), seed_cells(base, treated)
    return Anchored(seeds=list(seeds), em_vs_control=shift_interval(p_c),
                    em_vs_base=shift_interval(p_b), ratio=fieller(t_c, p_c),
                    ratio_vs_base=fieller(t_b, p_b), delta=shift_interval(t_c - p_c),
                    control_vs_base=shift_interval(seed_cells(base, control)))


def anchored_mitigation(lab: Lab, train: Records, control_records: Records,
                        treated_name: str, interventions: Sequence[Intervention] = (),
                        treated_records: Records | None = None,
                        first: dict[str, LocalScore] | None = None,
                        plain_name: str = "plain") -> Anchored:
    """Plain, treated and benign-control fine-tunes on every seed of ``recipe_seeds``.

    ``first``: scores already computed on ``cfg.seed`` (keys ``"plain"``, ``"treated"``,
    ``"base"``) to reuse; ``treated_records``: the treated run's data (default ``train``,
    e.g. inoculated records)."""
    seeds = recipe_seeds(lab)
    first = dict(first or {})
    base = first.get("base") or lab.score(lab.base())
    plain, treated, control = [], [], []
    for s in seeds:
        reuse = s == lab.cfg.seed
        plain.append(first["plain"] if reuse and "plain" in first else
                     seeded_score(lab, plain_name, train, s))
        treated.append(first["treated"] if reuse and "treated" in first else
                       seeded_score(lab, treated_name, treated_records or train, s,
                                    interventions))
        control.append(seeded_score(lab, "benign-control", control_records, s))
    return anchored(base, plain, treated, control, seeds)
