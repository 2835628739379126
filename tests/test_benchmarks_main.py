"""python -m benchmarks: the goals set (make bench) names real modules and arguments their run() takes."""

from __future__ import annotations

import importlib
import inspect

from benchmarks.__main__ import SETS, machine
from benchmarks.bench_sae import FLOORS, _floor_text
from benchmarks.bench_train import MEASURES


def test_every_set_names_modules_and_keywords_their_run_accepts():
    for name, modules in SETS.items():
        assert modules, name
        for module, kwargs in modules.items():
            run = importlib.import_module(f"benchmarks.{module}").run
            params = inspect.signature(run).parameters
            assert "quick" in params
            assert set(kwargs) <= set(params), (name, module, kwargs)
    goals = SETS["goals"]
    assert SETS["issue27"] is goals  # the old name
    assert goals["bench_sae"]["sizes"] == [262144] and 262144 in FLOORS
    assert goals["bench_sae"]["second_sae"] is False  # nothing beyond the goal rows
    assert set(goals["bench_train"]["measures"]) <= set(MEASURES)
    assert set(goals) == {"bench_harvest", "bench_sae", "bench_train", "bench_sample"}


def test_sae_rows_state_their_own_size_and_goal():
    assert _floor_text(262144).startswith(">= 1.35x at 262,144 tokens")
    assert _floor_text(16384).startswith(">= 1.5x at 16,384 tokens")
    assert "no goal" in _floor_text(4096)


def test_machine_names_the_threads_a_result_ran_on():
    assert machine(3).endswith(", 3 threads")
