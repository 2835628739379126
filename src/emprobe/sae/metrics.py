"""SAE quality: L0, explained variance, dead latents, and loss recovered when spliced in.

Definitions (``x`` an activation row, ``x_hat`` its reconstruction, over the eval tokens):

- ``l0``: mean number of non-zero latents per token.
- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.
- ``dead_latents``: latents that never fire on the eval tokens (``frac_alive`` the rest).
- ``ce_clean`` / ``ce_sae`` / ``ce_zero``: next-token cross-entropy (nats) of the model,
  of the model with ``x`` replaced by ``x_hat`` at the SAE's site, and with ``x`` zeroed.
- ``loss_recovered``: ``(ce_zero - ce_sae) / (ce_zero - ce_clean)`` (1 = perfect splice).
- ``kl_sae``: mean KL(clean || spliced) of the next-token distributions, nats per token.

The splice and the zero-ablation act on the harvested token selection (by default all
tokens but the attention sinks of ``Subject.sink_mask``, on which the SAE is not trained;
``emprobe.sae.harvest.token_mask``).

``check_quality`` is the gate: an SAE whose explained variance is low (or negative: worse
than predicting the mean) or whose latents are mostly dead is not worth diffing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from emprobe.errors import DataError, QualityError
from emprobe.hooks.core import add_site_hook
from emprobe.io import write_json
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch
from emprobe.models.subject import Subject
from emprobe.sae.harvest import data_encoder, token_mask

if TYPE_CHECKING:
    from sae_lens import SAE, SAEConfig

Metrics = dict[str, float | int | str]
"""A metrics record: numbers by name, plus the SAE's site / model / architecture names."""


class ReconstructionStats:
    """Streaming sums for L0, explained variance, MSE and latent firing counts."""

    def __init__(self, d_sae: int) -> None:
        self.n = 0
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = 0.0
        self.sse = 0.0
        self.l0_sum = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.long)

    @torch.no_grad()
    def add(self, x: torch.Tensor, x_hat: torch.Tensor, feats: torch.Tensor) -> None:
        """``x``, ``x_hat``: ``[rows, d_in]``; ``feats``: ``[rows, d_sae]``."""
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        s = x.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += float((x * x).sum())
        self.sse += float(((x - x_hat) ** 2).sum())
        active = feats != 0
        self.l0_sum += float(active.sum())
        self.fired += active.sum(0).cpu()

    def result(self) -> dict[str, float]:
        if self.n == 0 or self.sum_x is None:
            raise DataError("reconstruction metrics: no rows evaluated")
        sst = self.sum_sq - float((self.sum_x * self.sum_x).sum()) / self.n
        dead = int((self.fired == 0).sum())
        return {
            "n_tokens": self.n,
            "l0": self.l0_sum / self.n,
            "explained_variance": 1.0 - self.sse / sst if sst > 0 else float("nan"),
            "mse_per_token": self.sse / self.n,
            "dead_latents": dead,
            "frac_alive": 1.0 - dead / self.fired.numel(),
        }


