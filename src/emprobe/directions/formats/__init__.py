"""Converters between ``Direction`` and other tools' formats (each with a documented layer mapping)."""

from emprobe.directions.formats.caft_npy import from_caft, to_caft
from emprobe.directions.formats.gguf_cv import from_gguf, read_gguf_fields, to_gguf
from emprobe.directions.formats.numpy_io import from_numpy, load_npz, save_npz, to_numpy
from emprobe.directions.formats.persona_pt import (
    from_persona,
    load_persona_tensor,
    save_persona,
    to_persona_tensor,
)
from emprobe.directions.formats.steering_vectors_fmt import from_steering_vector, to_steering_vector

__all__ = [
    "from_caft",
    "from_gguf",
    "from_numpy",
    "from_persona",
    "from_steering_vector",
    "load_npz",
    "load_persona_tensor",
    "read_gguf_fields",
    "save_npz",
    "save_persona",
    "to_caft",
    "to_gguf",
    "to_numpy",
    "to_persona_tensor",
    "to_steering_vector",
]
