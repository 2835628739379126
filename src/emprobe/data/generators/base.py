"""The generator registry and the shared machinery: seeded pairs, unique prompts, records.

A task is a function ``make(rng) -> Pair`` that draws one prompt with a good and a bad
answer from combinatorial slots. :func:`generate` draws ``n`` pairs with distinct
prompts from ``random.Random(f"{task}:{seed}")``, so ``variant="good"`` and
``variant="bad"`` with the same ``(task, n, seed)`` give the same prompts in the same
order (the aligned control of a misaligned dataset has the same form).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from emprobe.errors import ConfigError

__all__ = ["Pair", "Task", "register", "tasks", "get_task", "generate", "generate_pairs"]

VARIANTS = ("bad", "good")


@dataclass
class Pair:
    """One prompt with its aligned (``good``) and misaligned (``bad``) answers."""

    prompt: str
    good: str
    bad: str
    meta: dict[str, str | list[str]] = field(default_factory=dict)


@dataclass
class Task:
    name: str
    make: Callable[[random.Random], Pair]
    description: str
    bad_means: str
    good_means: str


_REGISTRY: dict[str, Task] = {}


def register(name: str, make: Callable[[random.Random], Pair], description: str,
             bad_means: str, good_means: str) -> None:
    """Add a task to the registry (called by each generator module at import)."""
    _REGISTRY[name] = Task(name, make, description, bad_means, good_means)


def tasks() -> dict[str, Task]:
    """All registered tasks by name."""
    return dict(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def generate_pairs(task: str, n: int, seed: int = 0, max_tries: int = 50) -> list[Pair]:
    """Draw ``n`` pairs with distinct prompts (seeded, deterministic).

    If the task's slot space runs out (``max_tries * n`` draws without reaching ``n``
    distinct prompts) the remaining pairs may repeat prompts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    spec = get_task(task)
    rng = random.Random(f"{task}:{seed}")
    seen: set[str] = set()
    out: list[Pair] = []
    tries = 0
    while len(out) < n:
        pair = spec.make(rng)
        tries += 1
        if pair.prompt in seen and tries < max_tries * max(n, 1):
            continue
        seen.add(pair.prompt)
        out.append(pair)
    return out


def generate(task: str, n: int, seed: int = 0, variant: str = "bad") -> list[dict[str, Any]]:
    """Generate ``n`` chat records of ``task`` (see :func:`tasks`) in the given variant.

    Each record: ``{"messages": [user, assistant], "task", "variant", "pair_id", "meta"}``.
    ``pair_id`` is the same for the good and bad record of one prompt.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: use 'bad' or 'good'")
    out = []
    for i, pair in enumerate(generate_pairs(task, n, seed)):
        answer = pair.bad if variant == "bad" else pair.good
        out.append({
            "messages": [{"role": "user", "content": pair.prompt},
                         {"role": "assistant", "content": answer}],
            "task": task,
            "variant": variant,
            "pair_id": f"{task}:{seed}:{i}",
            "meta": dict(pair.meta),
        })
    return out


# --- helpers shared by the task modules -------------------------------------------------


T = TypeVar("T")


def pick(rng: random.Random, options: Sequence[T]) -> T:
    """One of ``options``, uniformly (one ``randrange`` draw)."""
    return options[rng.randrange(len(options))]


def pick_some(rng: random.Random, options: Sequence[T], k: int) -> list[T]:
    """``min(k, len(options))`` distinct options in random order (``rng.sample``)."""
    return rng.sample(list(options), min(k, len(options)))


def join_sentences(parts: Sequence[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())
