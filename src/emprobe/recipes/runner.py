"""Running a recipe as timed stages: stage / step / ETA on the terminal, times in the report."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class StageRunner:
    """Announce stages with a running ETA from the planned stage budget.

    ``plan`` maps stage names to expected seconds (used only for the ETA shown).
    """

    title: str
    plan: dict[str, float]
    stream: TextIO = field(default=sys.stderr)
    times: dict[str, float] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        names = list(self.plan)
        idx = names.index(name) + 1 if name in names else len(self.times) + 1
        remaining = sum(v for k, v in self.plan.items() if k not in self.times)
        elapsed = time.perf_counter() - self._t0
        print(
            f"[{self.title}] stage {idx}/{len(self.plan)}: {name}  "
            f"(elapsed {elapsed:5.0f} s, ETA ~{remaining:4.0f} s)",
            file=self.stream,
            flush=True,
        )
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = time.perf_counter() - t0
            print(f"[{self.title}]   {name} done in {self.times[name]:.1f} s", file=self.stream,
                  flush=True)

    @property
    def total(self) -> float:
        return time.perf_counter() - self._t0

    def records(self) -> list[dict[str, str | float]]:
        return [{"stage": k, "seconds": round(v, 2)} for k, v in self.times.items()]
