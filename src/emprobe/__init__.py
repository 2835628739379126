"""emprobe: a mechanistic-interpretability toolkit for studying and preventing emergent misalignment.

Pipeline (each a sub-package; lower layers never import higher ones)::

    models -> hooks -> data / evaluate / train -> directions / sae / geometry
           -> plot / report -> recipes -> cli

Quick start::

    import emprobe
    subject = emprobe.load_model()                      # SmolLM2-135M-Instruct, embedded
    batch = subject.encode_chats([[{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello!"}]])
    with emprobe.capture(subject, layers=[15]) as cache:
        subject.forward(batch)
    cache["resid_post", 15].shape                       # [batch, pos, d_model]
"""

from emprobe._version import __version__
from emprobe.errors import EmprobeError
from emprobe.hooks import (
    SITES,
    ablate,
    as_layer_table,
    capture,
    collect,
    record_projections,
    steer,
    tl_hook_name,
    to_hf_hidden_index,
    to_persona_index,
)
from emprobe.models import Subject, load_model
from emprobe.models.context import use_batch

__all__ = [
    "SITES",
    "EmprobeError",
    "Subject",
    "__version__",
    "ablate",
    "as_layer_table",
    "capture",
    "collect",
    "load_model",
    "record_projections",
    "steer",
    "tl_hook_name",
    "to_hf_hidden_index",
    "to_persona_index",
    "use_batch",
]
