"""Every notebook runs top to bottom in quick mode (tiny models), and is stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PARAMS_LINES = (
    'QUICK = os.environ.get("EMPROBE_QUICK", "1") == "1"',
    'MODEL = "tiny-llama" if QUICK else "smollm2-135m-instruct"',
)


def test_there_are_at_least_four_notebooks():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 4, names
    for prefix in ("01_quickstart", "02_directions", "03_sae", "04_weight_geometry"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_starts_with_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name}: no code cells"
    for cell in code:
        assert cell.outputs == [], f"{path.name}: outputs not stripped"
        assert cell.execution_count is None, f"{path.name}: execution count not cleared"
    first = code[0].source
    for line in PARAMS_LINES:
        assert line in first, f"{path.name}: first code cell lacks {line!r}"
    assert "try:" not in "\n".join(c.source for c in code), f"{path.name}: no try/except guards"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One Python kernel for all notebooks: torch / transformers are imported once, which keeps
    the whole run well under a minute on 2 shared cores. Each notebook starts from a cleared
    namespace (``%reset -f``), so a notebook that misses an import or a variable still fails.
    One torch thread: the tiny models gain nothing from more, and the cores are shared."""
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env.update(EMPROBE_QUICK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("notebook-run")), env=env)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, kernel):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = nbclient.NotebookClient(nb, km=kernel, kernel_name="python3", timeout=180,
                                     allow_errors=False)
    client.execute()  # raises CellExecutionError naming the failing cell and its traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("output_type") in ("execute_result", "display_data", "stream")
               for c in nb.cells if c.cell_type == "code" for o in c.outputs), "no output at all"
