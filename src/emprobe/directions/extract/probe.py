"""Logistic-probe directions: L2-regularised logistic regression on ``h_l`` between two sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emprobe.directions.activations import ChatItem, all_layers, layer_means
from emprobe.directions.direction import Direction, data_provenance
from emprobe.errors import DataError, ShapeError

if TYPE_CHECKING:
    from emprobe.models.subject import Subject


@dataclass
class ProbeFit:
    """A fitted probe: ``p(y=1|x) = sigmoid(x . weight + bias)`` on raw activations."""

    weight: torch.Tensor  # [d_model]
    bias: float
    train_accuracy: float
    test_accuracy: float | None


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100,
                 x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None) -> ProbeFit:
    """Fit ``[n, d]`` features to 0/1 labels with L-BFGS; features are standardised internally.

    The returned weight is mapped back to the raw activation space (so ``x . w + b``
    gives the logits of the raw features).
    """
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ShapeError(f"fit_logistic: x {tuple(x.shape)} and y {tuple(y.shape)} do not match")
    if y.unique().numel() < 2:
        raise DataError("fit_logistic: need examples of both classes")
    x, y = x.double(), y.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w.detach() / sd)
    b_raw = float(b.detach() - (mu * w_raw).sum())

    def acc(xx: torch.Tensor, yy: torch.Tensor) -> float:
        return float((((xx.double() @ w_raw + b_raw) > 0).double() == yy.double()).double().mean())

    test = acc(x_test, y_test) if x_test is not None and y_test is not None and len(y_test) else None
    return ProbeFit(weight=w_raw.float(), bias=b_raw, train_accuracy=acc(x, y), test_accuracy=test)


def probe_direction(
    subject: Subject,
    positive: Sequence[ChatItem],
    negative: Sequence[ChatItem],
    layers: Sequence[int] | int | None = None,
    positions: str = "response",
    l2: float = 1e-3,
    test_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 8,
) -> Direction:
    """Per layer, a logistic probe on sequence-mean activations (positive = 1, negative = 0).

    The direction is the probe's weight vector (raw activation space, not
    normalised; positive sense = toward the positive set). Train / test accuracy
    per layer go to ``stats``.
    """
    if len(positive) < 2 or len(negative) < 2:
        raise DataError("probe_direction: need at least 2 examples per class")
    layer_list = all_layers(subject, layers)
    pos = layer_means(subject, positive, layers=layer_list, positions=positions,
                      batch_size=batch_size)
    neg = layer_means(subject, negative, layers=layer_list, positions=positions,
                      batch_size=batch_size)
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    n_test = int(round(len(y) * test_fraction))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    vectors: dict[int, torch.Tensor] = {}
    train_acc: dict[str, float] = {}
    test_acc: dict[str, float | None] = {}
    bias: dict[str, float] = {}
    for la in layer_list:
        x = torch.cat([pos.per_seq[la], neg.per_seq[la]]).nan_to_num()
        fit = fit_logistic(x[train_idx], y[train_idx], l2=l2, x_test=x[test_idx], y_test=y[test_idx])
        vectors[la] = fit.weight
        train_acc[str(la)] = fit.train_accuracy
        test_acc[str(la)] = fit.test_accuracy
        bias[str(la)] = fit.bias
    return Direction.from_subject(
        subject, vectors, positions=positions, normalisation="none",
        sign="toward the positive set (logit of class 1)", method="logistic_probe",
        params={"l2": l2, "test_fraction": test_fraction, "seed": seed, "features": "sequence mean",
                "n_train": int(len(train_idx)), "n_test": int(n_test)},
        provenance={"positive": data_provenance(list(positive)),
                    "negative": data_provenance(list(negative))},
        stats={"train_accuracy": train_acc, "test_accuracy": test_acc, "bias": bias},
    )
