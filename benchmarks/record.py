"""The benchmark table in ``docs/benchmarks.md``, written from measured results only.

``python -m benchmarks`` hands every result to ``record``: one row per measure (the
result's ``name``), with its anchor, floor (goal), emprobe's ratio, the machine (the
result's own ``machine`` when it has one, e.g. with the threads it ran on), whether it was
quiet and the date. Rows are kept in ``docs/benchmarks.json`` (the measured numbers
and details) and the table between the two markers of ``docs/benchmarks.md`` is rewritten
from that file; the rest of the page is left as it is. A run of some modules
(``--only``) replaces their rows and keeps the others with their own machine and date.

Quiet or busy: ``LoadProbe`` reads the whole machine's busy CPU time (``/proc/stat``) and
this process's own (threads and waited-for children) over a module's run; the other
processes' share of the CPUs is the difference over wall time x cores. Below
``QUIET_SHARE`` the row says "quiet".
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
QUIET_SHARE = 0.10


def _busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class LoadProbe:
    """Other processes' share of the CPUs between ``__init__`` and ``share()``."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_s(), _own_s()

    def share(self) -> float | None:
        busy = _busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        others = (busy - self.busy0) - (_own_s() - self.own0)
        return max(0.0, others / max(wall * (os.cpu_count() or 1), 1e-9))


def load_note(share: float | None) -> str:
    """``quiet`` / ``busy`` with the other processes' CPU share and the 1-min load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if share is None:
        return f"unknown (load {load:.1f})"
    word = "quiet" if share < QUIET_SHARE else "busy"
    return f"{word}: other processes used {share:.0%} of the CPUs (load {load:.1f} at the end)"


def _ratio_text(ratio: Any) -> str:
    return f"**{ratio:.2f}x**" if isinstance(ratio, (int, float)) else str(ratio)


def _anchor(res: dict[str, Any]) -> str:
    if res.get("anchor"):
        return str(res["anchor"])
    name = str(res["name"])
    return name.split(" vs ", 1)[1] if " vs " in name else "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows`` (stored records, see ``record``)."""
    head = ("| measure | anchor | floor | emprobe's ratio | machine | quiet? | date |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append("| " + " | ".join(_cell(x) for x in (
            r["name"], r["anchor"], r["floor"], _ratio_text(r["ratio"]), r["machine"],
            r["load"], r["date"])) + " |")
    return "\n".join(lines)


def record(results: list[dict[str, Any]], machine: str, doc: str | os.PathLike[str]) -> Path:
    """Merge ``results`` (each with a ``load`` note) into ``doc``'s JSON rows and rewrite
    the table between the markers of ``doc`` (created when missing)."""
    doc = Path(doc)
    store = doc.with_suffix(".json")
    rows: dict[str, dict[str, Any]] = {}
    if store.exists():
        rows = {r["name"]: r for r in json.loads(store.read_text())["rows"]}
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for res in results:
        rows[res["name"]] = {
            "name": res["name"], "module": res.get("module"), "anchor": _anchor(res),
            "floor": res.get("floor") or res.get("goal", "-"), "ratio": res.get("ratio"),
            "machine": res.get("machine") or machine, "load": res.get("load", "-"),
            "date": date,
            "details": res.get("details", {}),
        }
    ordered = sorted(rows.values(), key=lambda r: (str(r.get("module")), r["name"]))
    tmp = store.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"rows": ordered}, indent=2, default=str) + "\n")
    tmp.replace(store)
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    new = f"{before}{START}\n{table(ordered)}\n{END}{after}"
    tmp_doc = doc.with_suffix(".md.tmp")
    tmp_doc.write_text(new)
    tmp_doc.replace(doc)
    return doc
