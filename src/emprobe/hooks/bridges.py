"""The same subject through TransformerLens (``TransformerBridge``) and nnsight (``TransformersModel``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnsight import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge

    from emprobe.models.subject import Subject


def to_transformer_lens(subject: Subject, device: str | None = None,
                        share_weights: bool = False) -> TransformerBridge:
    """Wrap the subject's HF model with ``TransformerBridge.boot_transformers``.

    The bridge swaps the model's blocks for its own wrappers in place, which breaks
    generation of the original object; so by default it gets a deep copy. Pass
    ``share_weights=True`` to save memory when the subject is not used afterwards.
    Use ``emprobe.hooks.tl_hook_name(site, layer)`` for hook names.
    """
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    hf_model = subject.base_model if share_weights else copy.deepcopy(subject.base_model)

    name = str(subject.path) if subject.path is not None else _save_for_bridge(subject)
    return TransformerBridge.boot_transformers(
        name,
        device=device or str(subject.device),
        hf_model=hf_model,
    )


def _save_for_bridge(subject: Subject) -> str:
    """Tiny / in-memory models have no folder: the bridge reads only the config from one."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="emprobe-bridge-")
    subject.base_model.config.save_pretrained(folder)
    subject.tokenizer.save_pretrained(folder)
    return folder


def to_nnsight(subject: Subject) -> TransformersModel:
    """Wrap the subject's model as an ``nnsight.TransformersModel`` (same weights, no copy).

    ``TransformersModel(model, task="text-generation")`` is nnsight's current class for causal
    LMs (``LanguageModel`` is its deprecated alias and warns on construction).
    """
    from nnsight import TransformersModel

    return TransformersModel(subject.base_model, task="text-generation",
                             tokenizer=subject.tokenizer)
