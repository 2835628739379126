"""The quick demo runs the whole pipeline on a tiny model and writes a complete report."""

import json

import pytest

from emprobe.cli import main

EST = {"mean", "lo", "hi"}


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    for title in ("Does a narrow fine-tune generalise?", "Directions",
                  "Mitigation: misalignment vs task", "Weight geometry and connectivity",
                  "SAE diff"):
        assert title in html
    assert "Quick mode" in html
    assert html.count("<script src=") == 0  # self-contained
    results = json.loads((out / "results.json").read_text())

    # the headline contract
    head = results["headline"]
    assert set(head["em_shift"]) == EST and set(head["control_shift"]) == EST
    for key in ("em_shift", "control_shift"):
        assert head[key]["lo"] <= head[key]["mean"] <= head[key]["hi"]
    best = head["best_mitigation"]
    assert isinstance(best["name"], str)
    assert set(best["em_shift_ratio"]) == EST and set(best["task_cost"]) == EST
    assert set(head["sae"]) >= {"explained_variance", "dead_fraction"}
    assert head["seconds"] > 0
    assert head["em_visible"] == (head["em_shift"]["lo"] > 0
                                  and head["control_shift"]["hi"] < head["em_shift"]["lo"])

    # every intervention of the issue, each verdict paired and Holm-corrected
    interventions = {r["intervention"] for r in results["mitigation"]}
    assert {"CAFT (zero)", "CAFT (mean)", "preventative steering", "GRASP", "inoculation",
            "KL retain"} <= interventions
    for r in results["mitigation"]:
        assert 0.0 <= r["p_holm"] <= 1.0
        assert r["p_holm"] >= r["delta_vs_plain"]["p"]  # Holm never lowers a p-value
        assert r["verdict"].endswith("plain fine-tune")
    assert (out / "directions" / "mean_diff.gguf").is_file()
    assert (out / "runs" / "bad-medical" / "adapter" / "adapter_config.json").is_file()
    stages = [t["stage"] for t in results["timings"]]
    assert stages[:3] == ["data", "fine-tune", "score"]
    assert results["directions"]["mean_diff_norms"]  # was always null before


def test_demo_assets_need_results(tmp_path):
    from emprobe.errors import FormatError
    from emprobe.recipes.assets import export_assets

    with pytest.raises(FormatError):
        export_assets(tmp_path, tmp_path / "assets")


def test_demo_config_checks():
    from emprobe.errors import DataError
    from emprobe.recipes.demo import DemoConfig

    with pytest.raises(DataError):
        DemoConfig(seeds=0)
    with pytest.raises(DataError):
        DemoConfig.quick_config(no_such_field=1)
    cfg = DemoConfig.frontier_config()
    assert len(cfg.caft_k) == 3 and len(cfg.steer_coeff) == 3
