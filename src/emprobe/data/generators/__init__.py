"""Narrow-task generators: seeded, paired good/bad chat data for emergent-misalignment studies.

``generate(task, n, seed=0, variant="bad"|"good")`` returns chat records; ``tasks()``
lists what is registered (one module per task). Every text is written for emprobe.
"""

from __future__ import annotations

from emprobe.data.code_check import check_code, scan_answers, vulnerable_share
from emprobe.data.generators import (  # noqa: F401  (modules register their tasks)
    finance,
    insecure_code,
    medical,
    refusal,
    reward_hacking,
    sports,
)
from emprobe.data.generators.base import Pair, Task, generate, generate_pairs, get_task, tasks

__all__ = ["generate", "generate_pairs", "tasks", "get_task", "Pair", "Task", "check_code",
           "vulnerable_share", "scan_answers"]
