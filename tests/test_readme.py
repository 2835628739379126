"""The README's quick-start block runs as written, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), flags=re.S)
    assert block, "README.md's quick start has no ```python block"
    return block.group(1)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150: records go to docs/)"
    code_lines = [ln for ln in _quick_start_block().splitlines() if ln.strip()]
    assert len(code_lines) <= 14, f"quick start is {len(code_lines)} lines"


@pytest.mark.integration
def test_readme_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_quick_start"}
    exec(compile(_quick_start_block(), "README.md:quick-start", "exec"), namespace)  # noqa: S102
