"""Lab: config files and validation, honest run caching, the verdict, the CLI, the table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from emprobe.cli import main
from emprobe.errors import DataError
from emprobe.recipes.config import load_config
from emprobe.recipes.lab import Lab, LabConfig, decide
from emprobe.recipes.registry import default_out, recipe_config


# -- configs ---------------------------------------------------------------------------------
def test_quick_config_refuses_unknown_fields():
    assert LabConfig.quick_config(seed=3).seed == 3
    with pytest.raises(DataError, match="sede"):
        LabConfig.quick_config(sede=3)


@pytest.mark.parametrize("bad, what", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
                                        ({"dtype": "int8"}, "dtype"), ({"device": "tpu"}, "device"),
                                        ({"n_train": "many"}, "n_train"),
                                        ({"lr_schedule": "wavy"}, "lr_schedule")])
def test_labconfig_checks_values(bad, what):
    with pytest.raises(DataError, match=what):
        LabConfig.of(**bad)


def test_labconfig_composes_the_train_config():
    """Flat training keys go into ``train`` (a TrainConfig); the flat record round-trips."""
    from emprobe.recipes.demo import DemoConfig
    from emprobe.train.config import TrainConfig

    cfg = LabConfig.of(steps=5, lr=2e-4, lora_r=4, extra={"seeds": 2})
    assert isinstance(cfg.train, TrainConfig)
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.lora_r) == (5, 2e-4, 4)
    assert cfg.train.lora_alpha == 8.0  # lora_r alone keeps alpha = 2 r
    assert (cfg.steps, cfg.lr) == (5, 2e-4) and cfg.options.seeds == 2
    assert LabConfig.of(**cfg.to_record()) == cfg
    assert LabConfig(extra={"seeds": 4}).options.seeds == 4  # the old keyword
    nested = load_config(LabConfig, overrides={"train": {"lr": 3e-4}})
    assert nested.train.lr == 3e-4 and nested.train.max_steps == LabConfig().steps
    demo = DemoConfig.of(model="tiny-llama", steps=2, seeds=1)
    assert (demo.lab.model, demo.lab.steps, demo.seeds) == ("tiny-llama", 2, 1)
    assert demo.lab.n_train == 96 and DemoConfig.of(**demo.to_record()) == demo
    with pytest.raises(DataError, match="steps"):
        DemoConfig.of(steps=0)


def test_load_config_yaml_types_and_unknown_keys(tmp_path):
    good = tmp_path / "sizes.yaml"
    good.write_text("n_train: 32\nlr: 1e-4\nsteps: null\nextra: {seeds: 3}\n")
    cfg = load_config(LabConfig, good, overrides={"seed": 5, "model": None})
    assert (cfg.n_train, cfg.lr, cfg.steps, cfg.seed, cfg.options.seeds) == (32, 1e-4, None,
                                                                             5, 3)
    assert cfg.model == LabConfig().model  # a None override leaves the default alone
    typo = tmp_path / "typo.yaml"
    typo.write_text("n_trian: 32\n")
    with pytest.raises(DataError, match=r"typo\.yaml.*n_trian"):
        load_config(LabConfig, typo)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"batch_size": 2.5}))
    with pytest.raises(DataError, match=r"wrong\.json: batch_size must be int"):
        load_config(LabConfig, wrong)
    with pytest.raises(DataError, match="no such config file"):
        load_config(LabConfig, tmp_path / "missing.yaml")


def test_recipe_config_layers_quick_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\nseed: 7\n")
    cfg = recipe_config(True, f, seed=None, device="cpu")
    assert cfg.quick and cfg.model == "tiny-llama" and cfg.steps == 3 and cfg.seed == 7
    assert recipe_config(True, f, seed=9).seed == 9
    assert default_out("caft", True) != default_out("caft", False)


def test_gpu_preset_is_the_seed_recipe():
    cfg = LabConfig.gpu_preset()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.use_rslora, cfg.lr) == (32, 64.0, True, 1e-5)
    assert cfg.batch_size * cfg.grad_accum == 16 and cfg.steps is None
    assert cfg.gradient_checkpointing
    tc = Lab.__new__(Lab)
    tc.cfg = cfg
    train = Lab.train_config(tc)
    assert train.max_steps is None and train.epochs == 1.0 and train.grad_accum == 8
    with pytest.raises(DataError):
        LabConfig.gpu_preset(lora_rank=16)


def test_auto_device_and_dtype_without_gpu():
    cfg = LabConfig()
    if not torch.cuda.is_available():
        assert (cfg.resolved_device, cfg.resolved_dtype) == ("cpu", "float32")
    assert LabConfig.of(dtype="bfloat16").resolved_dtype == "bfloat16"


# -- the verdict -------------------------------------------------------------------------------
@pytest.mark.parametrize("est, expect, conds, verdict", [
    ({"mean": -1.0, "lo": -1.5, "hi": -0.5}, "lower", {}, "reproduced"),
    ({"mean": -1.0, "lo": -1.5, "hi": -0.5}, "lower", {"x": False}, "partial"),
    ({"mean": -1.0, "lo": -1.5, "hi": 0.5}, "lower", {}, "not significant"),
    ({"mean": 1.0, "lo": 0.5, "hi": 1.5}, "lower", {}, "not reproduced"),
    ({"mean": 1.0, "lo": 0.5, "hi": 1.5}, "higher", {"x": True}, "reproduced"),
    ({"mean": math.nan, "lo": math.nan, "hi": math.nan}, "higher", {}, "not significant"),
])
def test_decide(est, expect, conds, verdict):
    assert decide(est, expect, 0.0, conds) == verdict


def test_claim_block_and_null(tmp_path):
    lab = Lab(tmp_path, LabConfig.quick_config(), "t")
    with pytest.raises(DataError, match="without lab.claim"):
        lab.finish()
    block = lab.claim("c", "m", {"mean": 0.7, "lo": 0.6, "hi": 0.8}, expect="higher", null=0.5)
    assert block["verdict"] == "reproduced" and block["value"]["lo"] == 0.6
    lab.finish()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["claim"]["verdict"] == "reproduced"
    assert res["wall_s"] >= 0 and "end" in res["load_average"]
    html = (tmp_path / "report.html").read_text()
    assert html.index("Verdict: reproduced") < html.index("<section")


def test_versus_rest_compares_every_other_score(tmp_path, monkeypatch):
    lab = Lab(tmp_path, LabConfig.quick_config(), "t")
    seen = []
    monkeypatch.setattr(lab, "versus", lambda name, ref, others: seen.append((name, ref, others)))
    lab.versus_rest("plain", {"base": 0, "plain": 1, "a": 2, "b": 3}, skip=("base",))
    assert seen == [("plain", 1, {"a": 2, "b": 3})]


# -- honest caching ----------------------------------------------------------------------------
def test_train_reuses_only_identical_runs(tmp_path):
    from emprobe.data.generators import generate

    torch.set_num_threads(1)
    recs = generate("medical", 4, seed=0, variant="bad")
    lab = Lab(tmp_path, LabConfig.quick_config(steps=1), "t")
    a = lab.train("run", recs)
    assert lab.results["runs"]["run"]["reused"] is False
    assert lab.train("run", recs) == a and lab.results["runs"]["run"]["reused"] is True
    b = lab.train("run", recs, seed=1)  # another seed: a new folder, trained
    assert b != a and lab.results["runs"]["run"]["reused"] is False
    runs = lab.results["runs"]  # the latest under the name, seed 0's record kept beside it
    assert set(runs) == {"run", f"run-{a.parent.name.rsplit('-', 1)[1]}"}
    assert runs["run"]["key"] == b.parent.name.rsplit("-", 1)[1]
    c = lab.train("run", recs[:3])  # other data
    lr = Lab(tmp_path, LabConfig.quick_config(steps=1, lr=5e-4), "t").train("run", recs)
    assert len({a, b, c, lr}) == 4
    # a stored identity that disagrees with the folder is an error that says why
    stored = a.parent / "lab_run.json"
    ident = json.loads(stored.read_text())
    ident["train_config"]["lr"] = 123.0
    stored.write_text(json.dumps(ident))
    with pytest.raises(DataError, match="train_config"):
        lab.train("run", recs)


def test_interventions_are_part_of_the_identity(tmp_path):
    from emprobe.data.generators import generate
    from emprobe.train import CAFT

    recs = generate("medical", 4, seed=0, variant="bad")
    lab = Lab(tmp_path, LabConfig.quick_config(steps=1), "t")
    ids = [lab.run_identity(recs, [CAFT({1: torch.ones(64)})]),
           lab.run_identity(recs, [CAFT({1: -torch.ones(64)})]),
           lab.run_identity(recs, [])]
    assert len({json.dumps(i, sort_keys=True) for i in ids}) == 3


def test_cli_reseeded_run_does_not_reuse(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "X"
    assert main(["recipe", "inoculation", "--quick", "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    # Lab.claim's vocabulary, or the size-aware one of emprobe.recipes.verdict (issue 28)
    assert first["claim"]["verdict"] in ("reproduced", "partial", "not reproduced",
                                         "not significant", "sign-only", "not-reproduced",
                                         "not-testable")
    assert main(["recipe", "inoculation", "--quick", "--out", str(out), "--seed", "1"]) == 0
    second = json.loads((out / "results.json").read_text())
    assert second["config"]["seed"] == 1
    assert all(not r["reused"] for r in second["runs"].values())
    assert not {r["key"] for r in first["runs"].values()} & {r["key"]
                                                             for r in second["runs"].values()}


def test_cli_config_file_and_bad_key(tmp_path, capsys):
    cfg = tmp_path / "sizes.yaml"
    cfg.write_text("stepz: 3\n")
    assert main(["recipe", "inoculation", "--quick", "--config", str(cfg), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_train_and_score(tmp_path):
    from emprobe.data.generators import generate

    lab = Lab(tmp_path, LabConfig.quick_config(device="auto", dtype="auto",
                                               gradient_checkpointing=True), "t")
    assert lab.device == "cuda" and lab.dtype == "bfloat16"
    adapter = lab.train("gpu", generate("medical", 8, seed=0, variant="bad"))
    subject = lab.load(adapter)
    assert next(subject.model.parameters()).device.type == "cuda"
    assert math.isfinite(lab.score(subject).per_answer.mean)


def test_demo_config_flag_checks_keys(tmp_path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("n_trian: 3\n")
    assert main(["demo", "--quick", "--config", str(cfg), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "n_trian" in err and "demo.yaml" in err


@pytest.mark.integration
@pytest.mark.slow
def test_embedded_model_train_reuse_and_score(tmp_path):
    """The embedded model through the lab: one LoRA step, reuse, a small scored subset."""
    from emprobe.data.generators import generate

    cfg = LabConfig.of(n_train=2, steps=1, batch_size=2, score_questions=2, n_boot=50,
                    device="cpu", dtype="float32")
    lab = Lab(tmp_path, cfg, "t")
    recs = generate("medical", 2, seed=0, variant="bad")
    adapter = lab.train("one-step", recs)
    assert lab.train("one-step", recs) == adapter
    assert lab.results["runs"]["one-step"]["reused"] is True
    score = lab.score(lab.load(adapter))
    assert score.meta["n_questions"] == 2
    assert math.isfinite(score.per_answer.mean)
