"""Hooks: named sites, the layer convention, capture, and steer / ablate / project interventions.

Imports from ``emprobe.models`` only. Every context manager removes its hooks on
exit, exceptions included; gradients flow through interventions so the same
objects work during training.

Layer convention (used everywhere in emprobe): ``layer`` is the 0-based index of a
decoder block. ``resid_post[l]`` is block ``l``'s output (= Hugging Face
``hidden_states[l + 1]``, except the last block: HF's last hidden state is post final-norm);
``resid_pre[l]`` its input (= ``hidden_states[l]``).
"""

from emprobe.hooks.capture import ActivationCache, capture, collect
from emprobe.hooks.convention import (
    SITES,
    from_hf_hidden_index,
    from_persona_index,
    tl_hook_name,
    to_hf_hidden_index,
    to_persona_index,
)
from emprobe.hooks.layer_table import DirectionLike, as_layer_table
from emprobe.hooks.norms import NEUTRAL_CHATS, site_mean_norms
from emprobe.hooks.patch import (
    Ablate,
    Intervention,
    Project,
    Steer,
    ablate,
    patch,
    record_projections,
    steer,
)
from emprobe.hooks.shards import ShardReader, ShardWriter
from emprobe.hooks.types import (
    POSITIONS,
    AblationMode,
    Positions,
    Site,
    check_mode,
    check_positions,
    check_site,
)

__all__ = [
    "NEUTRAL_CHATS",
    "POSITIONS",
    "SITES",
    "Ablate",
    "AblationMode",
    "ActivationCache",
    "DirectionLike",
    "Intervention",
    "Positions",
    "Project",
    "Site",
    "ShardReader",
    "ShardWriter",
    "Steer",
    "ablate",
    "as_layer_table",
    "capture",
    "check_mode",
    "check_positions",
    "check_site",
    "collect",
    "from_hf_hidden_index",
    "from_persona_index",
    "patch",
    "record_projections",
    "site_mean_norms",
    "steer",
    "tl_hook_name",
    "to_hf_hidden_index",
    "to_persona_index",
]
