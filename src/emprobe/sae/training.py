"""Training SAEs on harvested activations with SAELens' ``SAETrainer``; SAELens-format folders.

The trainer is ``emprobe.sae.trainer_step.EmprobeSAETrainer`` (SAELens' trainer, its
gradient clipping done inside fused Adam); a TopK SAE is ``emprobe.sae.topk_step``'s
sparse-step subclass of SAELens' own. Both give SAELens' weights up to float rounding.

One harvest feeds any number of SAEs (sites x layers x architectures): each SAE gets a
data provider that cycles over one ``(site, layer)``, reshuffled every epoch. When the
harvest kept its rows in RAM (``Harvest.memory``, the common case) the provider samples
them directly, up-casting one batch at a time to float32; otherwise it streams the
shards with one shard in RAM at a time (bounded memory).

Saved folder (SAELens' format, loadable by ``sae_lens.SAE.load_from_disk``)::

    sae/
      cfg.json                 SAELens inference config; ``metadata`` names the model,
                               ``hook_name`` (the classic TransformerLens name, e.g.
                               ``blocks.15.hook_resid_post``: ``HookedSAETransformer`` resolves
                               it and ``TransformerBridge`` keeps it as an alias), and the
                               emprobe keys ``emprobe_site``, ``emprobe_layer``,
                               ``emprobe_hook_name_bridge``, ``emprobe_layer_convention``
      sae_weights.safetensors  W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec (+ threshold)
      sparsity.safetensors     log10 firing frequency per latent over the last window
      emprobe.json             emprobe's record: site, layer, convention, model, harvest, config
      metrics.json             written by ``emprobe.sae.metrics`` (when computed)

BatchTopK SAEs are saved as JumpReLU SAEs (SAELens' convention for inference).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import torch

from emprobe.errors import DataError
from emprobe.hooks.convention import check_site, tl_hook_name
from emprobe.hooks.shards import ShardReader
from emprobe.io import atomic_dir, save_tensors, write_json
from emprobe.models.allocator import tune_cpu_allocator
from emprobe.sae.folder import load_sae, sae_site, site_from_hook_name
from emprobe.sae.harvest import LAYER_CONVENTION, Harvest, load_harvest
from emprobe.sae.normalise import FOLDED_KEY, NORM_MODES, estimate_norm_scaling_factor
from emprobe.sae.trainer_step import trainer_class

if TYPE_CHECKING:
    from sae_lens import SAE, SAEConfig, SAETrainer, TrainingSAE, TrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    _TrainingSAE = TrainingSAE[TrainingSAEConfig] | TopKTrainingSAE
    _Trainer = SAETrainer[_TrainingSAE, TrainingSAEConfig]

__all__ = ["ARCHITECTURES", "SAETrainConfig", "TrainedSAE", "load_sae", "memory_provider",
           "sae_hook_name", "sae_metadata", "sae_site", "shard_provider", "site_from_hook_name",
           "train_sae", "train_saes", "use_fused_adam"]

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")

# classic HookedTransformer names; TransformerBridge resolves each as an alias
_CLASSIC_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}


def sae_hook_name(site: str, layer: int) -> str:
    """The hook name written into an SAE's ``cfg.json``: the classic TransformerLens name,
    which both ``HookedSAETransformer.add_sae`` and SAELens' bridge resolve."""
    check_site(site)
    return _CLASSIC_HOOKS[site].format(layer=int(layer))


