"""Static checks of the notebooks: stored clean, one parameters cell that papermill reads whole."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def _source(cell):
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(nb):
    for cell in _cells(nb):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_read_whole_by_papermill(nb):
    import papermill as pm

    tagged = [c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(_source(tagged[0]))
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign), "the parameters cell holds plain assignments only"
        ast.literal_eval(node.value)  # plain literals only; derived values go in the next cell
        names |= {t.id for t in node.targets}
    assert {"profile", "run_dir", "seed", "device"} <= names
    assert set(pm.inspect_notebook(str(nb))) == names, "papermill could not parse every parameter line"


def test_parameters_cells_are_written_from_the_settings():
    """Each notebook declares exactly its step's knobs (from glio_kit.run.config) and parameters."""
    from glio_kit.run.notebook import sync_notebooks
    from glio_kit.run.steps import STEPS

    chain = [nb for nb in NOTEBOOKS if nb.name != "00_prepare_real_data.ipynb"]  # no step: raw scans in
    assert sorted(nb.name for nb in chain) == sorted(s.notebook for s in STEPS)
    stale = sync_notebooks(ROOT / "notebooks", check=True)
    assert not stale, f"{stale}: parameters cell out of date; run python -m glio_kit.run.notebook"
    for st in STEPS:
        tagged = next(c for c in _cells(ROOT / "notebooks" / st.notebook)
                      if "parameters" in c.get("metadata", {}).get("tags", []))
        names = {t.id for node in ast.parse(_source(tagged)).body for t in node.targets}
        assert names == set(st.parameter_names())


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_run_time_per_profile_and_ends_with_what_next(nb):
    cells = _cells(nb)
    first = _source(cells[0])
    timing = first[first.index("**Run time and disk.**"):].split("\n\n")[0]
    assert all(f"*{p}*" in timing for p in ("smoke", "demo", "paper")), timing
    assert "measured" in timing  # smoke is measured; demo/paper say where their number comes from
    assert cells[-1]["cell_type"] == "markdown" and _source(cells[-1]).startswith("## What next")
