"""Using a Direction at inference: steer, ablate, coefficient sweeps with a random control.

All of these wrap ``emprobe.hooks.steer`` / ``ablate``, which check that the
direction fits the model (``Direction.check_compatible``); the hooks are active
for generation and for scoring alike, and removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from emprobe.directions.activations import layer_means
from emprobe.directions.direction import Direction
from emprobe.errors import ConfigError
from emprobe.evaluate.local import compare, local_score
from emprobe.hooks import ablate, as_layer_table, steer

if TYPE_CHECKING:
    from emprobe.models.subject import Subject


def _layers(direction: Direction, layers: int | Sequence[int] | None) -> list[int]:
    return sorted(as_layer_table(direction, layers=layers, what="direction"))


@contextlib.contextmanager
def steering(
    subject: Subject,
    direction: Direction,
    coeff: float = 1.0,
    layers: int | Sequence[int] | None = None,
    positions: str = "all",
    component: int = 0,
    unit: bool = False,
    allow_other_model: bool = False,
) -> Iterator[None]:
    """``h_l <- h_l + coeff * v_l`` on the chosen tokens (all / prompt / response / last).

    ``emprobe.steer`` with a Direction's conveniences: column ``component`` of a basis, and
    ``unit=True`` scales each vector to norm 1 first. Vectors are used as stored otherwise
    (raw persona vectors expect c in about [-2, 5]).
    """
    table = as_layer_table(direction, subject, layers, "direction",
                           allow_other_model=allow_other_model)
    vectors = {}
    for la in table:
        v = direction.vector(la, component)
        vectors[la] = v / v.norm().clamp_min(1e-12) if unit else v
    with steer(subject, vectors, coeff=coeff, site=direction.site, positions=positions):
        yield


@contextlib.contextmanager
def ablation(
    subject: Subject,
    direction: Direction,
    layers: int | Sequence[int] | None = None,
    mode: str = "zero",
    mean: dict[int, torch.Tensor] | None = None,
    positions: str = "all",
    allow_other_model: bool = False,
) -> Iterator[None]:
    """Remove the span of each layer's vector(s): zero ``h - (hQ)Q^T`` or mean ``h - ((h-mu)Q)Q^T``.

    ``emprobe.ablate`` on a Direction. ``mean``: ``{layer: [d_model]}`` (see
    ``mean_activations``), required for ``mode="mean"``.
    """
    with ablate(subject, direction, layers=layers, mode=mode, mean=mean, positions=positions,
                allow_other_model=allow_other_model):
        yield


def mean_activations(subject: Subject, data: Sequence[Any], layers: Sequence[int],
                     positions: str = "all", site: str = "resid_post",
                     batch_size: int = 8) -> dict[int, torch.Tensor]:
    """``{layer: [d_model]}`` token-pooled means, e.g. for mean ablation."""
    return layer_means(subject, data, layers=list(layers), positions=positions, site=site,
                       batch_size=batch_size).pooled


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


def steered_generate(subject: Subject, direction: Direction, prompts: Sequence[Any], coeff: float = 1.0,
                     layers: int | Sequence[int] | None = None, positions: str = "all",
                     allow_other_model: bool = False, **generate_kw: Any) -> list[str]:
    """``subject.generate`` with steering on; prompts are conversations or strings."""
    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    with steering(subject, direction, coeff, layers, positions, allow_other_model=allow_other_model):
        return subject.generate(convs, **generate_kw)


Metric = Callable[[Any], float]


def coefficient_sweep(
    subject: Subject,
    direction: Direction,
    coeffs: Sequence[float],
    metric: Metric,
    layers: int | Sequence[int] | None = None,
    positions: str = "all",
    control: bool = True,
    seed: int = 0,
    allow_other_model: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate ``metric(subject)`` while steering with ``coeff * v`` for each coefficient.

    With ``control``, the same sweep runs with a random direction of equal norm per
    layer (``random_like``, seeded). Records: ``{"coeff", "kind", "value"}``.
    """
    kinds = [("direction", direction)]
    if control:
        kinds.append(("random", random_like(direction, seed)))
    out = []
    for kind, d in kinds:
        for c in coeffs:
            with steering(subject, d, float(c), layers, positions, allow_other_model=allow_other_model):
                value = metric(subject)
            out.append({"coeff": float(c), "kind": kind, "value": value})
    return out


def misalignment_effect(
    subject: Subject,
    direction: Direction,
    mode: str = "ablate",
    coeff: float = -1.0,
    layers: int | Sequence[int] | None = None,
    positions: str = "all",
    seed: int = 0,
    questions: Any = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    allow_other_model: bool = False,
) -> dict[str, Any]:
    """Local misalignment score with no intervention, with ``direction``, and with a random control.

    ``mode``: ``ablate`` (zero ablation) or ``steer`` (``coeff * v``). Uses
    ``emprobe.evaluate.local.local_score``; each entry is its ``to_record()``
    (estimates with bootstrap intervals); ``delta_direction`` / ``delta_random`` are the
    paired differences (intervention minus none, bootstrap over questions). Raises if
    the evaluate area is missing.
    """
    if mode not in ("ablate", "steer"):
        raise ConfigError(f"mode must be 'ablate' or 'steer', not {mode!r}")

    def score() -> Any:
        return local_score(subject, questions=questions, batch_size=batch_size, n_boot=n_boot, seed=seed)

    def under(d: Direction) -> Any:
        ctx = (ablation(subject, d, layers, "zero", positions=positions,
                        allow_other_model=allow_other_model) if mode == "ablate"
               else steering(subject, d, coeff, layers, positions, allow_other_model=allow_other_model))
        with ctx:
            return score()

    control = random_like(direction, seed)
    res = {"none": score(), "direction": under(direction), "random": under(control)}
    out: dict[str, Any] = {
        "mode": mode, "coeff": coeff if mode == "steer" else None,
        "layers": _layers(direction, layers), "seed": seed, "method": direction.method,
        **{k: (v.to_record() if hasattr(v, "to_record") else v) for k, v in res.items()},
    }
    for key in ("direction", "random"):
        cmp = compare(res["none"], res[key], n_boot=n_boot, seed=seed, labels=("none", key))
        out[f"delta_{key}"] = cmp.to_record()
    return out
