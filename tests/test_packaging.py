"""The conda environment, pyproject and the CI entry point agree."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAME = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAME.get(_name(d), _name(d)) for d in project["dependencies"]}
    wanted |= {CONDA_NAME.get(_name(d), _name(d)) for d in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    assert conda == wanted, f"only in environment.yml: {conda - wanted}; only in pyproject: {wanted - conda}"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip  # the package itself comes from the repository


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make demo" in (ROOT / "README.md").read_text()


def test_cli_help_lists_commands(capsys):
    import pytest

    from glio_kit.run.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("synth", "run", "batch"):
        assert cmd in out


def test_every_subpackage_ships_and_the_notebooks_too():
    """pyproject lists the packages by hand (the notebooks live outside glio_kit/): a new
    subpackage must be added there, or the wheel would lack it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "glio_kit").rglob("__init__.py")}
    assert found | {"glio_kit.notebooks", "glio_kit.examples"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"glio_kit.notebooks": "notebooks", "glio_kit.examples": "examples"}
    assert setuptools["package-data"]["glio_kit.notebooks"] == ["*.ipynb"]
    assert setuptools["package-data"]["glio_kit.examples"] == ["*.yaml"]
