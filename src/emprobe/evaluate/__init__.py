"""Evaluation: the local log-probability misalignment score, the judge client, a local
OpenAI-compatible server, refusal classification.

May import ``emprobe.models``, ``emprobe.hooks`` and ``emprobe.data``.
"""
