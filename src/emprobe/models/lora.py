"""LoRA factor math shared by training (GRASP), directions and geometry: the SVD of
``dW = scale * B @ A`` computed from the factors, never forming ``dW``."""

from __future__ import annotations

import torch

from emprobe.errors import ShapeError


def factor_svd(
    B: torch.Tensor, A: torch.Tensor, scale: float = 1.0, fix_signs: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``dW = scale * B @ A``: ``(U [d_out, r], S [r], V [d_in, r])``, ``S`` descending.

    ``B``: ``[d_out, r]``, ``A``: ``[r, d_in]``. Thin QR ``B = Q_B R_B``, ``A^T = Q_A R_A``;
    ``dW = Q_B (scale R_B R_A^T) Q_A^T``, so with ``scale R_B R_A^T = U_c S V_c^T`` the left
    singular vectors are ``Q_B U_c`` and the right ones ``Q_A V_c``. Cost O(d r^2), computed
    in float64 and returned in float32. ``fix_signs`` makes each left singular vector's
    largest-magnitude entry positive (a deterministic sign for exported directions).
    """
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ShapeError(f"LoRA factors do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
    q_b, r_b = torch.linalg.qr(B.detach().double())
    q_a, r_a = torch.linalg.qr(A.detach().double().T)
    u_c, s, vh_c = torch.linalg.svd(scale * r_b @ r_a.T)
    u, v = q_b @ u_c, q_a @ vh_c.T
    if fix_signs:
        idx = u.abs().argmax(0)
        sign = torch.sign(u[idx, torch.arange(u.shape[1])])
        sign[sign == 0] = 1
        u, v = u * sign, v * sign
    return u.float(), s.float(), v.float()
