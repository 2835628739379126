"""A crosscoder over base and fine-tuned activations at one site (emprobe's own, small PyTorch).

Latents read both models' activations of the same token and reconstruct both::

    f = act( sum_m x_m @ W_enc[m] + b_enc )          x_m: [batch, d], f: [batch, d_sae]
    x_hat_m = f @ W_dec[:, m] + b_dec[m]              m = 0 (base), 1 (fine-tune)

``act`` is BatchTopK (keep the ``k * batch`` largest pre-activations of the batch; at
inference a learned threshold, as a JumpReLU) or ReLU with the L1 penalty
``sum_i f_i * (||W_dec[i, 0]|| + ||W_dec[i, 1]||)``. Each model's activations are scaled
to mean norm ``sqrt(d)`` first (the scales are stored).

Relative decoder norm of latent ``i``: ``r_i = ||W_dec[i, 1]|| / (||W_dec[i, 0]|| + ||W_dec[i, 1]||)``;
about 0.5 for shared latents, near 1 for fine-tune-specific and near 0 for base-specific
ones (``classify_latents`` uses ``low`` / ``high`` cut-offs, 0.3 / 0.7 by default).

Saved folder::

    crosscoder/
      crosscoder.safetensors  W_enc [2, d, d_sae], b_enc [d_sae], W_dec [d_sae, 2, d],
                              b_dec [2, d], threshold [] (BatchTopK), scales [2],
                              relative_norm [d_sae], decoder_cos [d_sae]
      crosscoder.json         format, config, models, site, layer, layer convention,
                              counts of shared / base-only / ft-only latents, training stats
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from emprobe.errors import DataError, FormatError
from emprobe.hooks.shards import ShardReader
from emprobe.io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from emprobe.sae.harvest import LAYER_CONVENTION, Harvest, HarvestConfig, harvest, load_harvest

if TYPE_CHECKING:
    from emprobe.models import Subject
    from emprobe.models.chat import Conversation

FORMAT = "emprobe-crosscoder/1"


@dataclass
class CrosscoderConfig:
    """Crosscoder training settings (serialised into ``crosscoder.json``)."""

    arch: str = "batchtopk"  # or "l1"
    d_sae: int | None = None
    expansion: int = 4
    k: int = 16
    l1_coefficient: float = 2.0
    lr: float = 1e-3
    batch_size: int = 256
    training_tokens: int | None = None  # None: one pass over the harvest
    threshold_lr: float = 0.01
    low: float = 0.3
    high: float = 0.7
    seed: int = 0

    def check(self) -> CrosscoderConfig:
        if self.arch not in ("batchtopk", "l1"):
            raise DataError(f"crosscoder arch {self.arch!r}: use batchtopk or l1")
        if not 0 <= self.low < self.high <= 1:
            raise DataError(f"crosscoder cut-offs must satisfy 0 <= low < high <= 1 (got {self.low}, {self.high})")
        return self


class Crosscoder(nn.Module):
    """Two-model crosscoder; inputs ``[batch, 2, d]`` (already scaled)."""

    threshold: torch.Tensor  # a buffer (BatchTopK inference threshold)

    def __init__(self, d_in: int, d_sae: int, arch: str = "batchtopk", k: int = 16) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.arch, self.k = d_in, d_sae, arch, k
        dec = torch.randn(d_sae, 2, d_in)
        dec = dec / dec.norm(dim=-1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())  # [2, d, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(2, d_in))
        self.register_buffer("threshold", torch.tensor(0.0))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, 2, d]`` -> pre-activations ``[batch, d_sae]``."""
        return torch.einsum("bmd,mdh->bh", x - self.b_dec, self.W_enc) + self.b_enc

    def encode(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        acts = F.relu(self.pre(x))
        if self.arch == "l1":
            return acts
        if train:
            n_keep = min(self.k * acts.shape[0], acts.numel())
            flat = acts.flatten()
            keep = torch.topk(flat, n_keep).indices
            out = torch.zeros_like(flat).scatter(0, keep, flat[keep]).view_as(acts)
            return out
        return acts * (acts > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``[batch, d_sae]`` -> ``[batch, 2, d]``."""
        return torch.einsum("bh,hmd->bmd", f, self.W_dec) + self.b_dec

    def decoder_norms(self) -> torch.Tensor:
        """``[d_sae, 2]`` decoder row norms per model."""
        return self.W_dec.detach().norm(dim=-1)

    def relative_norm(self) -> torch.Tensor:
        """``[d_sae]``: ``||W_dec[i, ft]|| / (||W_dec[i, base]|| + ||W_dec[i, ft]||)``."""
        n = self.decoder_norms()
        return n[:, 1] / (n.sum(-1).clamp_min(1e-12))

    def decoder_cos(self) -> torch.Tensor:
        """``[d_sae]``: cosine between a latent's base and fine-tune decoder rows."""
        w = self.W_dec.detach()
        return F.cosine_similarity(w[:, 0], w[:, 1], dim=-1)


def classify_latents(relative_norm: torch.Tensor, low: float = 0.3, high: float = 0.7) -> list[str]:
    """``"base"`` (r < low), ``"ft"`` (r > high) or ``"shared"`` for each latent."""
    return ["base" if r < low else "ft" if r > high else "shared" for r in relative_norm.tolist()]


def paired_provider(
    base: ShardReader, ft: ShardReader, layer: int, batch_size: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``[batch, 2, d]`` batches of the same tokens from two harvests, reshuffled each epoch."""
    if [s["rows"] for s in base.manifest["shards"]] != [s["rows"] for s in ft.manifest["shards"]]:
        raise FormatError(f"{base.folder} and {ft.folder}: harvests do not hold the same token rows")
    if base.n_rows < batch_size:
        raise DataError(f"{base.folder}: {base.n_rows} rows is fewer than one batch of {batch_size}")
    epoch = 0
    while True:
        s = seed * 100003 + epoch
        for a, b in zip(base.batches(layer, batch_size, shuffle_seed=s),
                        ft.batches(layer, batch_size, shuffle_seed=s), strict=True):
            if a.shape[0] == batch_size:
                yield torch.stack([a, b], dim=1)
        epoch += 1


def harvest_pair(
    base: Subject, ft: Subject, data: Sequence[Conversation] | Sequence[str], out_dir: str | os.PathLike[str], config: HarvestConfig,
    progress: bool = True,
) -> tuple[Harvest, Harvest]:
    """Harvest the same data through both models into ``out_dir/base`` and ``out_dir/ft``."""
    out = Path(out_dir)
    return (harvest(base, data, out / "base", config, progress=progress),
            harvest(ft, data, out / "ft", config, progress=progress))


class CrosscoderRecord(TypedDict):
    """``crosscoder.json`` (less ``arch`` and ``k``, which ``save_crosscoder`` adds): the
    settings, both harvests' sources, widths, tokens trained and the latent counts by kind."""

    format: str
    config: dict[str, object]
    site: str
    layer: int
    layer_convention: str
    base: dict[str, object]
    ft: dict[str, object]
    d_in: int
    d_sae: int
    steps: int
    trained_tokens: int
    explained_variance_last_tenth: float | None
    counts: dict[str, int]


@dataclass
class TrainedCrosscoder:
    folder: Path
    model: Crosscoder
    scales: torch.Tensor
    record: CrosscoderRecord


def train_crosscoder(
    base: Harvest | str | os.PathLike[str],
    ft: Harvest | str | os.PathLike[str],
    layer: int,
    config: CrosscoderConfig,
    out_dir: str | os.PathLike[str],
    site: str = "resid_post",
    progress: bool = True,
) -> TrainedCrosscoder:
    """Train a crosscoder on two paired harvests (same data through base and fine-tune)."""
    config.check()
    hb = base if isinstance(base, Harvest) else load_harvest(base)
    hf = ft if isinstance(ft, Harvest) else load_harvest(ft)
    if hb.d_model != hf.d_model:
        raise FormatError(f"{hb.folder} and {hf.folder}: widths differ ({hb.d_model} vs {hf.d_model})")
    rb, rf = hb.reader(site), hf.reader(site)
    torch.manual_seed(config.seed)
    d = hb.d_model
    provider = paired_provider(rb, rf, layer, config.batch_size, seed=config.seed)
    # per-model scale to mean norm sqrt(d), from the first few batches
    probe = torch.cat([next(provider) for _ in range(min(8, max(1, rb.n_rows // config.batch_size)))])
    scales = math.sqrt(d) / probe.norm(dim=-1).mean(0).clamp_min(1e-8)  # [2]
    model = Crosscoder(d, config.d_sae or config.expansion * d, config.arch, config.k)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n_tokens = config.training_tokens or rb.n_rows
    steps = max(1, n_tokens // config.batch_size)
    stats = {"mse": 0.0, "var": 0.0}
    for step in tqdm(range(steps), desc="crosscoder", disable=not progress, leave=False):
        x = next(provider) * scales[None, :, None]
        f = model.encode(x, train=True)
        x_hat = model.decode(f)
        mse = ((x_hat - x) ** 2).sum(-1).sum(-1).mean()
        loss = mse
        if config.arch == "l1":
            penalty = (f * model.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
            loss = loss + config.l1_coefficient * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        if config.arch == "batchtopk":
            with torch.no_grad():
                pos = f[f > 0]
                if pos.numel():
                    model.threshold.lerp_(pos.min(), config.threshold_lr if step else 1.0)
        if step >= steps - max(1, steps // 10):  # stats over the last tenth of training
            with torch.no_grad():
                stats["mse"] += float(mse) * x.shape[0]
                stats["var"] += float(((x - x.mean(0)) ** 2).sum())
    rel = model.relative_norm()
    kinds = classify_latents(rel, config.low, config.high)
    record: CrosscoderRecord = {
        "format": FORMAT,
        "config": asdict(config),
        "site": site,
        "layer": int(layer),
        "layer_convention": LAYER_CONVENTION,
        "base": {"model": hb.meta.get("model"), "adapter": hb.meta.get("adapter"),
                 "fingerprint": hb.meta.get("fingerprint"), "harvest": str(hb.folder)},
        "ft": {"model": hf.meta.get("model"), "adapter": hf.meta.get("adapter"),
               "fingerprint": hf.meta.get("fingerprint"), "harvest": str(hf.folder)},
        "d_in": d,
        "d_sae": model.d_sae,
        "steps": steps,
        "trained_tokens": steps * config.batch_size,
        "explained_variance_last_tenth": 1.0 - stats["mse"] / stats["var"] if stats["var"] else None,
        "counts": {k: kinds.count(k) for k in ("base", "shared", "ft")},
    }
    folder = save_crosscoder(model, scales, record, out_dir)
    return TrainedCrosscoder(folder=folder, model=model, scales=scales, record=record)


def save_crosscoder(model: Crosscoder, scales: torch.Tensor, record: CrosscoderRecord,
                    out_dir: str | os.PathLike[str]) -> Path:
    folder = Path(out_dir)
    with atomic_dir(folder) as tmp:
        save_tensors(tmp / "crosscoder.safetensors", {
            "W_enc": model.W_enc, "b_enc": model.b_enc, "W_dec": model.W_dec,
            "b_dec": model.b_dec, "threshold": model.threshold, "scales": scales,
            "relative_norm": model.relative_norm(), "decoder_cos": model.decoder_cos(),
        })
        write_json(tmp / "crosscoder.json", {**record, "arch": model.arch, "k": model.k})
    return folder


def load_crosscoder(path: str | os.PathLike[str]) -> TrainedCrosscoder:
    """Load a folder written by ``train_crosscoder``."""
    folder = Path(path)
    record = read_json(folder / "crosscoder.json")
    if record.get("format") != FORMAT:
        raise FormatError(f"{folder}/crosscoder.json: not an {FORMAT} record")
    t = load_tensors(folder / "crosscoder.safetensors")
    d_sae, _, d_in = t["W_dec"].shape
    model = Crosscoder(int(d_in), int(d_sae), record["arch"], int(record["k"]))
    model.load_state_dict({k: t[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")})
    return TrainedCrosscoder(folder=folder, model=model, scales=t["scales"], record=record)
