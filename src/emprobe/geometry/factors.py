"""LoRA geometry from the factors: pure tensor functions, one per quantity.

A LoRA update is ``dW = s B A`` with ``B`` ``[d_out, r]`` and ``A`` ``[r, d_in]``.
Nothing here forms ``dW``: with thin QR ``B = Q_B R_B`` and ``A^T = Q_A R_A``,

    dW = Q_B (s R_B R_A^T) Q_A^T,

so the SVD of ``dW`` is the SVD of the small ``r x r`` core rotated back by
``Q_B`` (left / write side, ``[d_out]``) and ``Q_A`` (right / read side,
``[d_in]``). Cost O(d r^2) time and O(d r) memory per module.

Inner products use the trace identity
``<dW_1, dW_2>_F = s_1 s_2 tr((B_1^T B_2)(A_2 A_1^T))``.

Subspace comparisons take orthonormal bases ``Q_1 [d, k1]``, ``Q_2 [d, k2]``:
principal angles ``theta = arccos(svdvals(Q_1^T Q_2))`` and projection overlap
``|Q_1^T Q_2|_F^2 / k``. Two uniformly random k-dimensional subspaces of R^d have
expected overlap exactly ``k / d``: the sanity baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from emprobe.errors import ConfigError, ShapeError
from emprobe.models.lora import factor_svd_parts

__all__ = [
    "LowRankSVD",
    "lowrank_svd",
    "frobenius_inner",
    "frobenius_norm",
    "frobenius_cosine",
    "effective_rank",
    "top_subspace",
    "paired_abs_cosines",
    "principal_angles",
    "projection_overlap",
    "base_weight_subspace",
    "gaussian_factors",
    "random_subspace",
    "expected_random_overlap",
]

Side = Literal["right", "left"]


@dataclass(frozen=True)
class LowRankSVD:
    """Thin SVD of ``dW = U diag(S) V^T``, kept as ``U = Q_left U_core``, ``V = Q_right V_core``.

    Attributes:
        Q_left: ``[d_out, r]`` orthonormal basis of ``span(B)`` (from the QR of ``B``).
        U_core: ``[r, r]`` left singular vectors of the core. S: ``[r]``, descending.
        Q_right: ``[d_in, r]`` orthonormal basis of ``span(A^T)``.
        V_core: ``[r, r]`` right singular vectors of the core.

    ``U`` (``[d_out, r]``, write side) and ``V`` (``[d_in, r]``, read side) are formed on
    demand; comparisons between two updates only need ``Q_1^T Q_2`` (``[r, r]``).
    """

    Q_left: torch.Tensor
    U_core: torch.Tensor
    S: torch.Tensor
    Q_right: torch.Tensor
    V_core: torch.Tensor

    @property
    def U(self) -> torch.Tensor:
        return self.Q_left @ self.U_core

    @property
    def V(self) -> torch.Tensor:
        return self.Q_right @ self.V_core

    def vectors(self, side: Side) -> torch.Tensor:
        """``V`` for ``side="right"`` (read), ``U`` for ``side="left"`` (write)."""
        if side == "right":
            return self.V
        if side == "left":
            return self.U
        raise ConfigError(f"side must be 'right' or 'left', got {side!r}")


def _check_factors(B: torch.Tensor, A: torch.Tensor) -> None:
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ShapeError(
            f"LoRA factors do not chain: B {tuple(B.shape)} (want [d_out, r]), "
            f"A {tuple(A.shape)} (want [r, d_in])"
        )


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> LowRankSVD:
    """SVD of ``dW = scale * B @ A`` from the factors (``B [d_out, r]``, ``A [r, d_in]``).

    The factored form of ``emprobe.models.lora.factor_svd`` (same math, same signs),
    returned in ``B``'s dtype.
    """
    _check_factors(B, A)
    parts = factor_svd_parts(B, A, scale)
    Q_B, U_core, S, Q_A, V_core = (t.to(B.dtype) for t in parts)
    return LowRankSVD(Q_left=Q_B, U_core=U_core, S=S, Q_right=Q_A, V_core=V_core)


def frobenius_inner(
    B1: torch.Tensor, A1: torch.Tensor, s1: float,
    B2: torch.Tensor, A2: torch.Tensor, s2: float,
) -> torch.Tensor:
    """``<dW_1, dW_2>_F = s_1 s_2 tr((B_1^T B_2)(A_2 A_1^T))`` (a scalar tensor)."""
    _check_factors(B1, A1)
    _check_factors(B2, A2)
    if B1.shape[0] != B2.shape[0] or A1.shape[1] != A2.shape[1]:
        raise ShapeError(
            f"updates of different shapes: [{B1.shape[0]}, {A1.shape[1]}] vs "
            f"[{B2.shape[0]}, {A2.shape[1]}]"
        )
    return s1 * s2 * torch.trace((B1.mT @ B2) @ (A2 @ A1.mT))


def frobenius_norm(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``|dW|_F = sqrt(<dW, dW>_F)``."""
    return frobenius_inner(B, A, scale, B, A, scale).clamp_min(0).sqrt()