@dataclass
class SAETrainConfig:
    """How to train one SAE. Serialised into ``emprobe.json``.

    Attributes:
        arch: ``topk`` | ``batchtopk`` | ``jumprelu`` | ``standard`` (L1).
        d_sae: number of latents (default ``expansion * d_in``).
        k: active latents per token (TopK) or on average (BatchTopK).
        l1_coefficient: sparsity weight of the standard SAE.
        l0_coefficient: sparsity weight of the JumpReLU SAE.
        lr: Adam learning rate (constant after ``lr_warm_up_steps``).
        batch_size: activation rows per step.
        training_tokens: rows to train on (None: one pass over the harvest); the
            provider cycles over the harvest when this is larger.
        normalize_activations: SAELens' ``expected_average_only_in`` (the default: every
            input row times one constant so that the mean row norm is sqrt(d_in) during
            training, estimated from the first batches and folded into the weights at the
            end, so the saved SAE reads raw activations and its ``cfg.json`` says ``none``;
            ``emprobe.sae.normalise``) or ``none``. The same hyper-parameters then suit
            models whose activation norms differ by orders of magnitude.
        dead_feature_window: steps without firing before a latent counts as dead (the
            TopK / BatchTopK auxiliary loss then trains it on the residual error).
        aux_loss_coefficient: weight of that auxiliary (aux-k) loss.
        lr_decay_fraction: decay the learning rate linearly to ``lr / 10`` over this last
            fraction of the steps (0: constant).
        autocast: run the SAE's forward in bfloat16 (``torch.autocast``; fast on CPUs with
            bf16 matmuls).
        fused_adam: give SAELens' trainer torch's fused Adam kernel (the same update as its
            default Adam, in one pass over each parameter's state; about 12-16 % less CPU
            time per step at d_sae 4608, batch 256). Falls back to the default where the
            fused kernel is unavailable.
        sparse_topk: train a TopK SAE with ``emprobe.sae.topk_step`` (SAELens' TopK SAE whose
            training step touches only each row's k chosen latents, the aux-k loss of dead
            latents included: the same loss and gradients, about 3x less time per step on
            CPU).
    """

    arch: str = "topk"
    d_sae: int | None = None
    expansion: int = 8
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    batch_size: int = 512
    training_tokens: int | None = None
    normalize_activations: str = "expected_average_only_in"
    dead_feature_window: int = 500
    aux_loss_coefficient: float = 1.0
    lr_decay_fraction: float = 0.0
    autocast: bool = False
    fused_adam: bool = True
    sparse_topk: bool = True
    seed: int = 0
    device: str = "cpu"

    def check(self) -> SAETrainConfig:
        if self.arch not in ARCHITECTURES:
            raise DataError(f"SAE arch {self.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        if self.batch_size < 1 or self.k < 1:
            raise DataError(f"SAE config: batch_size and k must be >= 1 (got {self.batch_size}, {self.k})")
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise DataError(f"SAE config: lr_decay_fraction {self.lr_decay_fraction} not in [0, 1]")
        if self.normalize_activations not in NORM_MODES:
            raise DataError(f"normalize_activations {self.normalize_activations!r}: use one "
                            f"of {', '.join(NORM_MODES)}")
        return self


@dataclass
class TrainedSAE:
    """What ``train_sae`` returns: the folder, the inference SAE loaded back from it, its
    record, and SAELens' training SAE object as trained (``None`` after a reload)."""

    folder: Path
    sae: SAE[SAEConfig]
    record: dict[str, object]
    training_sae: _TrainingSAE | None = None


def shard_provider(
    reader: ShardReader, layer: int, batch_size: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``[batch_size, d_model]`` batches of one layer; reshuffled each epoch.

    A short last batch of an epoch is dropped (SAELens' trainer counts samples per step).
    """
    if reader.n_rows < batch_size:
        raise DataError(
            f"{reader.folder}: {reader.n_rows} rows is fewer than one batch of {batch_size}"
        )
    epoch = 0
    while True:
        for batch in reader.batches(layer, batch_size, shuffle_seed=seed * 100003 + epoch):
            if batch.shape[0] == batch_size:
                yield batch
        epoch += 1


def memory_provider(
    rows: torch.Tensor, batch_size: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless float32 ``[batch_size, d_model]`` batches sampled from in-memory ``rows``
    ``[n_rows, d_model]`` (any dtype), a fresh permutation each epoch; the short tail of an
    epoch is dropped."""
    n = int(rows.shape[0])
    if n < batch_size:
        raise DataError(f"in-memory harvest: {n} rows is fewer than one batch of {batch_size}")
    gen = torch.Generator().manual_seed(seed * 100003)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield rows[perm[i : i + batch_size]].float()


class _CommonSAEConfig(TypedDict):
    """The SAELens config fields every architecture takes."""

    d_in: int
    d_sae: int
    device: str
    normalize_activations: Literal["none", "expected_average_only_in"]


def _training_sae_config(cfg: SAETrainConfig, d_in: int,
                         metadata: Mapping[str, object]) -> TrainingSAEConfig:
    """SAELens' training config of ``cfg.arch`` with emprobe's ``metadata`` attached."""
    import sae_lens

    d_sae = cfg.d_sae or cfg.expansion * d_in
    common = _CommonSAEConfig(
        d_in=d_in, d_sae=d_sae, device=cfg.device,
        normalize_activations=("expected_average_only_in"
                               if cfg.normalize_activations == "expected_average_only_in"
                               else "none"))
    out: TrainingSAEConfig
    if cfg.arch == "topk":
        out = sae_lens.TopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
                                             **common)
    elif cfg.arch == "batchtopk":
        out = sae_lens.BatchTopKTrainingSAEConfig(k=float(cfg.k),
                                                  aux_loss_coefficient=cfg.aux_loss_coefficient,
                                                  **common)
    elif cfg.arch == "jumprelu":
        out = sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l0_coefficient, **common)
    else:
        out = sae_lens.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)
    for key, value in metadata.items():
        setattr(out.metadata, key, value)
    return out


