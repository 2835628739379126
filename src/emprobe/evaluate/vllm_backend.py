"""Optional vLLM backend for sampling answers on a GPU (base model plus a PEFT LoRA adapter).

``vllm_generate`` samples replies to conversations with ``vllm.LLM.chat``; an adapter is
served through ``LoRARequest`` with ``max_lora_rank`` set from the adapter's own ranks
(the smallest rank vLLM accepts that holds the adapter's largest one). vLLM is not a
dependency of emprobe: without it ``vllm_generate`` raises ``ConfigError`` and emprobe's
own sampler (``emprobe.evaluate.generation.generate_batched``) does the work.

The scaling check (``lora_plan``, no vLLM needed): vLLM scales every module of an adapter
by one factor from the config's top-level ``lora_alpha`` and ``r`` (``alpha / sqrt(r)``
with ``use_rslora``, else ``alpha / r``; its ``PEFTHelper``), while PEFT scales each
module with its own ``rank_pattern`` / ``alpha_pattern`` entries. ``lora_plan`` compares
PEFT's per-module scales (``emprobe.models.adapter.read_adapter``) with the factor vLLM
would use and refuses an adapter they disagree on, so an rsLoRA or patterned adapter is
never served at a silently wrong strength. DoRA adapters are refused by the reader.

Seeds are per prompt (``SamplingParams.seed``), as in emprobe's sampler, but vLLM's
kernels and sampler are not emprobe's: the same seed gives other samples than
``generate_batched`` (same distribution, not the same draws).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emprobe.errors import ConfigError
from emprobe.evaluate.generation import row_seeds
from emprobe.models.adapter import read_adapter
from emprobe.models.chat import Conversation

__all__ = ["VLLM_LORA_RANKS", "VllmLora", "lora_plan", "vllm_available", "vllm_generate"]

#: ranks vLLM accepts for ``max_lora_rank`` (its LoRA config validates against this list)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
#: relative disagreement between PEFT's and vLLM's scale that refuses an adapter
SCALE_TOLERANCE = 1e-6


def vllm_available() -> bool:
    """Whether ``vllm`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class VllmLora:
    """How an adapter is served: its folder, ``max_lora_rank`` and the one scale vLLM applies.

    ``rank``: the adapter's largest module rank; ``scale``: ``alpha / r`` or, with
    ``use_rslora``, ``alpha / sqrt(r)`` (equal to every module's PEFT scale, checked).
    """

    path: Path
    rank: int
    max_lora_rank: int
    scale: float
    use_rslora: bool


def lora_plan(adapter: str | Path) -> VllmLora:
    """Check an adapter folder for vLLM and pick ``max_lora_rank`` (see the module docstring).

    Raises ``ConfigError`` when a module's PEFT scale differs from vLLM's single factor
    (``rank_pattern`` / ``alpha_pattern``) or the rank is above vLLM's largest.
    """
    ad = read_adapter(adapter)
    cfg = ad.config
    cfg_path = Path(adapter) / "adapter_config.json"
    use_rslora = bool(cfg.get("use_rslora", False))
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (math.sqrt(r) if use_rslora else r)
    for mod in ad:
        if abs(mod.scale - scale) > SCALE_TOLERANCE * max(1.0, abs(scale)):
            raise ConfigError(
                f"{cfg_path}: module {mod.name} is scaled {mod.scale:.6g} by PEFT but vLLM "
                f"scales every module {scale:.6g} (field rank_pattern / alpha_pattern; "
                f"use_rslora={use_rslora}); merge the adapter or sample with emprobe")
    rank = max(mod.rank for mod in ad)
    fits = [x for x in VLLM_LORA_RANKS if x >= rank]
    if not fits:
        raise ConfigError(f"{cfg_path}: rank {rank} is above vLLM's largest max_lora_rank "
                          f"{VLLM_LORA_RANKS[-1]} (field r)")
    return VllmLora(path=Path(adapter), rank=rank, max_lora_rank=fits[0], scale=scale,
                    use_rslora=use_rslora)


def vllm_generate(
    model: str | Path,
    prompts: Sequence[Conversation],
    adapter: str | Path | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] | None = None,
    gpu_memory_utilization: float = 0.5,
) -> list[str]:
    """Replies to ``prompts`` from ``model`` (a local folder or hub id) with vLLM, the
    adapter (a PEFT folder) applied through ``LoRARequest``. Greedy at ``temperature`` 0;
    ``seed``: an int (prompt ``i`` gets ``seed + i``) or one per prompt."""
    if not vllm_available():
        raise ConfigError("vllm_generate: vLLM is not installed (pip install vllm, on a GPU "
                          "machine); emprobe.evaluate.generation.generate_batched samples "
                          "without it")
    from vllm import LLM, SamplingParams  # pyright: ignore[reportMissingImports]
    from vllm.lora.request import LoRARequest  # pyright: ignore[reportMissingImports]

    plan = lora_plan(adapter) if adapter is not None else None
    engine_kw: dict[str, object] = {"gpu_memory_utilization": gpu_memory_utilization}
    if plan is not None:
        engine_kw.update(enable_lora=True, max_loras=1, max_lora_rank=plan.max_lora_rank)
    llm = LLM(model=str(model), **engine_kw)
    seeds = row_seeds(seed, len(prompts)) or [None] * len(prompts)
    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                             seed=s) for s in seeds]
    request = (LoRARequest("emprobe-adapter", 1, str(plan.path.resolve()))
               if plan is not None else None)
    outs = llm.chat([list(p) for p in prompts], sampling_params=params, lora_request=request,
                    use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outs]
