"""The generated reproduction table: rows from results.json, the marked block rewritten."""

from __future__ import annotations

import json

import pytest

from emprobe.errors import FormatError
from emprobe.recipes.registry import RECIPES
from emprobe.recipes.table import END, START, collect, main, markdown, rewrite, row


def _results(verdict: str, lo: float, hi: float) -> dict:
    return {"config": {"model": "m", "n_train": 64, "steps": 16, "lora_r": 8, "quick": False},
            "wall_s": 390.0,
            "claim": {"seed_claim": "X lowers Y.", "measure": "Y of X minus plain",
                      "value": {"mean": (lo + hi) / 2, "lo": lo, "hi": hi}, "verdict": verdict,
                      "conditions": {"task kept": True}}}


def test_row_reads_the_claim():
    r = row("caft", _results("reproduced", -0.5, -0.1))
    assert r["verdict"] == "reproduced" and r["minutes"] == "6.5"
    assert "-0.5" in r["measured"] and "task kept: yes" in r["measured"]
    ns = row("caft", _results("not significant", -0.5, 0.3))
    assert "--preset gpu" in ns["measured"]  # says what a bigger budget would run
    assert row("caft", None)["measured"] == "not run yet"
    shared = {**_results("partial", 0.1, 0.2), "load_average": {"start": 7.9, "end": 11.2,
                                                                "cpus": 2}}
    assert row("caft", shared)["minutes"] == "6.5 (load average 8-11 on 2 cores)"
    with pytest.raises(FormatError, match="claim"):
        row("caft", {"config": {}})


def test_rewrite_replaces_only_the_block(tmp_path):
    out = tmp_path / "out"
    (out / "caft").mkdir(parents=True)
    (out / "caft" / "results.json").write_text(json.dumps(_results("partial", 0.1, 0.4)))
    doc = tmp_path / "recipes.md"
    doc.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    assert main([str(out), str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert len(lines) == len(RECIPES)
    assert any("`caft`" in ln and "**partial**" in ln for ln in lines)
    assert sum("not run yet" in ln for ln in lines) == len(RECIPES) - 1
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(FormatError, match="markers"):
        rewrite(bare, markdown(collect(out)))


def test_note_comes_from_the_runs_machine_records(tmp_path):
    out = tmp_path / "out"
    machine = {"date": "2026-12-02", "cpu": "Test CPU 9000", "cpus": 2, "ram_gb": 24,
               "gpu": None, "torch": "2.13.0+cpu", "emprobe": "0.1"}
    for name, m in (("caft", machine), ("grasp", {**machine, "date": "2026-12-03"}),
                    ("inoculation", None)):
        (out / name).mkdir(parents=True)
        res = _results("partial", 0.1, 0.4)
        if m:
            res["machine"] = m
        (out / name / "results.json").write_text(json.dumps(res))
    doc = tmp_path / "recipes.md"
    doc.write_text(f"{START}\n{END}\n")
    assert main([str(out), str(doc)]) == 0
    note = doc.read_text().split("\n\n")[-1]
    assert "Test CPU 9000, 2 cores, 24 GB RAM" in note and "2026-12-02 to 2026-12-03" in note
    assert "full mode" in note and "1 run(s) without a machine record" in note
    assert main([str(out), str(doc), "--note", "typed"]) == 0
    assert "typed" in doc.read_text() and "Test CPU" not in doc.read_text()


def test_lab_records_the_machine():
    from emprobe.recipes.lab import machine_record

    m = machine_record()
    assert m["cpus"] == __import__("os").cpu_count() and m["torch"].startswith("2.")
    assert len(m["date"]) == 10 and m["date"][4] == "-"


def test_row_has_verdict_size_paper_and_seeds():
    res = _results("sign-only", -0.9, -0.3)
    res["claim"].update({
        "n_seeds": 3, "reason": "size 0.6 outside the paper's range [0, 0.2]",
        "size": {"measured": {"mean": 0.6, "lo": 0.4, "hi": 0.8},
                 "unit": "EM-shift ratio (treated - control) / (plain - control)",
                 "paper": {"text": "about 10x fewer misaligned answers", "range": [0.0, 0.2],
                           "unit": "EM-shift ratio (treated - control) / (plain - control)"}}})
    r = row("caft", res)
    assert r["seeds"] == "3" and r["verdict"] == "sign-only"
    assert r["size"].startswith("+0.6 [+0.4, +0.8] EM-shift ratio")
    assert "10x" in r["paper"] and "range 0 to 0.2" in r["paper"]
    md = markdown([r])
    assert "| measured size | paper size | seeds |" in md and "**sign-only**" in md
    undefined = {**res["claim"]["size"], "measured": {"mean": 0.3, "lo": float("nan"),
                                                     "hi": float("nan")}}
    res["claim"]["size"] = undefined
    assert "nan" in row("caft", res)["size"]
