"""Integrations: emprobe inside other people's tools (transformers / TRL trainer callbacks,
the Inspect AI evaluation task).

Each sub-module imports its engine lazily, so ``import emprobe`` never needs them. This layer
may import everything below it (models, hooks, data, evaluate, directions, train); nothing
below imports it.
"""
