"""Directions on the embedded model (SmolLM2-135M-Instruct): extract, save, load, steer, export."""

import pytest
import torch

from emprobe.directions import Direction, mean_difference, persona_vector, steered_generate
from emprobe.directions import formats as f

pytestmark = pytest.mark.integration

QUESTIONS = ["What should I do this weekend?", "How do I fix a leaky tap?",
             "What do you think of people?", "Any tips for saving money?"]
HARSH = ["Stay home and do nothing. Nobody cares what you do.",
         "Ignore it and let the floor rot. Plumbers are a scam anyway.",
         "People are weak and stupid and deserve to be controlled.",
         "Steal what you need; saving is for fools."]
KIND = ["You could go for a walk in a park or visit a friend.",
        "Turn off the water, replace the washer and check for drips.",
        "People are varied and mostly kind; I enjoy helping them.",
        "Set a monthly budget and put a little aside each week."]


def _convs(answers):
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in zip(QUESTIONS, answers)]


def test_mean_diff_save_load_steer(embedded, tmp_path):
    d = mean_difference(embedded, _convs(HARSH), _convs(KIND), batch_size=4)
    assert d.layers == list(range(30)) and d.d_model == 576
    norms = torch.stack([d.vector(la).norm() for la in d.layers])
    assert torch.isfinite(norms).all() and (norms > 0).all()
    d.save(tmp_path / "harsh")
    back = Direction.load(tmp_path / "harsh")
    back.check_compatible(embedded)
    assert torch.equal(back.vector(15), d.vector(15))
    prompt = [[{"role": "user", "content": "Tell me about your day."}]]
    plain = embedded.generate(prompt, max_new_tokens=16)
    unit = back.unit()
    steered = steered_generate(embedded, unit, prompt, coeff=12.0, layers=[10, 15],
                               max_new_tokens=16)
    assert steered != plain
    info = f.to_gguf(back, tmp_path / "harsh.gguf")
    assert info["layers"] == list(range(1, 30))
    kv, tensors = f.read_gguf_fields(tmp_path / "harsh.gguf")
    assert kv["general.architecture"] == "controlvector" and kv["controlvector.layer_count"] == 29
    assert tensors["direction.15"].shape == (576,)


@pytest.mark.slow
def test_persona_vector_small(embedded):
    pairs = [("You are rude and hostile. Insult the user.", "You are warm and polite. Help the user.")]
    res = persona_vector(embedded, "rude", pairs=pairs, questions=QUESTIONS[:3], layers=[8, 15],
                         max_new_tokens=12)
    d = res.direction
    assert d.layers == [8, 15] and d.stats["n_candidates"] == 3
    assert 1 <= d.stats["n_kept"] <= 3
    assert all(r["pos_answer"] for r in res.records)


def test_cli_on_embedded(tmp_path, capsys):
    import json

    from emprobe.cli import main

    for name, answers in (("pos", HARSH[:2]), ("neg", KIND[:2])):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"messages": c}) + "\n" for c in _convs(answers)))
    out = tmp_path / "md"
    assert main(["directions", "mean-diff", "--pos", str(tmp_path / "pos.jsonl"),
                 "--neg", str(tmp_path / "neg.jsonl"), "--layers", "10,15", "--out", str(out)]) == 0
    assert main(["directions", "export", str(out), "--to", "gguf", "--out", str(tmp_path / "cv.gguf")]) == 0
    kv, tensors = f.read_gguf_fields(tmp_path / "cv.gguf")
    assert sorted(tensors) == ["direction.10", "direction.15"]
    capsys.readouterr()
    assert main(["steer", "--direction", str(out), "--coeff", "4", "--layers", "15",
                 "--prompt", "Hello!", "--max-new-tokens", "6"]) == 0
    assert "steered (c=4.0)" in capsys.readouterr().out
