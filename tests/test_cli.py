import subprocess
import sys

from emprobe.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "capture" in out


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "emprobe" in out and "cache dir" in out and "embedded model" in out


def test_capture_tiny(tmp_path, capsys):
    out = tmp_path / "acts.safetensors"
    assert main(["capture", "--model", "tiny-llama", "--layers", "1,2", "--out", str(out)]) == 0
    assert out.is_file()
    assert "resid_post[1]" in capsys.readouterr().out


def test_bad_model_is_one_line_error():
    proc = subprocess.run(
        [sys.executable, "-m", "emprobe.cli", "capture", "--model", "not-a-model"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("emprobe: error:")
