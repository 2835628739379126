"""Using a Direction at inference: random controls, steered generation, sweeps and effects.

Steering and ablation themselves are ``emprobe.steer`` / ``emprobe.ablate`` (the
``emprobe.hooks`` intervention objects ``Steer`` / ``Ablate``), which take a Direction
directly and check that it fits the model. The comparisons against random controls are
thin callers of the one routine, ``emprobe.evaluate.controls.versus_controls``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict, cast

import torch

from emprobe.directions.direction import Direction
from emprobe.errors import ConfigError
from emprobe.evaluate.controls import LocalScorer, versus_controls
from emprobe.evaluate.local import compare
from emprobe.hooks import Ablate, Steer, as_layer_table, steer

if TYPE_CHECKING:
    from emprobe.evaluate.local import LocalScore
    from emprobe.evaluate.questions import Question
    from emprobe.hooks.patch import Intervention
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

__all__ = ["coefficient_sweep", "misalignment_effect", "random_like", "steered_generate"]

Layers = int | Sequence[int] | None


def random_like(direction: Direction, seed: int = 0) -> Direction:
    """A Gaussian direction of the same shapes, each column rescaled to the original's norm.

    Orthonormal bases get a random orthonormal basis (same k). Seeded.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for la in direction.layers:
        t = direction.vectors[la]
        r = torch.randn(t.shape, generator=gen)
        if t.dim() == 2 and direction.normalisation == "orthonormal":
            r = torch.linalg.qr(r)[0]
        else:
            r = r / r.norm(dim=0, keepdim=True) * t.norm(dim=0, keepdim=True)
        out[la] = r
    return direction.replace(
        vectors=out, method="random_control", sign="random",
        params={"control_for": direction.method, "seed": seed}, stats={}
    )


def steered_generate(subject: Subject, direction: Direction,
                     prompts: Sequence[str | Conversation], coeff: float = 1.0,
                     layers: Layers = None, positions: str = "all",
                     allow_other_model: bool = False, max_new_tokens: int = 64,
                     temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """``subject.generate`` with ``steer(subject, direction, coeff)`` on; prompts are
    conversations or strings (one user turn)."""
    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    with steer(subject, direction, coeff, layers, positions=positions,
               allow_other_model=allow_other_model):
        return subject.generate(convs, max_new_tokens=max_new_tokens,
                                temperature=temperature, seed=seed)


class SweepRecord(TypedDict):
    coeff: float
    kind: str
    value: float


def coefficient_sweep(
    subject: Subject,
    direction: Direction,
    coeffs: Sequence[float],
    metric: Callable[[Subject], float],
    layers: Layers = None,
    positions: str = "all",
    control: bool = True,
    seed: int = 0,
    allow_other_model: bool = False,
) -> list[SweepRecord]:
    """Evaluate ``metric(subject)`` while steering with ``coeff * v`` for each coefficient.

    With ``control``, the same sweep runs with a random direction of equal norm per
    layer (``random_like``, seeded). Records: ``{"coeff", "kind", "value"}`` (``value``:
    ``metric``'s number).
    """
    def arm(d: Direction) -> Steer:
        return Steer(d, layers=layers, positions=positions, allow_other_model=allow_other_model)

    controls = [("random", arm(random_like(direction, seed)))] if control else []
    check = versus_controls(subject, [("direction", arm(direction))], controls,
                            metric, coeffs=coeffs)
    return [SweepRecord(coeff=float(c), kind=str(a.key), value=float(raw))  # type: ignore[arg-type]
            for a in check.candidates + check.controls
            for c, raw in zip(coeffs, a.raws, strict=True)]


def misalignment_effect(
    subject: Subject,
    direction: Direction,
    mode: str = "ablate",
    coeff: float = -1.0,
    layers: Layers = None,
    positions: str = "all",
    seed: int = 0,
    questions: Sequence[Question] | None = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    allow_other_model: bool = False,
) -> dict[str, object]:  # a JSON record (the CLI prints and writes it)
    """Local misalignment score with no intervention, with ``direction``, and with a random control.

    ``mode``: ``ablate`` (zero ablation) or ``steer`` (``coeff * v``). Uses
    ``emprobe.evaluate.local.local_score`` through ``versus_controls``; each entry is its
    ``to_record()`` (estimates with bootstrap intervals); ``delta_direction`` /
    ``delta_random`` are the paired differences (intervention minus none, bootstrap over
    questions, every metric); ``versus_controls`` is the routine's own record.
    """
    if mode not in ("ablate", "steer"):
        raise ConfigError(f"mode must be 'ablate' or 'steer', not {mode!r}")

    def arm(d: Direction) -> Intervention:
        if mode == "ablate":
            return Ablate(d, layers, "zero", positions=positions,
                          allow_other_model=allow_other_model)
        return Steer(d, coeff, layers, positions=positions, allow_other_model=allow_other_model)

    scorer = LocalScorer(questions=questions, n_boot=n_boot, seed=seed, batch_size=batch_size)
    check = versus_controls(subject, [("direction", arm(direction))],
                            [("random", arm(random_like(direction, seed)))], scorer,
                            effect="decrease" if mode == "ablate" else "increase")
    res = {key: cast("LocalScore", raw) for key, raw in (
        ("none", check.baseline_raw), ("direction", check.candidates[0].raws[0]),
        ("random", check.controls[0].raws[0]))}
    out: dict[str, object] = {
        "mode": mode, "coeff": coeff if mode == "steer" else None,
        "layers": sorted(as_layer_table(direction, layers=layers, what="direction")),
        "seed": seed, "method": direction.method,
        **{k: v.to_record() for k, v in res.items()},
        "versus_controls": check.to_record(),
    }
    for key in ("direction", "random"):
        cmp = compare(res["none"], res[key], n_boot=n_boot, seed=seed, labels=("none", key))
        out[f"delta_{key}"] = cmp.to_record()
    return out
