"""The quick demo runs the whole pipeline on a tiny model and writes a complete report."""

import json

import pytest

from emprobe.cli import main


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    for title in ("Does a narrow fine-tune generalise?", "Directions",
                  "Training-time interventions", "Weight geometry and connectivity", "SAE diff"):
        assert title in html
    assert "Quick mode" in html
    assert html.count("<script src=") == 0  # self-contained
    results = json.loads((out / "results.json").read_text())
    names = {r["name"] for r in results["tradeoff"]}
    assert {"base", "bad-medical", "GRASP", "inoculation"} <= names
    assert any(n.startswith("CAFT") for n in names)
    assert (out / "directions" / "mean_diff.gguf").is_file()
    assert (out / "runs" / "bad-medical" / "adapter" / "adapter_config.json").is_file()
    stages = [t["stage"] for t in results["timings"]]
    assert stages[:3] == ["data", "fine-tune", "score"]
    # every reported score interval is ordered
    for rec in results["scores"].values():
        est = rec["score"]["per_answer"]
        assert est["lo"] <= est["mean"] <= est["hi"]


def test_demo_assets_need_results(tmp_path):
    from emprobe.errors import FormatError
    from emprobe.recipes.assets import export_assets

    with pytest.raises(FormatError):
        export_assets(tmp_path, tmp_path / "assets")
