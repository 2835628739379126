"""``emprobe directions ...`` and ``emprobe steer`` on the tiny model."""

import json

import pytest

from emprobe.cli import main
from emprobe.directions import Direction
from emprobe.directions.cli import _per_answer, parse_layers
from emprobe.errors import ConfigError


def _write(path, convs):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return str(path)


def _convs(prefix):
    return [[{"role": "user", "content": f"{prefix} question {i}"},
             {"role": "assistant", "content": f"{prefix} answer number {i}"}] for i in range(4)]


def test_parse_layers():
    assert parse_layers("all") is None and parse_layers(None) is None
    assert parse_layers("1,3,5") == [1, 3, 5]
    assert parse_layers("3-5") == [3, 4, 5]  # inclusive ranges, as documented
    for bad in ("a-b", "5-3", "1,1"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_cli_extract_export_steer(tmp_path, capsys):
    pos, neg = _write(tmp_path / "pos.jsonl", _convs("evil")), _write(tmp_path / "neg.jsonl", _convs("kind"))
    out = tmp_path / "md"
    assert main(["directions", "mean-diff", "--model", "tiny-llama", "--pos", pos, "--neg", neg,
                 "--out", str(out)]) == 0
    d = Direction.load(out)
    assert d.layers == [0, 1, 2, 3] and d.model == "tiny-llama"
    assert main(["directions", "probe", "--model", "tiny-llama", "--pos", pos, "--neg", neg,
                 "--layers", "1,2", "--out", str(tmp_path / "probe")]) == 0
    printed = capsys.readouterr().out
    assert "layer 1: train acc" in printed and "layer 2: train acc" in printed
    assert main(["directions", "pca", "--model", "tiny-llama", "--ft", "tiny-llama", "--layers", "1",
                 "-k", "2", "--out", str(tmp_path / "pca")]) == 0
    assert (tmp_path / "pca" / "contexts.html").is_file()
    lines = tmp_path / "food.txt"
    lines.write_text("Tell me about bread\nWhat is soup?\n")
    assert main(["directions", "concept", "--model", "tiny-llama", "--concept", f"food={lines}",
                 "--concept", f"again={lines}", "--out", str(tmp_path / "concepts")]) == 0
    cos = json.loads((tmp_path / "concepts" / "cosine.json").read_text())
    assert cos["names"] == ["food", "again"]
    for to, name in [("gguf", "cv.gguf"), ("persona-pt", "p.pt"), ("caft-npy", "caft"),
                     ("numpy", "d.npz"), ("persona-safetensors", "p.safetensors")]:
        assert main(["directions", "export", str(out), "--to", to, "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).exists()
    assert main(["directions", "import", str(tmp_path / "cv.gguf"), "--from", "gguf",
                 "--out", str(tmp_path / "back")]) == 0
    assert Direction.load(tmp_path / "back").layers == [1, 2, 3]
    assert main(["directions", "info", str(out)]) == 0
    capsys.readouterr()
    assert main(["steer", "--model", "tiny-llama", "--direction", str(out), "--coeff", "50",
                 "--layers", "1", "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert "steered (c=50.0)" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["directions", "export", str(tmp_path / "none"), "--to", "gguf",
                 "--out", str(tmp_path / "x.gguf")]) == 2
    assert "not a direction folder" in capsys.readouterr().err
    assert main(["directions", "mean-diff", "--model", "tiny-llama", "--pos", str(tmp_path / "no.jsonl"),
                 "--neg", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_per_answer_line():
    entry = {"per_answer": {"mean": 0.5, "lo": -0.25, "hi": 1.0}, "per_token": {}}
    assert _per_answer(entry) == "+0.50 [-0.25, +1.00]"
    with pytest.raises(TypeError, match="not a score record"):
        _per_answer(3)
