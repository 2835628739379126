"""SAEs: harvesting, training through SAELens, model diffing and crosscoders."""
