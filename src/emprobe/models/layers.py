"""Finding the decoder blocks and their attention / MLP sub-modules in any HF causal LM."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from emprobe.errors import SiteError

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass
class LayerMap:
    """Where the decoder blocks of a model live.

    ``blocks[l]`` is decoder block ``l`` (0-based). ``attn[l]`` / ``mlp[l]`` are its
    attention and MLP sub-modules (None when the architecture has no such child).
    """

    blocks: nn.ModuleList
    blocks_path: str
    attn: list[nn.Module | None]
    mlp: list[nn.Module | None]

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
        return cls(blocks=blocks, blocks_path=name, attn=attn, mlp=mlp)


def _child(block: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for n in names:
        mod = getattr(block, n, None)
        if isinstance(mod, nn.Module):
            return mod
    return None
