"""``benchmarks.interleave``: two processes timed in alternating slices."""

from __future__ import annotations

import time
from typing import Any

import pytest

from benchmarks.interleave import active_seconds, run_interleaved, wait_turn


def _busy(units: int, queue: Any, gate: Any) -> None:
    """A job: ``units`` x ~0.1 s of pure-Python work (one core), timed after its turn."""
    wait_turn(queue, gate)
    t0 = time.monotonic()
    for _ in range(units):
        x = 0
        for k in range(2_000_000):
            x += k
    queue.put({"span": (t0, time.monotonic()), "units": units})


def test_active_seconds_counts_only_running_slices():
    running = [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]
    assert active_seconds((0.5, 4.5), running) == pytest.approx(2.0)
    assert active_seconds((1.0, 2.0), running) == 0.0  # stopped all along
    assert active_seconds((-1.0, 9.0), running) == pytest.approx(3.0)


def test_two_jobs_share_the_minutes_and_keep_their_own_time():
    """Both jobs run in turns (each has several slices, both are stopped while the other
    runs), and the one with three times the work gets about three times the active time:
    the stopped time is not counted."""
    t0 = time.monotonic()
    (small, run_s), (big, run_b) = run_interleaved([(_busy, (6,)), (_busy, (18,))],
                                                   slice_s=0.2, timeout_s=300)
    wall = time.monotonic() - t0
    assert small["units"] == 6 and big["units"] == 18
    a, b = active_seconds(small["span"], run_s), active_seconds(big["span"], run_b)
    assert len(run_s) >= 2 and len(run_b) >= 2
    # the small job's span covers slices of the big one, which it does not count
    assert small["span"][1] - small["span"][0] > a * 1.3
    assert 2.0 < b / a < 4.5, (a, b)
    assert a + b <= wall
    spans = sorted(run_s + run_b)
    assert all(p[1] <= q[0] + 1e-3 for p, q in zip(spans, spans[1:]))  # one job at a time


def _dies(queue: Any, gate: Any) -> None:
    raise SystemExit(3)  # fails in its set-up, before it is ready


def test_a_job_that_dies_in_set_up_is_an_error_not_a_hang():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 3"):
        run_interleaved([(_busy, (1,)), (_dies, ())], slice_s=0.2, timeout_s=300)
    assert time.monotonic() - t0 < 60
