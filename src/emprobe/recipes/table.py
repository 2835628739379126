"""The reproduction table of ``docs/recipes.md``, generated from the recipes' ``results.json``.

``python -m emprobe.recipes.table recipes-out docs/recipes.md`` reads
``recipes-out/<name>/results.json`` for every registered recipe and rewrites the block
between ``<!-- reproduce-table:start -->`` and ``<!-- reproduce-table:end -->`` (nothing in
the table is typed by hand: a recipe that has not run says so).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from emprobe.errors import FormatError
from emprobe.io import atomic_path, read_json

START, END = "<!-- reproduce-table:start -->", "<!-- reproduce-table:end -->"


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:+.3g}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _size(claim: dict[str, Any]) -> tuple[str, str]:
    """(measured size, paper size) cells from the claim's ``size`` block (issue 28)."""
    size = claim.get("size")
    if not size:
        return "", ""
    m = size.get("measured") or {}
    if all(isinstance(m.get(k), (int, float)) for k in ("mean", "lo", "hi")):
        measured = f"{_num(m['mean'])} [{_num(m['lo'])}, {_num(m['hi'])}] {size.get('unit', '')}"
    else:
        measured = ""
    paper = size.get("paper") or {}
    rng = paper.get("range")
    text = paper.get("text", "")
    if rng:
        text += f" (range {rng[0]:g} to {rng[1]:g}, {paper.get('unit')})"
    return measured.strip(), text


def row(name: str, results: dict[str, Any] | None) -> dict[str, str]:
    """One table row (plain strings) from a recipe's results (``None``: not run)."""
    if results is None:
        return {"recipe": name, "claim": "", "measured": "not run yet", "verdict": "",
                "size": "", "paper": "", "seeds": "", "minutes": ""}
    claim = results.get("claim")
    cfg = results.get("config", {})
    if not claim:
        raise FormatError(f"{name}/results.json: no 'claim' block (written by an older emprobe?)")
    v = claim["value"]
    measured = f"{claim['measure']}: {_num(v['mean'])} [{_num(v['lo'])}, {_num(v['hi'])}]"
    conds = claim.get("conditions") or {}
    if conds:
        measured += "; " + "; ".join(f"{k}: {'yes' if ok else 'no'}" for k, ok in conds.items())
    if claim.get("why"):
        measured += f". {claim['why']}"
    verdict = claim["verdict"]
    if claim.get("reason"):
        measured += f". Verdict reason: {claim['reason']}"
    if verdict in ("not significant", "not reproduced", "not-reproduced", "not-testable"):
        measured += (f". At this size ({cfg.get('model')}, {cfg.get('n_train')} examples x "
                     f"{cfg.get('steps')} steps, LoRA r {cfg.get('lora_r')}) a bigger budget: "
                     f"`emprobe recipe {name} --preset gpu --model Qwen/Qwen2.5-7B-Instruct`")
    quick = " (quick mode)" if cfg.get("quick") else ""
    wall = results.get("wall_s")
    minutes = f"{wall / 60:.1f}{quick}" if isinstance(wall, (int, float)) else ""
    load = results.get("load_average") or {}
    loads = [x for x in (load.get("start"), load.get("end")) if isinstance(x, (int, float))]
    if minutes and loads:
        minutes += (f" (load average {min(loads):.0f}-{max(loads):.0f} on "
                    f"{load.get('cpus')} cores)")
    size, paper = _size(claim)
    seeds = claim.get("n_seeds")
    return {"recipe": name, "claim": claim["seed_claim"], "measured": measured,
            "verdict": verdict, "size": size, "paper": paper,
            "seeds": str(seeds) if seeds is not None else "1", "minutes": minutes}


def markdown(rows: list[dict[str, str]], note: str = "") -> str:
    head = ("| recipe | seed claim | what was measured on the embedded model | verdict | "
            "measured size | paper size | seeds | wall minutes on 2 cores |\n"
            "|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| `{r['recipe']}` | {_cell(r['claim'])} | {_cell(r['measured'])} | "
                   f"{'**' + _cell(r['verdict']) + '**' if r['verdict'] else ''} | "
                   f"{_cell(r.get('size', ''))} | {_cell(r.get('paper', ''))} | "
                   f"{_cell(r.get('seeds', ''))} | {_cell(r['minutes'])} |\n" for r in rows)
    return head + body + (f"\n{note}\n" if note else "")


def load_results(out_root: str | os.PathLike[str]) -> dict[str, dict[str, Any] | None]:
    """``{recipe: results.json or None}`` for every registered recipe, in registry order."""
    from emprobe.recipes.registry import RECIPES

    root = Path(out_root)
    return {name: (read_json(root / name / "results.json")
                   if (root / name / "results.json").is_file() else None)
            for name in RECIPES}


def collect(out_root: str | os.PathLike[str]) -> list[dict[str, str]]:
    return [row(name, res) for name, res in load_results(out_root).items()]


def machine_note(results: dict[str, dict[str, Any] | None]) -> str:
    """The line under the table, from the runs' own ``machine`` records: when, on what."""
    runs = [r for r in results.values() if r]
    machines: list[dict[str, Any]] = [r["machine"] for r in runs if r.get("machine")]
    if not runs:
        return ""
    modes = sorted({"quick mode" if r.get("config", {}).get("quick") else "full mode"
                    for r in runs})
    text = f"Rows from `emprobe recipe NAME` ({', '.join(modes)}, default sizes)"
    if machines:
        dates = sorted({m.get("date", "?") for m in machines})
        kinds = sorted({f"{m.get('cpu')}, {m.get('cpus')} cores, {m.get('ram_gb')} GB RAM"
                        + (f", {m['gpu']}" if m.get("gpu") else "")
                        + f", torch {m.get('torch')}, emprobe {m.get('emprobe')}"
                        for m in machines})
        text += (f", run {' to '.join([dates[0], dates[-1]] if len(dates) > 1 else dates)}"
                 f" on {'; '.join(kinds)}")
    if len(machines) < len(runs):
        text += f" ({len(runs) - len(machines)} run(s) without a machine record)"
    return (text + ". Wall minutes include model loading and every fine-tune; the load "
            "average at the start and end of each run is in the last column (a busy machine "
            "makes times pessimistic).")


def rewrite(doc: str | os.PathLike[str], table: str) -> Path:
    """Replace the marked block of ``doc`` with ``table`` (markers are required)."""
    path = Path(doc)
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise FormatError(f"{path}: needs the markers {START} and {END} around the table")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    with atomic_path(path) as tmp:
        tmp.write_text(f"{before}{START}\n{table}{END}{after}", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emprobe.recipes.table",
                                description="Rewrite the reproduction table from results.json")
    p.add_argument("out_root", help="folder holding <recipe>/results.json (recipes-out)")
    p.add_argument("doc", help="markdown file with the table markers (docs/recipes.md)")
    p.add_argument("--note", default=None,
                   help="the line under the table (default: dates and machines of the runs, "
                        "from their results.json)")
    args = p.parse_args(argv)
    results = load_results(args.out_root)
    rows = [row(name, res) for name, res in results.items()]
    note = machine_note(results) if args.note is None else args.note
    rewrite(args.doc, markdown(rows, note))
    done = sum(1 for r in rows if r["verdict"])
    print(f"{args.doc}: table of {len(rows)} recipes ({done} with results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
