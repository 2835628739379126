"""Two benchmark processes timed in alternating slices of the same minutes.

Timing two long pipelines one after the other lets the machine's drift between them
(here up to ~20 % between runs minutes apart) decide the ratio. ``run_interleaved`` starts
each job in its own spawned process, lets each set itself up (model loading is never
timed), then stops both (``SIGSTOP`` to each job's process group) and lets them run in
turn, ``slice_s`` seconds each, until both have put their result. Every job's timed spans
(``time.monotonic`` stamps, the same clock in every process on Linux) are converted to the
seconds it actually ran (``active_seconds``: the overlap with its running slices), so a
slow minute of the machine slows both sides alike. A job whose partner has finished runs
on alone without stops.

A job is ``fn(*args, queue, gate)``: it sets itself up, then calls ``wait_turn(queue,
gate)`` and runs its timed section, and finally ``queue.put(result)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

Span = tuple[float, float]


def wait_turn(queue: Any, gate: Any) -> None:
    """In a job: say it is set up, then wait until the scheduler lets it start timing
    (``gate``: the receiving end of a pipe; None when the job runs alone)."""
    if gate is None:
        return
    queue.put({"ready": True})
    gate.recv()


def active_seconds(span: Sequence[float], running: Sequence[Span]) -> float:
    """Seconds of ``span`` (start, end) during which the job ran (its ``running`` slices)."""
    start, end = float(span[0]), float(span[1])
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in running)


def _job(fn: Callable[..., None], args: tuple[Any, ...], queue: Any, gate: Any) -> None:
    os.setpgrp()  # its own process group: a stop reaches any process it starts
    fn(*args, queue, gate)


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # it has just exited
        pass


def _get(q: Any, proc: Any, i: int, deadline: float) -> dict[str, Any]:
    """The next message of job ``i``; an error as soon as it has died without one."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"interleaved job {i} exited with {proc.exitcode} "
                                   "before its message") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"interleaved job {i} sent nothing in time") from None


def run_interleaved(jobs: Sequence[tuple[Callable[..., None], tuple[Any, ...]]],
                    slice_s: float = 5.0, timeout_s: float = 5400.0
                    ) -> list[tuple[dict[str, Any], list[Span]]]:
    """Run ``jobs`` (``(fn, args)``) in alternating slices; returns each job's result and
    the monotonic spans during which it ran."""
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in jobs]
    # a pipe, not an Event: setting an Event waits for its (stopped) waiters to wake
    pipes = [ctx.Pipe(duplex=False) for _ in jobs]
    procs = [ctx.Process(target=_job, args=(fn, args, q, recv))
             for (fn, args), q, (recv, _) in zip(jobs, queues, pipes)]
    running: list[list[Span]] = [[] for _ in jobs]
    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.start()
    try:
        for i, q in enumerate(queues):  # set-up (imports, model loading) side by side, untimed
            if not _get(q, procs[i], i, deadline).get("ready"):
                raise RuntimeError(f"interleaved job {i} did not report ready")
        for p in procs:
            assert p.pid is not None
            _signal(p.pid, signal.SIGSTOP)
        for _, send in pipes:
            send.send("go")
        turn = 0
        while len(results) < len(jobs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"interleaved jobs still running after {timeout_s:.0f} s")
            live = [i for i in range(len(jobs)) if i not in results]
            i = live[turn % len(live)]
            turn += 1
            pid = procs[i].pid
            assert pid is not None
            _signal(pid, signal.SIGCONT)
            start = time.monotonic()
            try:  # alone: no stops
                results[i] = queues[i].get(timeout=slice_s if len(live) > 1 else timeout_s)
            except queue_mod.Empty:
                if not procs[i].is_alive():
                    raise RuntimeError(f"interleaved job {i} exited with "
                                       f"{procs[i].exitcode} before its result") from None
                _signal(pid, signal.SIGSTOP)
            running[i].append((start, time.monotonic()))
            if i in results:
                procs[i].join(timeout=60)  # it exits before its partner runs again
    finally:
        for _, send in pipes:
            send.close()  # a job still waiting for its turn gets EOFError and ends
        for p in procs:
            if p.pid is not None:
                _signal(p.pid, signal.SIGCONT)
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    for i, p in enumerate(procs):
        if p.exitcode not in (0, None):
            raise RuntimeError(f"interleaved job {i} exited with {p.exitcode}")
    return [(results[i], running[i]) for i in range(len(jobs))]