def sae_metadata(model: str, site: str, layer: int,
                 extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """The metadata emprobe writes into ``cfg.json`` (SAELens keys plus ``emprobe_*`` keys)."""
    return {
        "model_name": model,
        "hook_name": sae_hook_name(site, layer),
        "emprobe_hook_name_bridge": tl_hook_name(site, layer),
        "emprobe_site": site,
        "emprobe_layer": int(layer),
        "emprobe_layer_convention": LAYER_CONVENTION,
        **(extra or {}),
    }


def train_sae(
    harvest: Harvest | str | os.PathLike[str],
    layer: int,
    config: SAETrainConfig,
    out_dir: str | os.PathLike[str],
    site: str = "resid_post",
    progress: bool = True,
) -> TrainedSAE:
    """Train one SAE on ``(site, layer)`` of a harvest with SAELens' trainer; save it.

    Reads the harvest's in-memory rows when it kept them (no disk round trip), else its
    shards. Returns the saved folder and the SAE re-loaded from it with
    ``sae_lens.SAE.load_from_disk``; the record holds ``data_source`` and ``train_seconds``.
    """
    config.check()
    check_site(site)
    tune_cpu_allocator(config.device)  # on the CPU: the step's gradients reuse their pages
    t_start = time.perf_counter()
    hv = harvest if isinstance(harvest, Harvest) else load_harvest(harvest)
    reader, in_memory = _layer_rows(hv, site, layer)
    steps = max(1, (config.training_tokens or reader.n_rows) // config.batch_size)
    metadata = sae_metadata(str(hv.meta.get("model", "?")), site, layer,
                            {"emprobe_positions": hv.config.positions})
    torch.manual_seed(config.seed)
    training_sae = _training_sae(config, hv.d_model, metadata)
    provider = (memory_provider(in_memory, config.batch_size, seed=config.seed)
                if in_memory is not None
                else shard_provider(reader, layer, config.batch_size, seed=config.seed))
    trainer = trainer_class()(_trainer_config(config, steps), training_sae, provider)
    factor = _set_norm_scaling(trainer, provider, config, hv.d_model)
    fused = config.fused_adam and use_fused_adam(trainer)
    trained = trainer.fit() if progress else _fit_quiet(trainer)
    if factor is not None:  # folded by the trainer: the saved cfg says "none"
        setattr(trained.cfg.metadata, FOLDED_KEY, factor)
    record = {**_data_record(hv, site, layer, reader.n_rows, in_memory is not None),
              **_training_record(trainer, trained, config, fused, factor,
                                 time.perf_counter() - t_start)}
    folder = Path(out_dir)
    with atomic_dir(folder) as tmp:
        trained.save_inference_model(str(tmp))
        save_tensors(tmp / "sparsity.safetensors", {"sparsity": trainer.log_feature_sparsity})
        write_json(tmp / "emprobe.json", record)
    return TrainedSAE(folder=folder, sae=load_sae(folder), record=record, training_sae=trained)


def _layer_rows(hv: Harvest, site: str, layer: int) -> tuple[ShardReader, torch.Tensor | None]:
    """The harvest's shard reader for ``site`` and its in-memory rows ``[n_rows, d_model]`` of
    ``layer`` (None when the harvest did not keep them); ``DataError`` for a missing layer."""
    reader = hv.reader(site)
    if layer not in reader.layers:
        raise DataError(f"{hv.folder}: layer {layer} not harvested at {site} (have {reader.layers})")
    return reader, hv.rows(site, layer)


def _training_sae(config: SAETrainConfig, d_in: int,
                  metadata: Mapping[str, object]) -> _TrainingSAE:
    """SAELens' training SAE for ``config`` (emprobe's sparse-step TopK subclass when
    ``sparse_topk``); its weights are drawn from torch's global generator."""
    import sae_lens

    sae_cfg = _training_sae_config(config, d_in, metadata)
    if config.arch == "topk" and config.sparse_topk:
        from emprobe.sae.topk_step import sparse_topk_class

        return sparse_topk_class()(sae_lens.TopKTrainingSAEConfig.from_dict(sae_cfg.to_dict()))
    return sae_lens.TrainingSAE.from_dict(sae_cfg.to_dict())


def _trainer_config(config: SAETrainConfig, steps: int) -> SAETrainerConfig:
    """SAELens' trainer settings for ``steps`` steps of ``config.batch_size`` rows."""
    from sae_lens.config import SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr / 10 if config.lr_decay_fraction > 0 else config.lr,
        lr_warm_up_steps=config.lr_warm_up_steps,
        lr_decay_steps=int(config.lr_decay_fraction * steps),
        device=config.device,
        autocast=config.autocast,
        dead_feature_window=min(config.dead_feature_window, steps),
        feature_sampling_window=max(steps, 1),
        n_batches_for_norm_estimate=min(64, steps),
    )


def _data_record(hv: Harvest, site: str, layer: int, n_rows: int,
                 in_memory: bool) -> dict[str, object]:
    """``emprobe.json``'s first half: what the SAE reads and where its rows came from."""
    return {
        "format": "emprobe-sae/1",
        "model": hv.meta.get("model"),
        "adapter": hv.meta.get("adapter"),
        "fingerprint": hv.meta.get("fingerprint"),
        "site": site,
        "layer": int(layer),
        "layer_convention": LAYER_CONVENTION,
        "hook_name": sae_hook_name(site, layer),
        "hook_name_transformer_lens_bridge": tl_hook_name(site, layer),
        "positions": hv.config.positions,
        "harvest": str(hv.folder),
        "harvest_rows": n_rows,
        "data_source": "memory" if in_memory else "shards",
    }


def _training_record(trainer: _Trainer,
                     trained: _TrainingSAE, config: SAETrainConfig,
                     fused: bool, factor: float | None, seconds: float) -> dict[str, object]:
    """``emprobe.json``'s second half: how the training went (counts, time, settings)."""
    import sae_lens

    return {
        "fused_adam": fused,
        "norm_scaling_factor": factor,
        "sparse_topk_steps": int(getattr(trained, "sparse_steps", 0)),
        "train_seconds": seconds,
        "trained_tokens": trainer.n_training_samples,
        "steps": trainer.n_training_steps,
        "train_dead_latents": int(trainer.dead_neurons.sum()),
        "train_l0": float(trainer.feature_sparsity.sum()) if trainer.n_frac_active_samples else None,
        "config": asdict(config),
        "sae_lens_version": sae_lens.__version__,
    }


def _set_norm_scaling(trainer: _Trainer, provider: Iterator[torch.Tensor], config: SAETrainConfig,
                      d_in: int) -> float | None:
    """For ``expected_average_only_in``: estimate the input scale from the provider's first
    ``n_batches_for_norm_estimate`` batches (the ones SAELens' own estimate would take) and
    hand it to the trainer, which then skips its estimate and folds this factor into the
    weights when training ends. None for ``none``."""
    if config.normalize_activations != "expected_average_only_in":
        return None
    factor = estimate_norm_scaling_factor(provider, d_in,
                                          trainer.cfg.n_batches_for_norm_estimate)
    trainer.activation_scaler.scaling_factor = factor
    return factor


def use_fused_adam(trainer: _Trainer) -> bool:
    """Swap a fresh ``sae_lens.SAETrainer``'s Adam for torch's fused kernel; True when done.

    Same hyper-parameters (lr, betas, eps, weight decay) and a learning-rate schedule rebuilt
    by SAELens' own ``get_lr_scheduler`` from the trainer's config, so the update is SAELens'
    (up to float rounding); only the kernel changes. Returns False, leaving the trainer
    as it was, if it has already stepped, its optimizer is not a plain Adam, or this
    torch/device has no fused Adam.
    """
    from sae_lens.training.optim import get_lr_scheduler

    old = getattr(trainer, "optimizer", None)
    cfg = trainer.cfg
    if type(old) is not torch.optim.Adam or trainer.n_training_steps or len(old.param_groups) != 1:
        return False
    d = old.defaults
    if d.get("fused") or d.get("amsgrad") or d.get("maximize") or cfg.lr_end is None:
        return False  # (SAELens' own trainer asserts lr_end is set)
    params = list(old.param_groups[0]["params"])
    try:
        new = torch.optim.Adam(params, lr=d["lr"], betas=d["betas"], eps=d["eps"],
                               weight_decay=d["weight_decay"], fused=True)
        scheduler = get_lr_scheduler(cfg.lr_scheduler_name, optimizer=new,
                                     training_steps=cfg.total_training_steps, lr=cfg.lr,
                                     warm_up_steps=cfg.lr_warm_up_steps,
                                     decay_steps=cfg.lr_decay_steps, lr_end=cfg.lr_end,
                                     num_cycles=cfg.n_restart_cycles)
    except (RuntimeError, TypeError, ValueError):
        return False
    trainer.optimizer, trainer.lr_scheduler = new, scheduler
    return True


def _fit_quiet(trainer: _Trainer) -> _TrainingSAE:
    """Run ``trainer.fit()`` with SAELens' progress bar disabled."""
    import sae_lens.training.sae_trainer as mod

    real = mod.tqdm
    mod.tqdm = partial(real, disable=True)
    try:
        return trainer.fit()
    finally:
        mod.tqdm = real


def train_saes(
    harvest: Harvest | str | os.PathLike[str],
    jobs: list[tuple[str, int, SAETrainConfig]],
    out_root: str | os.PathLike[str],
    progress: bool = True,
) -> list[TrainedSAE]:
    """Train several SAEs from one harvest: ``jobs`` are ``(site, layer, config)``.

    Each goes to ``out_root/{site}.{layer}.{arch}`` (with ``.k{k}`` for TopK / BatchTopK, and
    ``.w{d_sae}`` when jobs differ only in width). The harvest's cost is shared: each record gains
    ``amortised_seconds`` = its training seconds + the harvest's seconds / ``len(jobs)``
    (harvest seconds are known when ``harvest`` was the ``Harvest`` this process made).
    """
    hv = harvest if isinstance(harvest, Harvest) else load_harvest(harvest)
    base = [f"{site}.{layer}.{cfg.arch}" + (f".k{cfg.k}" if cfg.arch in ("topk", "batchtopk") else "")
            for site, layer, cfg in jobs]
    names = [b + (f".w{cfg.d_sae or cfg.expansion * hv.d_model}" if base.count(b) > 1 else "")
             for b, (_, _, cfg) in zip(base, jobs, strict=True)]
    if len(set(names)) != len(names):
        raise DataError(f"train_saes: two jobs would write the same folder ({sorted(names)})")
    out: list[TrainedSAE] = []
    for name, (site, layer, cfg) in zip(names, jobs, strict=True):
        out.append(train_sae(hv, layer, cfg, Path(out_root) / name, site=site, progress=progress))
    share = (hv.seconds or 0.0) / max(1, len(jobs))
    for tr in out:
        tr.record["harvest_seconds_share"] = share
        seconds = tr.record["train_seconds"]
        assert isinstance(seconds, float)  # written by train_sae
        tr.record["amortised_seconds"] = seconds + share
    return out
