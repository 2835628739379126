"""Former name of ``emprobe.hooks.patch`` (kept so old imports work; the training-time
interventions are ``emprobe.train.interventions``)."""

from emprobe.hooks.patch import ablate, orthonormal_basis, record_projections, steer

__all__ = ["ablate", "orthonormal_basis", "record_projections", "steer"]
