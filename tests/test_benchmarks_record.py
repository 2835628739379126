"""The benchmark table of docs/benchmarks.md is written from results, rows merged by measure."""

from __future__ import annotations

import json

from benchmarks.record import END, START, LoadProbe, load_note, record


def _res(name, ratio, **kw):
    return {"name": name, "ratio": ratio, "goal": ">= 1x", "module": "bench_x",
            "load": "quiet: test", "details": {"s": 1.0}, **kw}


def test_record_rewrites_only_the_table_and_merges_rows(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{START}\nold table\n{END}\n\n## Earlier records\nkept\n")
    record([_res("a vs SAELens", 1.5), _res("b", 0.9, anchor="bare forward", floor=">= 0.95x")],
           "machine one", doc)
    text = doc.read_text()
    assert "old table" not in text and "intro" in text and "## Earlier records\nkept" in text
    assert "| a vs SAELens | SAELens | >= 1x | **1.50x** | machine one | quiet: test |" in text
    assert "| b | bare forward | >= 0.95x | **0.90x** | machine one |" in text
    # a later run of one measure replaces its row and keeps the other one as it was
    record([_res("b", 1.01, anchor="bare forward", floor=">= 0.95x")], "machine two", doc)
    text = doc.read_text()
    assert "**1.01x** | machine two" in text and "**1.50x** | machine one" in text
    assert "0.90x" not in text
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["a vs SAELens", "b"] and rows[0]["details"] == {"s": 1.0}


def test_load_probe_reports_a_share():
    probe = LoadProbe()
    sum(i * i for i in range(200_000))
    share = probe.share()
    assert share is None or share >= 0.0
    note = load_note(share)
    assert note.startswith(("quiet", "busy", "unknown"))


def test_a_result_may_name_its_own_machine(tmp_path):
    doc = tmp_path / "benchmarks.md"
    record([_res("c vs bare forward", 0.9, machine="box, 2 threads"), _res("d", 1.2)],
           "box, 1 threads", doc)
    text = doc.read_text()
    assert "| c vs bare forward | bare forward | >= 1x | **0.90x** | box, 2 threads | quiet: test |" in text
    assert "| d | - | >= 1x | **1.20x** | box, 1 threads |" in text
