"""Site names and the one layer-index convention, with converters to other tools' indices.

emprobe: ``(site, layer)`` with ``layer`` the 0-based decoder block.

- Hugging Face ``output_hidden_states``: index 0 is the embeddings, index ``i`` is
  the output of block ``i - 1``. So ``resid_post[l] = hidden_states[l + 1]`` and
  ``resid_pre[l] = hidden_states[l]``.
- persona_vectors ``[n_layers + 1, d]`` tensors use the hidden-states index.
- TransformerLens bridge: ``blocks.{l}.hook_in`` / ``hook_out`` (``resid_pre`` /
  ``resid_post``), ``blocks.{l}.attn.hook_out``, ``blocks.{l}.mlp.hook_out``.
"""

from __future__ import annotations

from emprobe.errors import SiteError

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")

_TL_NAMES = {
    "resid_pre": "blocks.{layer}.hook_in",
    "resid_post": "blocks.{layer}.hook_out",
    "attn_out": "blocks.{layer}.attn.hook_out",
    "mlp_out": "blocks.{layer}.mlp.hook_out",
}


def check_site(site: str) -> str:
    if site not in SITES:
        raise SiteError(f"unknown site {site!r}: use one of {', '.join(SITES)}")
    return site


def to_hf_hidden_index(layer: int, site: str = "resid_post") -> int:
    """emprobe (site, layer) -> index into HF ``hidden_states``."""
    check_site(site)
    if site == "resid_post":
        return layer + 1
    if site == "resid_pre":
        return layer
    raise SiteError(f"site {site!r} has no hidden_states index (only resid_pre / resid_post)")


def from_hf_hidden_index(index: int, n_layers: int) -> tuple[str, int]:
    """HF ``hidden_states`` index -> emprobe (site, layer). Index 0 (embeddings) is resid_pre 0."""
    if index < 0 or index > n_layers:
        raise SiteError(f"hidden_states index {index} out of range 0..{n_layers}")
    if index == 0:
        return "resid_pre", 0
    return "resid_post", index - 1


def to_persona_index(layer: int) -> int:
    """emprobe resid_post layer -> row of a persona_vectors ``[n_layers + 1, d]`` tensor."""
    return layer + 1


def from_persona_index(index: int, n_layers: int) -> int:
    """Row of a persona_vectors tensor -> emprobe resid_post layer (row 0, embeddings, refused)."""
    if index < 1 or index > n_layers:
        raise SiteError(
            f"persona-vector row {index} is not a block output (rows 1..{n_layers}; row 0 is the embeddings)"
        )
    return index - 1


def tl_hook_name(site: str, layer: int) -> str:
    """emprobe (site, layer) -> TransformerLens bridge hook name."""
    check_site(site)
    return _TL_NAMES[site].format(layer=layer)