@torch.no_grad()
def reconstruction_metrics(sae: SAE[SAEConfig], batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Metrics of ``sae`` on activation batches ``[rows, d_in]`` (no model needed)."""
    stats = ReconstructionStats(int(sae.cfg.d_sae))
    for x in batches:
        x = x.to(sae.device, sae.dtype)
        feats = sae.encode(x)
        stats.add(x, sae.decode(feats), feats)
    return stats.result()


def _run_edited(subject: Subject, sae: SAE[SAEConfig], site: str, layer: int, batch: ChatBatch,
                sel: torch.Tensor,
                edit: str | None, stats: ReconstructionStats) -> torch.Tensor:
    """Logits ``[batch, pos - 1, vocab]`` with the selected tokens' activation left alone
    (``edit=None``), replaced by the SAE reconstruction (``"sae"``) or zeroed (``"zero"``)."""

    def fn(hidden: torch.Tensor) -> torch.Tensor | None:
        if edit is None:
            return None
        m = sel.to(hidden.device).unsqueeze(-1)
        if edit == "zero":
            return torch.where(m, torch.zeros_like(hidden), hidden)
        x = hidden[sel].to(sae.device, sae.dtype)
        feats = sae.encode(x)
        x_hat = sae.decode(feats)
        stats.add(x, x_hat, feats)
        new = hidden.clone()
        new[sel] = x_hat.to(hidden.device, hidden.dtype)
        return new

    handle = add_site_hook(subject, site, layer, fn)
    try:
        with use_batch(batch):
            out = subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return out.logits[:, :-1].float()


@torch.no_grad()
def spliced_metrics(
    subject: Subject,
    sae: SAE[SAEConfig],
    site: str,
    layer: int,
    data: Sequence[Conversation] | Sequence[str],
    positions: str = "all",
    skip_first: bool = True,
    batch_size: int = 8,
    max_length: int = 256,
) -> dict[str, float]:
    """Run ``data`` clean, with the SAE spliced in at ``(site, layer)``, and zero-ablated.

    Returns the reconstruction metrics on the selected tokens plus ``ce_clean``,
    ``ce_sae``, ``ce_zero``, ``loss_recovered`` and ``kl_sae`` (see module docstring). The
    loss is over next-token predictions whose target is a selected token.
    """
    if not data:
        raise DataError("spliced metrics: no eval data")
    encode = data_encoder(subject, data, max_length)
    stats = ReconstructionStats(int(sae.cfg.d_sae))
    tot = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    n_targets = 0
    for i in range(0, len(data), batch_size):
        batch = encode(i, i + batch_size)
        sel = token_mask(subject, batch, positions, skip_first)
        target_mask = sel[:, 1:]  # predictions at p-1 of selected tokens p
        targets = batch.input_ids[:, 1:]

        clean, spliced, zero = (_run_edited(subject, sae, site, layer, batch, sel, edit, stats)
                                for edit in (None, "sae", "zero"))
        logp_clean = F.log_softmax(clean, -1)
        logp_sae = F.log_softmax(spliced, -1)
        logp_zero = F.log_softmax(zero, -1)
        for key, lp in (("clean", logp_clean), ("sae", logp_sae), ("zero", logp_zero)):
            nll = -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            tot[key] += float(nll[target_mask].sum())
        kl = (logp_clean.exp() * (logp_clean - logp_sae)).sum(-1)
        tot["kl"] += float(kl[target_mask].sum())
        n_targets += int(target_mask.sum())
    if n_targets == 0:
        raise DataError(f"spliced metrics: no {positions!r} tokens to score in the eval data")
    ce = {k: v / n_targets for k, v in tot.items()}
    denom = ce["zero"] - ce["clean"]
    return {
        **stats.result(),
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "loss_recovered": (ce["zero"] - ce["sae"]) / denom if denom != 0 else float("nan"),
        "kl_sae": ce["kl"],
        "n_loss_tokens": n_targets,
    }


def evaluate_sae(
    subject: Subject,
    sae: SAE[SAEConfig],
    site: str,
    layer: int,
    data: Sequence[Conversation] | Sequence[str],
    out_dir: str | os.PathLike[str] | None = None,
    positions: str = "all",
    skip_first: bool = True,
    batch_size: int = 8,
    max_length: int = 256,
) -> Metrics:
    """``spliced_metrics`` (same options) plus the SAE's shape; written to
    ``out_dir/metrics.json`` if given."""
    metrics = spliced_metrics(subject, sae, site, layer, data, positions=positions,
                              skip_first=skip_first, batch_size=batch_size,
                              max_length=max_length)
    record: Metrics = {
        "site": site,
        "layer": int(layer),
        "model": subject.name,
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": sae.cfg.architecture(),
        "n_eval_items": len(data),
        **metrics,
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", record)
    return record


def check_quality(
    metrics: Mapping[str, float | int | str],
    min_ev: float = 0.7,
    max_dead: float = 0.1,
    raise_error: bool = True,
) -> dict[str, object]:
    """Gate an SAE on its metrics (``reconstruction_metrics`` / ``spliced_metrics`` output).

    ``dead_fraction`` is ``1 - frac_alive``. Returns ``{"ok", "explained_variance",
    "dead_fraction", "min_ev", "max_dead", "problems"}``; with ``raise_error`` (default) a
    failing SAE raises ``QualityError`` naming every problem instead.
    """
    for key in ("explained_variance", "frac_alive"):
        if key not in metrics:
            raise DataError(f"SAE quality check: metrics lack {key!r} (have {sorted(metrics)[:8]})")
    ev = float(metrics["explained_variance"])
    dead = 1.0 - float(metrics["frac_alive"])
    problems: list[str] = []
    if not ev >= min_ev:  # also catches NaN
        kind = "negative" if ev < 0 else "low"
        problems.append(f"{kind} explained variance {ev:.3f} (< {min_ev})")
    if not dead <= max_dead:
        problems.append(f"{dead:.1%} dead latents (> {max_dead:.0%})")
    result: dict[str, object] = {
        "ok": not problems, "explained_variance": ev, "dead_fraction": dead, "min_ev": min_ev,
        "max_dead": max_dead, "problems": problems}
    if problems and raise_error:
        raise QualityError("SAE below the quality gate: " + "; ".join(problems))
    return result
