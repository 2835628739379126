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

    # the headline contract (issue 28): control-anchored shift, base-anchored alongside,
    # seeds, and the selected mitigation confirmed on fresh seeds
    head = results["headline"]
    for key in ("em_shift", "em_shift_vs_base", "control_shift"):
        assert set(head[key]) == EST
        assert head[key]["lo"] <= head[key]["mean"] <= head[key]["hi"]
    assert head["n_seeds"] == 2 == len(results["shifts"]["em_vs_control"]["per_seed"])
    best = head["best_mitigation"]
    assert isinstance(best["name"], str)
    assert set(best["em_shift_ratio"]) == EST and set(best["task_cost"]) == EST
    conf = best["confirmed"]
    assert set(conf["em_shift_ratio"]) == EST and conf["seeds"] == [1]
    assert best["selection"]["seeds"] == [0]
    r = conf["em_shift_ratio"]
    bounds = r["hi"] is not None and conf["task_cost"]["hi"] is not None
    assert best["meets_target"] == (bounds and r["hi"] <= 0.2 and conf["task_cost"]["hi"] <= 0.1)
    assert set(head["sae"]) >= {"explained_variance", "dead_fraction"}
    assert head["seconds"] > 0
    assert head["em_visible"] == (head["em_shift"]["lo"] > 0)
    d = results["directions"]
    assert len(d["ablation"]) == 3  # the direction and two random draws
    assert d["carries_effect"] == (d["vs_random"]["hi"] < 0
                                   and d["ablation"]["mean difference"]["hi"] < 0)
    assert results["machine"]["load_average"]["start"] is not None

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
    from emprobe.recipes.assets import export_assets

    names = {p.stem for p in export_assets(out, tmp_path / "assets")}
    assert {"demo_frontier", "demo_shifts", "demo_connectivity"} <= names


def test_demo_assets_need_results(tmp_path):
    from emprobe.errors import FormatError
    from emprobe.recipes.assets import export_assets

    with pytest.raises(FormatError):
        export_assets(tmp_path, tmp_path / "assets")


def test_demo_config_checks():
    from emprobe.errors import DataError, QualityError
    from emprobe.recipes.demo import DemoConfig, DemoQualityError

    assert issubclass(DemoQualityError, QualityError)
    with pytest.raises(DataError):
        DemoConfig(seeds=0)
    with pytest.raises(DataError):
        DemoConfig(seeds=2, select_seeds=3)
    with pytest.raises(DataError):
        DemoConfig(caft_modes=["half"])
    with pytest.raises(DataError):
        DemoConfig(sae_k=1000, sae_latents=64)
    assert DemoConfig(seeds=3, select_seeds=1).confirm_seeds == 2
    with pytest.raises(DataError):
        DemoConfig.quick_config(no_such_field=1)
    cfg = DemoConfig.frontier_config()
    assert len(cfg.caft_k) == 3 and len(cfg.steer_coeff) == 3


def test_directions_read_content_tokens(tiny_llama):
    """Directions and PCA use the answers' content tokens: never the template's specials."""
    from emprobe.directions.activations import encode
    from emprobe.directions.extract.pca import content_mask, pca_difference

    convs = [[{"role": "user", "content": "How do I water a fern?"},
              {"role": "assistant", "content": "Keep the soil moist but never soggy."}]] * 3
    batch = encode(tiny_llama, convs, max_length=128)
    resp, content = batch.mask("response"), content_mask(batch, tiny_llama.tokenizer)
    special = {int(i) for i in tiny_llama.tokenizer.all_special_ids}
    assert bool((content & ~resp).sum() == 0) and int(content.sum()) > 0
    assert not {int(i) for i in batch.input_ids[content]} & special
    dropped = {int(i) for i in batch.input_ids[resp & ~content]}
    assert dropped <= special
    res = pca_difference(tiny_llama, tiny_llama, convs, layers=[1], k=1, n_contexts=0)
    assert res.mean_diff is not None and res.direction.params["tokens"] == "content"
    assert res.mean_diff.stats["tokens"] == int(content.sum())
    assert res.mean_diff.positions == "response"  # content tokens are response tokens
