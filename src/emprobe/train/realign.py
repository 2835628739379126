"""Re-alignment: fine-tune a misaligned model further on benign examples (persona features)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from emprobe.errors import EmprobeError

if TYPE_CHECKING:
    from emprobe.models.subject import Subject
    from emprobe.train.config import TrainConfig

__all__ = ["emprobe_realign_fn"]


def emprobe_realign_fn(
    base_spec: str,
    misaligned_adapter: str,
    benign_records: Sequence[dict[str, Any]],
    out_root: str,
    config: TrainConfig | None = None,
) -> Callable[[int], Subject]:
    """A ``finetune_fn`` for ``realignment_curve`` on ``emprobe.train.finetune``.

    For ``n > 0`` it merges the misaligned adapter into the base weights, fine-tunes a new
    adapter on the first ``n`` benign records, and returns the merged model with the new
    adapter. ``emprobe.train``'s ``preset("cpu-lora")`` config by default.
    """
    from pathlib import Path

    from emprobe.models.subject import load_model
    from emprobe.train.config import preset
    from emprobe.train.trainer import finetune

    cfg = config if config is not None else preset("cpu-lora")

    def fn(n: int) -> Subject:
        merged = load_model(base_spec, adapter=misaligned_adapter, merge_adapter=True)
        if n == 0:
            return merged
        if n > len(benign_records):
            raise EmprobeError(f"re-alignment: asked for {n} benign records, have {len(benign_records)}")
        result = finetune(merged, list(benign_records[:n]), cfg, Path(out_root) / f"n{n}")
        from peft import PeftModel

        fresh = load_model(base_spec, adapter=misaligned_adapter, merge_adapter=True)
        fresh.model = PeftModel.from_pretrained(fresh.model, str(result.adapter_dir))
        fresh.model.eval()
        return fresh

    return fn
