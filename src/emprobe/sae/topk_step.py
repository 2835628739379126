"""A sparse training step for SAELens' TopK SAE: the same loss and gradients, less work.

SAELens' ``TopKTrainingSAE.training_forward_pass`` decodes the dense ``[batch, d_sae]``
activations with a dense matmul and back-propagates through the dense encoder, so a step
costs about six ``batch x d_in x d_sae`` matmuls although only ``k`` latents per row are
non-zero. Here the encoder runs once without autograd to choose each row's top ``k``
latents, and everything that needs gradients is a sparse product with a ``[batch, d_sae]``
CSR matrix of ``k`` entries per row (``_SparseDecode``): the decoder sums ``k`` weighted
rows of ``W_dec``, and each weight's gradient is built directly in its dense layout from
the chosen latents only. The gradient of the dense step is zero outside the chosen
latents (TopK's selection passes no gradient), so the loss and the gradients are SAELens'
up to float rounding; the dense encoder matmul is the only large product left (about 3x
less time per step than SAELens' step on CPU at d_sae 4,608, k 32, batch 256).

Latents counted dead get SAELens' auxiliary (aux-k) loss the same way: the top
``d_in // 2`` dead latents of each row, chosen on the no-grad pre-activations, reconstruct
the live latents' residual through a second sparse product (``k`` ~ 288 entries per row at
d_in 576: still far less work than SAELens' dense step).

The step falls back to SAELens' own whenever the shortcut would not be exact: hooks on the
SAE's hook points, an error term, sparse activations, input reshaping (``hook_z``), a run-time
normalisation inside the SAE or a zero decoder row; and where its CSR kernels are missing:
an SAE that is not float32 / float64 on the CPU (on a GPU SAELens' dense step is fast
anyway). The class is SAELens' ``TopKTrainingSAE`` otherwise (same parameters,
initialisation, saving and loading).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from sae_lens.saes.topk_sae import TopKTrainingSAE

_CLASS: type[TopKTrainingSAE] | None = None


class _Ctx(Protocol):
    """The autograd context as ``_SparseDecode`` uses it (torch passes its own object)."""

    saved_tensors: tuple[torch.Tensor, ...]
    apply_b_dec: float
    aux: bool
    needs_input_grad: tuple[bool, ...]

    def save_for_backward(self, *tensors: torch.Tensor) -> None: ...


def _csr(idx: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, n]`` CSR matrix with ``values`` ``[batch, k]`` at columns ``idx`` (sorted
    within each row, as CSR wants): the step's only sparse structure, rebuilt for free."""
    batch, k = idx.shape
    crow = torch.arange(0, batch * k + 1, k, dtype=torch.int64, device=idx.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": these ops are tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, idx.reshape(-1), values.reshape(-1),
                                       size=(batch, n), check_invariants=False)


class _Transposed:
    """The pattern of ``_csr(idx, ., n).t()`` (``[n, batch]``, latent-major), computed once
    for both weight gradients: entries sorted by latent (a stable sort keeps each latent's
    rows in order), as CSR row pointers that also serve as ``embedding_bag`` offsets. No
    CSC-to-CSR conversion (two sorts) as torch makes for every ``_csr(...).t()``."""

    def __init__(self, idx: torch.Tensor, n: int) -> None:
        batch, k = idx.shape
        flat = idx.reshape(-1)
        self.order = flat.argsort(stable=True)
        self.crow = torch.zeros(n + 1, dtype=torch.int64, device=idx.device)
        torch.cumsum(torch.bincount(flat, minlength=n), 0, out=self.crow[1:])
        self.rows = self.order // k
        self.size, self.k = (n, batch), k

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The transposed matrix holding ``values`` ``[batch, k]`` (laid out as ``idx``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.rows, values.reshape(-1)[self.order],
                                           size=self.size, check_invariants=False)

    def product(self, values: torch.Tensor, dense: torch.Tensor, transposed: bool) -> torch.Tensor:
        """``matrix(values) @ dense`` (``[n, d]``), or with ``transposed`` its ``[d, n]``
        transpose, each row-major and written once.

        Row-major: one weighted ``embedding_bag`` sum per latent over its rows of ``dense``
        (faster on the CPU than the CSR kernel: 0.8 vs 0.9 ms at k 32, 2.2 vs 3.7 ms at the
        aux-k loss's 288). Transposed, with few entries per row: the CSR kernel writes
        straight into a column-major view of the buffer (no transposed copy; ``torch.mm``
        would also zero-fill and copy its result); with many (``k > 64``), where that
        kernel slows down (20 ms at 288), the row-major sum goes through a blocked
        transpose (4.3 ms)."""
        n, d = self.size[0], dense.shape[1]
        if not transposed or self.k > _CSR_TRANSPOSED_MAX_K:
            by_latent = torch.nn.functional.embedding_bag(
                self.rows, dense, self.crow[:-1], mode="sum",
                per_sample_weights=values.reshape(-1)[self.order])
            return _transposed_copy(by_latent) if transposed else by_latent
        out = _output((d, n), dense)
        torch.addmm(out.t(), self.matrix(values), dense, beta=0.0, out=out.t())
        return out


