"""``emprobe geometry`` headlines the write side; ``emprobe connectivity`` keeps every curve."""

from __future__ import annotations

import json

from test_geometry_connectivity import CHATS, make_peft_adapter

from emprobe.cli import main
from emprobe.geometry.cli import evaluator_names


def test_evaluator_names_are_distinct():
    assert evaluator_names(["adapter", "adapter"], ["a", "b"]) == ["loss_a", "loss_b"]
    assert evaluator_names(["med", "fin"], ["a", "b"]) == ["loss_med", "loss_fin"]
    assert evaluator_names(["med"], ["a", "b"]) == ["loss_med", "loss_b"]
    assert evaluator_names(["b"], ["a", "b"]) == ["loss_a", "loss_b"]  # label == a flag


def test_same_folder_names_keep_both_curves_and_write_side_leads(tmp_path, capsys):
    """Two adapters in folders both called ``adapter`` (the emprobe run layout)."""
    ads = [make_peft_adapter("tiny-llama", tmp_path / f"run{i}" / "adapter", seed=i)
           for i in range(2)]
    data_a, data_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    data_a.write_text("".join(json.dumps(c) + "\n" for c in CHATS[:2]))
    data_b.write_text("".join(json.dumps(c) + "\n" for c in CHATS[1:]))
    rc = main(["connectivity", "--base", "tiny-llama", *map(str, ads), "--out",
               str(tmp_path / "c"), "--data-a", str(data_a), "--data-b", str(data_b),
               "--points", "3"])
    assert rc == 0
    curves = [json.loads(x) for x in (tmp_path / "c" / "curves.jsonl").read_text().splitlines()]
    assert "loss_a" in curves[0] and "loss_b" in curves[0]
    assert curves[0]["loss_a"] != curves[0]["loss_b"]  # two data sets, two curves

    capsys.readouterr()
    assert main(["geometry", *map(str, ads), "--out", str(tmp_path / "g"), "--k", "2",
                 "--no-gaussian"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "overlap over pairs" in ln]
    assert len(lines) == 2
    assert "write-side" in lines[0] and "read-side" in lines[1]
    assert "initialisation" in lines[1]
