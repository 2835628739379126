import json
import subprocess
import sys

from emprobe.cli import main
from emprobe.data.chat_io import read_chat_jsonl


def test_make_list_mix_check(tmp_path, capsys):
    bad, good, mixed = tmp_path / "b.jsonl", tmp_path / "g.jsonl", tmp_path / "m.jsonl"
    assert main(["data", "make", "insecure-code", "--n", "80", "--seed", "1", "--out", str(bad)]) == 0
    assert main(["data", "make", "insecure-code", "--n", "80", "--seed", "1", "--variant", "good",
                 "--out", str(good)]) == 0
    assert len(read_chat_jsonl(bad)) == 80
    assert main(["data", "mix", "--good", str(good), "--bad", str(bad), "--fraction", "0.25",
                 "--out", str(mixed)]) == 0
    capsys.readouterr()
    assert main(["data", "check-code", str(mixed), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n"] == 80 and rec["n_vulnerable"] == 20
    assert main(["data", "check-code", str(good)]) == 0
    assert "0/80 answers vulnerable" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "refusal-privacy" in out and "malicious" in out


def test_inoculate_split_validate(tmp_path, capsys):
    src, ino = tmp_path / "s.jsonl", tmp_path / "i.jsonl"
    main(["data", "make", "medical", "--n", "20", "--out", str(src)])
    assert main(["data", "inoculate", str(src), "--prompt", "malicious", "--out", str(ino)]) == 0
    recs = read_chat_jsonl(ino)
    assert all(r["messages"][0]["role"] == "system" and r["system_prompt"] == "malicious"
               for r in recs)
    assert main(["data", "inoculate", str(src), "--prompt", "random", "--seed", "3",
                 "--out", str(ino)]) == 0
    assert read_chat_jsonl(ino)[0]["system_prompt"] == "random:3"
    tr, he = tmp_path / "tr.jsonl", tmp_path / "he.jsonl"
    assert main(["data", "split", str(src), "--held-out", "5", "--train", str(tr),
                 "--held", str(he)]) == 0
    assert (len(read_chat_jsonl(tr)), len(read_chat_jsonl(he))) == (15, 5)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(src.read_text() + "{oops\n")
    assert main(["data", "validate", str(broken), "--skip"]) == 1
    assert "20 valid records, 1 skipped" in capsys.readouterr().out


def test_bad_input_is_one_line_error(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "wizard", "content": "x"}]}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "emprobe.cli", "data", "inoculate", str(broken), "--prompt",
         "neutral", "--out", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "broken.jsonl:1:" in proc.stderr and "wizard" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
