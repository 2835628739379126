# pyright: reportUnsupportedDunderAll=false
# (the names in __all__ are imported on first use by __getattr__; __init__.pyi types them)
"""emprobe: a mechanistic-interpretability toolkit for studying and preventing emergent misalignment.

The front door holds the user's verbs and nouns; everything is imported on first use
(``import emprobe`` loads no model library). Plumbing (layer tables, hook names, index
converters, batch contexts) stays in the sub-packages.

=====================  =====================================================================
load a model           ``load_model``, ``Subject``
read activations       ``capture``, ``collect``
intervene              ``steer``, ``ablate``, ``record_projections``; objects ``Steer``,
                       ``Ablate``, ``Project``
directions             ``Direction``
fine-tune              ``finetune``, ``TrainConfig``
score                  ``local_score``, ``compare_scores``, ``versus_controls``, ``Estimate``
SAEs                   ``train_sae``, ``load_sae``, ``diff_latents``, ``steering_check``,
                       ``train_crosscoder``
adapter geometry       ``read_adapter``, ``compare_adapters``
errors                 ``EmprobeError`` (the hierarchy: ``emprobe.errors``)
=====================  =====================================================================

Pipeline (each a sub-package; lower layers never import higher ones, see
``docs/architecture.md``)::

    plot <- models <- hooks <- data | evaluate <- directions | sae | geometry
         <- train <- integrations | report <- recipes <- cli

Quick start::

    import emprobe
    subject = emprobe.load_model()                      # SmolLM2-135M-Instruct, embedded
    batch = subject.encode_chats([[{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello!"}]])
    with emprobe.capture(subject, layers=[15]) as cache:
        subject.forward(batch)
    cache["resid_post", 15].shape                       # [batch, pos, d_model]
"""

from __future__ import annotations

import importlib

from emprobe._version import __version__
from emprobe.errors import EmprobeError

# Types of the lazy names: see __init__.pyi (import-linter reads no stub, so the front door
# adds no import edge between layers).
_LAZY: dict[str, tuple[str, str]] = {
    "load_model": ("emprobe.models.subject", "load_model"),
    "Subject": ("emprobe.models.subject", "Subject"),
    "capture": ("emprobe.hooks.capture", "capture"),
    "collect": ("emprobe.hooks.capture", "collect"),
    "steer": ("emprobe.hooks.patch", "steer"),
    "ablate": ("emprobe.hooks.patch", "ablate"),
    "record_projections": ("emprobe.hooks.patch", "record_projections"),
    "Steer": ("emprobe.hooks.patch", "Steer"),
    "Ablate": ("emprobe.hooks.patch", "Ablate"),
    "Project": ("emprobe.hooks.patch", "Project"),
    "Direction": ("emprobe.directions.direction", "Direction"),
    "finetune": ("emprobe.train.trainer", "finetune"),
    "TrainConfig": ("emprobe.train.config", "TrainConfig"),
    "local_score": ("emprobe.evaluate.local", "local_score"),
    "compare_scores": ("emprobe.evaluate.local", "compare"),
    "versus_controls": ("emprobe.evaluate.controls", "versus_controls"),
    "Estimate": ("emprobe.evaluate.stats", "Estimate"),
    "train_sae": ("emprobe.sae.training", "train_sae"),
    "load_sae": ("emprobe.sae.folder", "load_sae"),
    "diff_latents": ("emprobe.sae.diff", "diff_latents"),
    "steering_check": ("emprobe.sae.causal", "steering_check"),
    "train_crosscoder": ("emprobe.sae.crosscoder", "train_crosscoder"),
    "read_adapter": ("emprobe.models.adapter", "read_adapter"),
    "compare_adapters": ("emprobe.geometry.compare", "compare_adapters"),
}

__all__ = [
    "Ablate",
    "Direction",
    "EmprobeError",
    "Estimate",
    "Project",
    "Steer",
    "Subject",
    "TrainConfig",
    "__version__",
    "ablate",
    "capture",
    "collect",
    "compare_adapters",
    "compare_scores",
    "diff_latents",
    "finetune",
    "load_model",
    "load_sae",
    "local_score",
    "read_adapter",
    "record_projections",
    "steer",
    "steering_check",
    "train_crosscoder",
    "train_sae",
    "versus_controls",
]


def __getattr__(name: str) -> object:
    """Import a front-door name on first use (PEP 562) and cache it on the module."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'emprobe' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
