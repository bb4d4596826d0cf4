"""The example notebooks (notebooks/*.ipynb) run without errors, show every figure they make, and
are committed clean.

They run with nbclient on a ``python3`` kernel whose spec is written here with this interpreter
(``sys.executable``) as argv[0] and put first on JUPYTER_PATH, so the kernel is this virtual
environment's Python whatever other ``python3`` kernels the machine has.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

# calls that make a figure in a notebook cell
_FIGURE_CALL = re.compile(r"plt\.(subplots|figure)\(|display\(Image\(")
NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_notebooks_present():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "design_space.ipynb", "gpu_comparison.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs (clear them)"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


@pytest.fixture(scope="module")
def venv_kernel(tmp_path_factory):
    """A python3 kernel spec running this interpreter, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pimsim venv)", "language": "python",
        "metadata": {"debugger": False}}))
    (root / "runtime").mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root))
    mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
    # as in Jupyter: the kernel picks matplotlib's inline backend (never a GUI, never Agg)
    mp.delenv("MPLBACKEND", raising=False)
    yield "python3"
    mp.undo()


@pytest.mark.parametrize("path", [  # design_space and gpu_comparison (17 s, 7 s) are slow
    pytest.param(p, marks=pytest.mark.slow) if p.stem in ("design_space", "gpu_comparison") else p
    for p in NOTEBOOKS],
    ids=lambda p: p.stem)
def test_notebook_runs(path, venv_kernel):
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(venv_kernel).argv[0] == sys.executable
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=300,
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
            assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    # every cell that makes a figure shows it as an image, as Jupyter would
    makes = [c for c in nb.cells if c.cell_type == "code" and _FIGURE_CALL.search(c.source)]
    assert makes, f"{path.name}: no figure cells found (the check would pass vacuously)"
    for cell in makes:
        shown = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert shown, f"{path.name}: a cell makes a figure but shows none:\n{cell.source[:200]}"