_CSR_TRANSPOSED_MAX_K = 64
_BLOCK = 512


def _transposed_copy(rows: torch.Tensor) -> torch.Tensor:
    """``rows.t().contiguous()`` a block of ``_BLOCK`` rows at a time (cache-sized pieces:
    about 1.5x faster than one strided copy of a 10 MiB matrix)."""
    out = torch.empty((rows.shape[1], rows.shape[0]), dtype=rows.dtype, device=rows.device)
    for i in range(0, rows.shape[0], _BLOCK):
        out[:, i : i + _BLOCK].copy_(rows[i : i + _BLOCK].t())
    return out


def _output(shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """A buffer for a beta-0 sparse ``addmm``: uninitialised where this torch's kernel ignores
    the old values (MKL's does), zeros where it would multiply them by 0 (NaN * 0 is NaN)."""
    global _BETA0_IGNORES_OUT
    if _BETA0_IGNORES_OUT is None:
        probe = torch.full((2, 1), float("nan"))
        eye = torch.eye(2).to_sparse_csr()
        torch.addmm(probe, eye, torch.ones(2, 1), beta=0.0, out=probe)
        _BETA0_IGNORES_OUT = not bool(probe.isnan().any())
    make = torch.empty if _BETA0_IGNORES_OUT else torch.zeros
    return make(shape, dtype=like.dtype, device=like.device)


_BETA0_IGNORES_OUT: bool | None = None


class _SparseDecode(torch.autograd.Function):
    """``sae_out = sum_j relu(pre[:, j]) * W_dec[idx[:, j]] + b_dec`` for each row's chosen
    latents ``idx`` ``[batch, k]`` (sorted per row) with pre-activations ``pre``.

    The values of ``pre`` come from the no-grad dense product already computed for the
    selection; every product here touches only the ``k`` chosen entries per row (weighted
    ``embedding_bag`` sums, a sampled product and CSR kernels), and each weight gradient
    comes out dense in the parameter's own layout, written once (no zero fill, no
    transposed copy for autograd to make):

    - forward: ``S_w @ W_dec`` (``S_w`` holds the ``relu(pre)`` weights), as one weighted
      ``embedding_bag`` sum per row;
    - ``d weights = (G @ W_dec.T)`` sampled at the chosen latents only (``sampled_addmm``);
    - ``W_dec``: ``S_w.T @ G``; ``W_enc``: ``(S_g.T @ sae_in).T`` written into a column-major
      view of a row-major buffer (``S_g`` holds the gradients of the chosen pre-activations;
      the transposed pattern is built once as CSR, ``_Transposed``); ``b_enc``: those summed
      per latent; ``b_dec``:
      ``G.sum(0) - apply_b_dec * W_enc @ grad(b_enc)`` (the input rows carry no gradient).

    With ``aux`` it is the TopK auxiliary reconstruction instead: ``sum_j pre[:, j] *
    W_dec[idx[:, j]]``, no ReLU and no ``b_dec`` (``b_dec`` still gets the gradient that
    reaches it through the encoder's input).

    Runs in float32 with autocast off (CPU sparse kernels have no bf16)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx: _Ctx, b_dec: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                W_dec: torch.Tensor, sae_in: torch.Tensor, idx: torch.Tensor,
                pre: torch.Tensor, apply_b_dec: float, aux: bool = False) -> torch.Tensor:
        weights = pre if aux else pre.relu()
        ctx.save_for_backward(W_enc, W_dec, sae_in, idx, weights)
        ctx.apply_b_dec, ctx.aux = apply_b_dec, aux
        batch, k = idx.shape
        # each row: the weighted sum of its k decoder rows (faster on the CPU than the CSR
        # product: 0.3 vs 1.0 ms at k 32)
        decoded = torch.nn.functional.embedding_bag(
            idx.reshape(-1), W_dec, torch.arange(0, batch * k, k, device=idx.device),
            mode="sum", per_sample_weights=weights.reshape(-1))
        return decoded if aux else decoded + b_dec

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: _Ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        W_enc, W_dec, sae_in, idx, weights = ctx.saved_tensors
        g = grads[0].to(W_dec.dtype)
        n = W_dec.shape[0]
        need = ctx.needs_input_grad
        grad_b_dec = grad_w_enc = grad_b_enc = grad_w_dec = None
        s_w = _csr(idx, weights, n)
        by_latent = _Transposed(idx, n) if need[3] or need[1] else None
        if by_latent is not None and need[3]:
            grad_w_dec = by_latent.product(weights, g, transposed=False)
        if need[0] or need[1] or need[2]:  # s_w as the pattern only (beta 0)
            grad_w = torch.sparse.sampled_addmm(s_w, g, W_dec.t(), beta=0.0).values()
            grad_pre = grad_w if ctx.aux else grad_w * (weights.reshape(-1) > 0)  # relu'(pre)
            grad_b_enc = torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(
                0, idx.reshape(-1), grad_pre)
            if by_latent is not None and need[1]:
                grad_w_enc = by_latent.product(grad_pre, sae_in, transposed=True)
            if need[0]:
                grad_b_dec = -(W_enc @ grad_b_enc) * ctx.apply_b_dec
                if not ctx.aux:
                    grad_b_dec += g.sum(0)
        return grad_b_dec, grad_w_enc, grad_b_enc, grad_w_dec, None, None, None, None, None


def sparse_topk_class() -> type[TopKTrainingSAE]:
    """``SparseTopKTrainingSAE``: a subclass of ``sae_lens.TopKTrainingSAE`` (made on first
    use so that importing emprobe does not import SAELens)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    class SparseTopKTrainingSAE(TopKTrainingSAE):
        """SAELens' TopK training SAE with a sparse ``training_forward_pass`` (see module)."""

        sparse_steps: int = 0
        dense_steps: int = 0
        last_fired: torch.Tensor | None = None  # [d_sae] firing counts of the last sparse step

        def _sparse_ok(self, step_input: TrainStepInput, norms: torch.Tensor | None) -> bool:
            cfg = self.cfg
            if norms is not None and not bool((norms > 0).all()):
                return False  # a zero decoder row: SAELens divides by its norm
            if self.W_enc.device.type != "cpu" or self.dtype not in (torch.float32, torch.float64):
                return False  # the CSR kernels it uses: CPU, float32 / float64
            if (self.use_error_term or cfg.use_sparse_activations or self.hook_z_reshaping_mode
                    or cfg.normalize_activations not in ("none", "expected_average_only_in")
                    or step_input.sae_in.ndim != 2):
                return False
            return not any(
                m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                for m in self.modules() if m is not self
            )

        def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
            rescale = bool(self.cfg.rescale_acts_by_decoder_norm)
            with torch.no_grad():
                norms = self.W_dec.norm(dim=-1) if rescale else None
            if not self._sparse_ok(step_input, norms):
                self.dense_steps += 1
                self.last_fired = None
                return super().training_forward_pass(step_input)
            self.sparse_steps += 1
            x = step_input.sae_in
            k = int(self.cfg.k)
            with torch.no_grad():  # choose the latents: the only dense matmul
                sae_in = x.to(self.dtype) - self.b_dec * self.cfg.apply_b_dec_to_input
                raw = sae_in @ self.W_enc + self.b_enc
                hidden_pre = raw * norms if norms is not None else raw
                idx = hidden_pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
                pre = raw.gather(1, idx)  # [batch, k], sorted by latent within each row
                vals = (pre * norms[idx]).relu() if norms is not None else pre.relu()
                self.last_fired = torch.bincount(idx[vals != 0], minlength=raw.shape[1]).to(raw.dtype)
            # relu(pre * norm) / norm = relu(pre): the decoder sees the raw weights, and the
            # norms (which SAELens differentiates too) add nothing to the gradient but rounding
            sae_out = _SparseDecode.apply(self.b_dec, self.W_enc, self.b_enc, self.W_dec,
                                          sae_in, idx, pre, float(self.cfg.apply_b_dec_to_input))
            mse_loss = self.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
            with torch.no_grad():
                feature_acts = torch.zeros_like(hidden_pre).scatter_(1, idx, vals.to(hidden_pre.dtype))
            aux = self._sparse_aux_loss(x, sae_in, sae_out, raw, hidden_pre,
                                        step_input.dead_neuron_mask)
            return TrainStepOutput(
                sae_in=x, sae_out=sae_out, feature_acts=feature_acts, hidden_pre=hidden_pre,
                loss=mse_loss + aux,
                losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": aux},
            )

        def _sparse_aux_loss(self, x: torch.Tensor, sae_in: torch.Tensor, sae_out: torch.Tensor,
                             raw: torch.Tensor, hidden_pre: torch.Tensor,
                             dead: torch.Tensor | None) -> torch.Tensor:
            """SAELens' TopK auxiliary loss (``calculate_topk_aux_loss``), sparse: the top
            ``min(d_in // 2, n_dead)`` dead latents of each row (chosen on ``hidden_pre``
            as SAELens does), without ReLU, reconstruct the detached residual of the live
            ones; scaled by ``min(n_dead / (d_in // 2), 1)`` and the aux coefficient."""
            n_dead = int(dead.sum()) if dead is not None else 0
            if dead is None or n_dead == 0:
                return sae_out.new_tensor(0.0)
            half = x.shape[-1] // 2
            with torch.no_grad():
                candidates = torch.where(dead[None], hidden_pre, -torch.inf)
                idx = candidates.topk(min(half, n_dead), dim=-1, sorted=False).indices
                idx = idx.sort(dim=-1).values
                pre = raw.gather(1, idx)  # the norms cancel here as in the main decode
            recons = _SparseDecode.apply(self.b_dec, self.W_enc, self.b_enc, self.W_dec, sae_in,
                                         idx, pre, float(self.cfg.apply_b_dec_to_input), True)
            residual = (x - sae_out).detach()
            loss = (recons - residual).pow(2).sum(dim=-1).mean()
            return self.cfg.aux_loss_coefficient * min(n_dead / half, 1.0) * loss

    _CLASS = SparseTopKTrainingSAE
    return _CLASS
