"""Site names and the one layer-index convention, with converters to other tools' indices.

emprobe: ``(site, layer)`` with ``layer`` the 0-based decoder block.

- Hugging Face ``output_hidden_states``: index 0 is the embeddings, index ``i`` for
  ``1 <= i < n_layers`` is the output of block ``i - 1``, and the LAST index ``n_layers``
  is the output of the model's final norm applied to block ``n_layers - 1`` (transformers
  replaces the last block output with ``norm(h)``). So ``resid_post[l] = hidden_states[l + 1]``
  for ``l < n_layers - 1``, ``resid_pre[l] = hidden_states[l]``, and
  ``resid_post[n_layers - 1]`` has no hidden-states index (``hidden_states[n_layers]`` is
  ``final_norm(resid_post[n_layers - 1])``; on SmolLM2 they differ by thousands).
- persona_vectors ``[n_layers + 1, d]`` tensors use the hidden-states index, so their
  last row is post-norm too.
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


def _final_norm_error(what: str, n_layers: int) -> SiteError:
    return SiteError(
        f"{what} is the final-norm output, not a block output: emprobe's resid_post "
        f"{n_layers - 1} (the last block, pre-norm) has no such index; use a layer below "
        f"{n_layers - 1} or capture resid_post {n_layers - 1} with emprobe's hooks"
    )


def to_hf_hidden_index(layer: int, site: str, n_layers: int) -> int:
    """emprobe (site, layer) -> index into HF ``hidden_states`` of a model with ``n_layers`` blocks.

    ``n_layers`` is required: ``resid_post`` of the last block has no hidden-states index
    (the last hidden state is post final-norm, see the module docstring), and only the
    layer count tells which block is last.
    """
    check_site(site)
    if not 0 <= layer < n_layers:
        raise SiteError(f"layer {layer} out of range 0..{n_layers - 1}")
    if site == "resid_post":
        if layer == n_layers - 1:
            raise _final_norm_error(f"hidden_states[{n_layers}]", n_layers)
        return layer + 1
    if site == "resid_pre":
        return layer
    raise SiteError(f"site {site!r} has no hidden_states index (only resid_pre / resid_post)")


def from_hf_hidden_index(index: int, n_layers: int) -> tuple[str, int]:
    """HF ``hidden_states`` index -> emprobe (site, layer). Index 0 (embeddings) is resid_pre 0.

    Index ``n_layers`` (the final-norm output) is refused: it is no emprobe site.
    """
    if index < 0 or index > n_layers:
        raise SiteError(f"hidden_states index {index} out of range 0..{n_layers}")
    if index == n_layers:
        raise _final_norm_error(f"hidden_states[{n_layers}]", n_layers)
    if index == 0:
        return "resid_pre", 0
    return "resid_post", index - 1


def to_persona_index(layer: int, n_layers: int) -> int:
    """emprobe resid_post layer -> row of a persona_vectors ``[n_layers + 1, d]`` tensor.

    ``n_layers`` is required: the last block is refused (that row is post final-norm).
    """
    if not 0 <= layer < n_layers:
        raise SiteError(f"layer {layer} out of range 0..{n_layers - 1}")
    if layer == n_layers - 1:
        raise _final_norm_error(f"persona-vector row {n_layers}", n_layers)
    return layer + 1


def from_persona_index(index: int, n_layers: int) -> int:
    """Row of a persona_vectors tensor -> emprobe resid_post layer.

    Row 0 (embeddings) and row ``n_layers`` (final-norm output) are refused.
    """
    if index < 1 or index > n_layers:
        raise SiteError(
            f"persona-vector row {index} is not a block output (rows 1..{n_layers}; row 0 is the embeddings)"
        )
    if index == n_layers:
        raise _final_norm_error(f"persona-vector row {n_layers}", n_layers)
    return index - 1


def tl_hook_name(site: str, layer: int) -> str:
    """emprobe (site, layer) -> TransformerLens bridge hook name."""
    check_site(site)
    return _TL_NAMES[site].format(layer=layer)
