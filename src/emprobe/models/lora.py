"""LoRA factor math shared by training (GRASP), directions and geometry: the SVD of
``dW = scale * B @ A`` computed from the factors, never forming ``dW``.

One sign convention everywhere: each left singular vector's largest-magnitude entry is
positive (its right singular vector flips with it), so exported directions, GRASP bases
and geometry comparisons all see the same vectors.
"""

from __future__ import annotations

import torch

from emprobe.errors import ShapeError

__all__ = ["factor_svd", "factor_svd_parts"]


def factor_svd_parts(
    B: torch.Tensor, A: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The factored SVD ``dW = (Q_B U_c) diag(S) (Q_A V_c)^T``, in float64.

    ``B``: ``[d_out, r]``, ``A``: ``[r, d_in]``. Thin QR ``B = Q_B R_B``, ``A^T = Q_A R_A``;
    ``dW = Q_B (scale R_B R_A^T) Q_A^T``, and the SVD of the ``[r, r]`` core
    ``scale R_B R_A^T = U_c S V_c^T`` gives ``U = Q_B U_c``, ``V = Q_A V_c``. Cost O(d r^2).

    Returns ``(Q_B [d_out, r], U_c [r, r], S [r] descending, Q_A [d_in, r], V_c [r, r])``
    with signs fixed (module docstring).
    """
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ShapeError(
            f"LoRA factors do not chain: B {tuple(B.shape)} (want [d_out, r]), "
            f"A {tuple(A.shape)} (want [r, d_in])"
        )
    q_b, r_b = torch.linalg.qr(B.detach().double())
    q_a, r_a = torch.linalg.qr(A.detach().double().T)
    u_c, s, vh_c = torch.linalg.svd(scale * r_b @ r_a.T)
    v_c = vh_c.T
    u = q_b @ u_c
    idx = u.abs().argmax(0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return q_b, u_c * sign, s, q_a, v_c * sign


def factor_svd(
    B: torch.Tensor, A: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``dW = scale * B @ A``: ``(U [d_out, r], S [r], V [d_in, r])``, ``S`` descending.

    Computed from the factors in float64 (``factor_svd_parts``) and returned in float32;
    each column of ``U`` has its largest-magnitude entry positive.
    """
    q_b, u_c, s, q_a, v_c = factor_svd_parts(B, A, scale)
    return (q_b @ u_c).float(), s.float(), (q_a @ v_c).float()
