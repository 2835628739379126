"""Factor-only LoRA geometry agrees with dense computations on random factors (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from emprobe.errors import ShapeError
from emprobe.geometry import factors as F

TOL = 1e-8


def _factors(d_out: int, d_in: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d_out, r, generator=g, dtype=torch.float64),
            torch.randn(r, d_in, generator=g, dtype=torch.float64))


def _dense_top(dW: torch.Tensor, k: int, side: str) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(dW, full_matrices=False)
    return (Vh.mT if side == "right" else U)[:, :k]


def test_lowrank_svd_matches_dense():
    B, A = _factors(48, 32, 6, seed=1)
    s = 0.7
    got = F.lowrank_svd(B, A, s)
    dW = s * B @ A
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    assert torch.allclose(got.S, S[:6], atol=TOL)
    assert torch.allclose(got.U @ torch.diag(got.S) @ got.V.mT, dW, atol=TOL)
    # singular vectors equal up to sign
    assert torch.allclose((got.U * U[:, :6]).sum(0).abs(), torch.ones(6, dtype=torch.float64),
                          atol=1e-6)
    assert torch.allclose((got.V * Vh[:6].mT).sum(0).abs(), torch.ones(6, dtype=torch.float64),
                          atol=1e-6)
    assert torch.allclose(got.V.mT @ got.V, torch.eye(6, dtype=torch.float64), atol=TOL)


def test_frobenius_inner_norm_cosine_match_dense():
    B1, A1 = _factors(40, 24, 4, seed=2)
    B2, A2 = _factors(40, 24, 7, seed=3)
    d1, d2 = 0.5 * B1 @ A1, 2.0 * B2 @ A2
    assert math.isclose(float(F.frobenius_inner(B1, A1, 0.5, B2, A2, 2.0)),
                        float((d1 * d2).sum()), rel_tol=1e-10, abs_tol=1e-9)
    assert math.isclose(float(F.frobenius_norm(B1, A1, 0.5)), float(d1.norm()), rel_tol=1e-10)
    dense_cos = float((d1 * d2).sum() / (d1.norm() * d2.norm()))
    assert math.isclose(float(F.frobenius_cosine(B1, A1, 0.5, B2, A2, 2.0)), dense_cos,
                        abs_tol=1e-10)
    assert math.isclose(float(F.frobenius_cosine(B1, A1, 0.5, B1, A1, 3.0)), 1.0, abs_tol=1e-12)
    with pytest.raises(ShapeError):
        F.frobenius_inner(B1, A1, 1.0, B2[:30], A2, 1.0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_angles_overlap_cosines_match_dense(side):
    B1, A1 = _factors(60, 50, 8, seed=4)
    B2, A2 = _factors(60, 50, 8, seed=5)
    # make the two updates share part of their subspaces so angles are not all ~90
    B2[:, :4] = B1[:, :4] + 0.1 * B2[:, :4]
    A2[:4] = A1[:4] + 0.1 * A2[:4]
    k = 5
    Q1 = F.top_subspace(F.lowrank_svd(B1, A1, 1.0), k, side)
    Q2 = F.top_subspace(F.lowrank_svd(B2, A2, 1.0), k, side)
    D1 = _dense_top(B1 @ A1, k, side)
    D2 = _dense_top(B2 @ A2, k, side)
    dense_cos = torch.linalg.svdvals(D1.mT @ D2).clamp(0, 1)
    dense_angles = torch.arccos(dense_cos)
    assert torch.allclose(F.principal_angles(Q1, Q2), dense_angles, atol=1e-6)
    assert math.isclose(float(F.projection_overlap(Q1, Q2)),
                        float((D1.mT @ D2).square().sum() / k), abs_tol=1e-10)
    assert torch.allclose(F.paired_abs_cosines(Q1, Q2), (D1 * D2).sum(0).abs(), atol=1e-8)
    assert float(F.degrees(F.principal_angles(Q1, Q2)).mean()) < 80.0


def test_identical_updates_zero_angles_full_overlap():
    B, A = _factors(64, 40, 6, seed=6)
    Q = F.top_subspace(F.lowrank_svd(B, A, 1.0), 6, "right")
    Q_scaled = F.top_subspace(F.lowrank_svd(3 * B, A, 0.1), 6, "right")
    assert float(F.degrees(F.principal_angles(Q, Q_scaled)).max()) < 1e-4
    assert math.isclose(float(F.projection_overlap(Q, Q_scaled)), 1.0, abs_tol=1e-10)


def test_random_high_dimensional_subspaces_are_near_orthogonal():
    g = torch.Generator().manual_seed(7)
    d, k = 4000, 8
    overlaps, angles = [], []
    for _ in range(5):
        Q1, Q2 = F.random_subspace(d, k, g), F.random_subspace(d, k, g)
        overlaps.append(float(F.projection_overlap(Q1, Q2)))
        angles.append(float(F.degrees(F.principal_angles(Q1, Q2)).mean()))
    mean_overlap = sum(overlaps) / len(overlaps)
    assert abs(mean_overlap - F.expected_random_overlap(d, k)) < 0.5 * k / d
    assert min(angles) > 85.0


def test_effective_rank():
    one = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    flat = torch.ones(5, dtype=torch.float64)
    assert math.isclose(float(F.effective_rank(one)), 1.0)
    assert math.isclose(float(F.effective_rank(flat)), 5.0, rel_tol=1e-12)
    mid = float(F.effective_rank(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)))
    assert 1.0 < mid < 3.0


def test_base_weight_subspace_matches_exact_svd():
    g = torch.Generator().manual_seed(8)
    # a weight with a decaying spectrum, like trained weights
    U, _ = torch.linalg.qr(torch.randn(120, 120, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(90, 90, generator=g, dtype=torch.float64))
    S = torch.exp(-torch.arange(90, dtype=torch.float64) / 6)
    W0 = U[:, :90] @ torch.diag(S) @ V.mT
    for side in ("right", "left"):
        got = F.base_weight_subspace(W0, 8, side)
        exact = _dense_top(W0, 8, side)
        assert float(F.projection_overlap(got, exact)) > 1 - 1e-6


def test_gaussian_factors_norm_matched_and_near_orthogonal():
    g = torch.Generator().manual_seed(9)
    B, A, s = F.gaussian_factors(2000, 1500, 8, frob_norm=3.5, generator=g)
    assert math.isclose(float(F.frobenius_norm(B, A, s)), 3.5, rel_tol=1e-10)
    B2, A2 = _factors(2000, 1500, 8, seed=10)
    Q1 = F.top_subspace(F.lowrank_svd(B, A, s), 8, "right")
    Q2 = F.top_subspace(F.lowrank_svd(B2, A2, 1.0), 8, "right")
    assert float(F.projection_overlap(Q1, Q2)) < 10 * 8 / 1500
    assert abs(float(F.frobenius_cosine(B, A, s, B2, A2, 1.0))) < 0.05


def test_shape_errors_are_one_line():
    B, A = _factors(10, 8, 3, seed=11)
    with pytest.raises(ShapeError, match="do not chain"):
        F.lowrank_svd(B, A[:2])
    with pytest.raises(ShapeError, match="widths"):
        F.principal_angles(torch.eye(5)[:, :2], torch.eye(6)[:, :2])