def frobenius_cosine(
    B1: torch.Tensor, A1: torch.Tensor, s1: float,
    B2: torch.Tensor, A2: torch.Tensor, s2: float,
) -> torch.Tensor:
    """``<dW_1, dW_2>_F / (|dW_1|_F |dW_2|_F)`` (signed; NaN if either update is zero)."""
    inner = frobenius_inner(B1, A1, s1, B2, A2, s2)
    norms = frobenius_norm(B1, A1, s1) * frobenius_norm(B2, A2, s2)
    return inner / norms if norms > 0 else torch.full_like(inner, float("nan"))


def effective_rank(S: torch.Tensor) -> torch.Tensor:
    """Entropy effective rank ``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / sum sigma``.

    (Roy and Vetterli, 2007.) It is 1 for a rank-1 update, ``r`` for ``r`` equal
    singular values, and in between otherwise. ``S``: ``[r]``, non-negative.
    """
    total = S.sum()
    if total <= 0:
        return torch.zeros((), dtype=S.dtype)
    p = S / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def top_subspace(svd: LowRankSVD, k: int, side: Side = "right") -> torch.Tensor:
    """Orthonormal basis ``[d, min(k, r)]`` of the top-k singular subspace on one side."""
    kk = min(k, svd.S.shape[0])
    if side == "right":
        return svd.Q_right @ svd.V_core[:, :kk]
    if side == "left":
        return svd.Q_left @ svd.U_core[:, :kk]
    raise ConfigError(f"side must be 'right' or 'left', got {side!r}")


def paired_abs_cosines(V1: torch.Tensor, V2: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Index-paired ``|<v_i^1, v_i^2>|`` for i = 1..k of unit columns ``[d, k]`` -> ``[k]``."""
    if V1.shape[0] != V2.shape[0]:
        raise ShapeError(f"singular vectors of different widths: {V1.shape[0]} vs {V2.shape[0]}")
    k = min(V1.shape[1], V2.shape[1]) if k is None else min(k, V1.shape[1], V2.shape[1])
    return (V1[:, :k] * V2[:, :k]).sum(dim=0).abs()


def principal_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Principal angles in radians ``[min(k1, k2)]`` between ``span(Q1)`` and ``span(Q2)``.

    ``theta = arccos(svdvals(Q1^T Q2))`` for orthonormal ``Q1 [d, k1]``, ``Q2 [d, k2]``;
    ascending (smallest angle first).
    """
    if Q1.shape[0] != Q2.shape[0]:
        raise ShapeError(f"subspaces of different ambient widths: {Q1.shape[0]} vs {Q2.shape[0]}")
    cosines = torch.linalg.svdvals(Q1.mT @ Q2).clamp(0.0, 1.0)
    return torch.arccos(cosines)


def projection_overlap(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """``|Q1^T Q2|_F^2 / k = (1/k) sum cos^2 theta_i`` with ``k = min(k1, k2)``; in [0, 1]."""
    if Q1.shape[0] != Q2.shape[0]:
        raise ShapeError(f"subspaces of different ambient widths: {Q1.shape[0]} vs {Q2.shape[0]}")
    k = min(Q1.shape[1], Q2.shape[1])
    return (Q1.mT @ Q2).square().sum() / k


def base_weight_subspace(
    W0: torch.Tensor, k: int, side: Side = "right", niter: int = 4, oversample: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Top-k singular subspace of a base weight ``W0 [d_out, d_in]`` by randomized SVD.

    Uses ``torch.svd_lowrank`` (Halko, Martinsson and Tropp, 2011) with ``q = k +
    oversample`` columns and ``niter`` power iterations: O(d_out d_in q) time
    instead of a full SVD. Returns ``[d_in, k]`` (right) or ``[d_out, k]`` (left).
    """
    q = min(k + oversample, *W0.shape)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        U, _, V = torch.svd_lowrank(W0, q=q, niter=niter)
    finally:
        torch.random.set_rng_state(state)
    vecs = V if side == "right" else U
    return vecs[:, :k]


def gaussian_factors(
    d_out: int, d_in: int, rank: int, frob_norm: float, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A norm-matched Gaussian baseline in factored form: ``(B [d_out, r], A [r, d_in], s)``.

    ``B`` and ``A`` have i.i.d. standard normal entries and ``s`` is chosen so that
    ``|s B A|_F = frob_norm``. Its singular subspaces are uniformly distributed
    (rotation invariance), exactly as the top-k subspaces of a dense Gaussian
    ``d_out x d_in`` matrix are, so angles and overlaps against it match the
    dense-Gaussian baseline while memory stays O(d r).
    """
    B = torch.randn(d_out, rank, generator=generator, dtype=dtype)
    A = torch.randn(rank, d_in, generator=generator, dtype=dtype)
    norm = float(frobenius_norm(B, A, 1.0))
    return B, A, (frob_norm / norm if norm > 0 else 0.0)


def random_subspace(
    d: int, k: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A uniformly random k-dimensional subspace of R^d: orthonormal ``[d, k]``."""
    Q, R = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=dtype))
    # Sign fix makes the distribution exactly Haar.
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(()))


def expected_random_overlap(d: int, k: int) -> float:
    """``E|Q1^T Q2|_F^2 / k = k / d`` for independent uniform k-subspaces of R^d."""
    return k / d


def degrees(radians: torch.Tensor) -> torch.Tensor:
    """Radians to degrees."""
    return radians * (180.0 / math.pi)
