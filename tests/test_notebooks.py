"""Executes the notebooks top to bottom, as CI does, and checks their figures."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["toy_figure.ipynb"])
def test_notebook_runs_and_shows_a_figure(name):
  path = NOTEBOOKS / name
  nb = nbformat.read(path, as_version=4)
  # Committed without outputs, so that what runs here is what a user runs.
  assert all(not cell.get("outputs") for cell in nb.cells
             if cell.cell_type == "code"), f"{name} has committed outputs"
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  images = [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "image/png" in out.get("data", {})]
  assert images, f"{name} displayed no figure"
