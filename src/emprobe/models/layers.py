"""Finding the decoder blocks of any HF causal LM and the modules that define its sites.

Sites are defined by the residual stream: ``attn_out`` and ``mlp_out`` are the tensors the
block *adds* to its residual stream, so for every supported family

    resid_post[l] = resid_pre[l] + attn_out[l] + mlp_out[l]        (eval mode)

- Pre-norm families (Llama, Qwen2/3, Mistral, Gemma 1, Phi-3, GPT-2, SmolLM ...): the
  attention and MLP sub-modules' outputs.
- Post-norm ("sandwich") families (Gemma 2/3, OLMo 2/3, EXAONE 4): the outputs of the norms
  applied after attention and MLP (``post_attention_layernorm`` /
  ``post_feedforward_layernorm``), not the raw sub-module outputs. A block with a
  ``post_feedforward_layernorm`` child is treated so even when its family is not listed.
- Parallel families (GPT-NeoX with ``use_parallel_residual``, Phi-1/2, GPT-J, Cohere):
  attention and MLP both read ``resid_pre`` and both outputs are added at once; the
  decomposition holds, but ``mlp_out`` does not see ``attn_out``.

Dropout between a sub-module and the residual add (GPT-NeoX, Phi-3) is the identity in eval
mode; during training with dropout > 0 the sites are the pre-dropout tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from emprobe.errors import SiteError

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
POST_ATTN_NORM = "post_attention_layernorm"
POST_MLP_NORM = "post_feedforward_layernorm"

POST_NORM_FAMILIES = ("gemma2", "gemma3", "gemma3_text", "olmo2", "olmo3", "exaone4")
PARALLEL_FAMILIES = ("gpt_neox", "phi", "gptj", "cohere", "falcon", "stablelm")
UNSUPPORTED_DECOMPOSITION = {
    "gemma3n": "AltUp / LAuReL blocks mix several residual streams",
    "gemma4": "per-layer inputs and a layer scalar act after the MLP add",
    "gemma4_text": "per-layer inputs and a layer scalar act after the MLP add",
}
"""Families whose block output is not resid_pre + attn_out + mlp_out (documented quirks)."""


@dataclass
class LayerMap:
    """Where the decoder blocks of a model live.

    ``blocks[l]`` is decoder block ``l`` (0-based). ``attn[l]`` / ``mlp[l]`` are its
    attention and MLP sub-modules (None when the architecture has no such child);
    ``attn_out[l]`` / ``mlp_out[l]`` are the modules whose outputs are the sites of those
    names (the sub-module itself, or the post-norm after it). ``family`` is the config's
    ``model_type``; ``note`` says how its sites are read.
    """

    blocks: nn.ModuleList
    blocks_path: str
    attn: list[nn.Module | None]
    mlp: list[nn.Module | None]
    attn_out: list[nn.Module | None] = field(default_factory=list)
    mlp_out: list[nn.Module | None] = field(default_factory=list)
    family: str = "unknown"
    note: str = "pre-norm: sub-module outputs"

    def __post_init__(self) -> None:
        if not self.attn_out:
            self.attn_out = list(self.attn)
        if not self.mlp_out:
            self.mlp_out = list(self.mlp)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def check_layer(self, layer: int) -> int:
        """Validate a layer index (negative indices count from the end)."""
        n = self.n_layers
        if not isinstance(layer, int):
            raise SiteError(f"layer must be an int, got {type(layer).__name__}")
        if layer < -n or layer >= n:
            raise SiteError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
        return layer % n

    def site_paths(self) -> dict[str, str]:
        """Module path of each site, with ``{l}`` for the layer (for docs and ``models show``)."""
        block = f"{self.blocks_path}.{{l}}"
        names = {id(m): n for n, m in self.blocks[0].named_modules()} if self.n_layers else {}

        def where(mod: nn.Module | None) -> str:
            return f"{block}.{names[id(mod)]} (output)" if mod is not None and id(mod) in names \
                else "absent"

        return {"resid_pre": f"{block} (input)", "attn_out": where(self.attn_out[0]),
                "mlp_out": where(self.mlp_out[0]), "resid_post": f"{block} (output)"}

    @classmethod
    def from_model(cls, model: nn.Module, n_layers: int | None = None) -> LayerMap:
        """Find the ModuleList of decoder blocks (the longest, or the one of ``n_layers``)."""
        candidates: list[tuple[str, nn.ModuleList]] = [
            (name, mod)
            for name, mod in model.named_modules()
            if isinstance(mod, nn.ModuleList) and len(mod) > 0
        ]
        if n_layers is not None:
            exact = [c for c in candidates if len(c[1]) == n_layers]
            candidates = exact or candidates
        if not candidates:
            raise SiteError(f"{type(model).__name__}: no list of decoder blocks found")
        # prefer the outermost list (shortest path) among the longest ones
        name, blocks = sorted(candidates, key=lambda c: (-len(c[1]), c[0].count(".")))[0]
        attn = [_child(b, ATTN_NAMES) for b in blocks]
        mlp = [_child(b, MLP_NAMES) for b in blocks]
        family = str(getattr(getattr(model, "config", None), "model_type", "unknown"))
        post_norm = family in POST_NORM_FAMILIES or all(
            isinstance(getattr(b, POST_MLP_NORM, None), nn.Module) for b in blocks)
        if post_norm:
            attn_out = [_child(b, (POST_ATTN_NORM,)) for b in blocks]
            mlp_out = [_child(b, (POST_MLP_NORM,)) for b in blocks]
            note = f"post-norm: {POST_ATTN_NORM} / {POST_MLP_NORM} outputs"
        else:
            attn_out, mlp_out = list(attn), list(mlp)
            note = ("parallel attention + MLP: sub-module outputs"
                    if _is_parallel(model, family) else "pre-norm: sub-module outputs")
        if family in UNSUPPORTED_DECOMPOSITION:
            note += f"; resid_post != resid_pre + attn_out + mlp_out ({UNSUPPORTED_DECOMPOSITION[family]})"
        return cls(blocks=blocks, blocks_path=name, attn=attn, mlp=mlp, attn_out=attn_out,
                   mlp_out=mlp_out, family=family, note=note)


def _is_parallel(model: nn.Module, family: str) -> bool:
    cfg = getattr(model, "config", None)
    if family in ("gpt_neox", "stablelm"):
        return bool(getattr(cfg, "use_parallel_residual", False))
    if family == "falcon":
        return bool(getattr(cfg, "parallel_attn", False) or
                    getattr(cfg, "new_decoder_architecture", False))
    return family in PARALLEL_FAMILIES


def _child(block: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for n in names:
        mod = getattr(block, n, None)
        if isinstance(mod, nn.Module):
            return mod
    return None
