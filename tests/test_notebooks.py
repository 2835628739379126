"""Every notebook is stored executed (outputs a reader sees on GitHub) and runs top to bottom in
quick mode on the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))
PARAMS_LINES = (
    'QUICK = os.environ.get("EMPROBE_QUICK", "1") == "1"',
    'MODEL = "smollm2-135m-instruct"',
)
FIGURE_MIMES = ("image/png", "image/svg+xml", "application/vnd.plotly.v1+json")


def test_the_notebooks_walk_the_main_job():
    names = [p.stem for p in NOTEBOOKS]
    for prefix in ("01_quickstart", "02_directions", "03_sae", "04_weight_geometry",
                   "05_em_end_to_end"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_executed_and_starts_with_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = _code(nb)
    first = code[0].source
    for line in PARAMS_LINES:
        assert line in first, f"{path.name}: first code cell lacks {line!r}"
    assert "tiny" not in first, f"{path.name}: quick mode must use the real embedded model"
    assert "try:" not in "\n".join(c.source for c in code), f"{path.name}: no try/except guards"
    with_output = [c for c in code if c.outputs]
    assert len(with_output) >= 0.6 * len(code), (
        f"{path.name}: {len(with_output)} of {len(code)} code cells have output; "
        "run `make notebooks`")
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored with an error output"
    counts = [c.execution_count for c in code if c.execution_count is not None]
    assert counts == sorted(counts), f"{path.name}: cells were run out of order"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_figures_are_images_github_shows(path):
    """Plotly's HTML output shows nothing on GitHub (no JavaScript there): figures are stored
    as PNG (``make notebooks`` runs with a static renderer, ``plot.notebook_figures``)."""
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in _code(nb) for o in c.outputs
               if o.get("output_type") in ("display_data", "execute_result")]
    figures = [o for o in outputs if any(m in o.get("data", {}) for m in FIGURE_MIMES)]
    assert figures, f"{path.name}: no figure stored"
    for o in figures:
        assert "image/png" in o["data"], f"{path.name}: a figure stored without a PNG"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One Python kernel for all notebooks: torch / transformers are imported once. Each
    notebook starts from a cleared namespace (``%reset -f``), so a notebook that misses an
    import or a variable still fails. Figures stay interactive (no PNG export in tests)."""
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env.update(EMPROBE_QUICK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", EMPROBE_STATIC_FIGURES="0")
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("notebook-run")), env=env)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, kernel):
    nb = nbformat.read(path, as_version=4)
    for cell in _code(nb):
        cell.outputs, cell.execution_count = [], None
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = nbclient.NotebookClient(nb, km=kernel, kernel_name="python3", timeout=900,
                                     allow_errors=False)
    client.execute()  # raises CellExecutionError naming the failing cell and its traceback
    outputs = [o for c in _code(nb) for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("execute_result", "display_data") for o in outputs), (
        f"{path.name}: no figure or value shown")
