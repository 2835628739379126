"""Data: chat JSONL, narrow-task generators, transforms (inoculation, mixing, splits), question sets.

May import ``emprobe.models`` and ``emprobe.hooks``.
"""
