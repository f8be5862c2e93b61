"""The glio-kit command as a new user meets it: the profile it picks, its help, copying the notebooks."""
import pytest

from glio_kit.run.cli import chosen_profile, main
from glio_kit.errors import GlioKitError
from glio_kit.run.runner import copy_notebooks, notebooks_dir
from glio_kit.run.steps import STEPS


def test_profile_from_option_then_environment_then_demo(monkeypatch, capsys):
    monkeypatch.setenv("GLIO_KIT_PROFILE", "smoke")
    assert chosen_profile("paper") == "paper"
    assert "profile: paper (from --profile)" in capsys.readouterr().out
    assert chosen_profile(None) == "smoke"
    out = capsys.readouterr().out
    assert "profile: smoke (from $GLIO_KIT_PROFILE)" in out and "too small to learn" in out
    monkeypatch.delenv("GLIO_KIT_PROFILE")
    assert chosen_profile(None) == "demo"
    assert "profile: demo (from the default" in capsys.readouterr().out


def test_bad_profile_in_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("GLIO_KIT_PROFILE", "smok")
    with pytest.raises(GlioKitError, match="GLIO_KIT_PROFILE"):
        chosen_profile(None)


def test_run_reads_the_profile_from_the_environment(monkeypatch, tmp_path, capsys):
    """`glio-kit run` without --profile uses $GLIO_KIT_PROFILE (an unknown -p stops it before any
    notebook starts, after the profile line)."""
    monkeypatch.setenv("GLIO_KIT_PROFILE", "smoke")
    assert main(["run", "--run-dir", str(tmp_path / "r"), "-p", "epoch=3"]) == 2
    assert "profile: smoke (from $GLIO_KIT_PROFILE)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["batch", "--help"], ["run", "--help"],
                                  ["notebooks", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out, "raw reStructuredText in --help"
    body = out.split("\n\n", 1)[1]  # after the usage line(s): a description
    assert len(body.split("positional arguments")[0].strip()) > 40


PREPARE_NOTEBOOK = "00_prepare_real_data.ipynb"  # not a step of the chain, copied too (issue 17)


def test_copy_notebooks_never_overwrites(tmp_path):
    mine = tmp_path / "nb" / STEPS[0].notebook
    mine.parent.mkdir()
    mine.write_text("my own work")
    copied, kept = copy_notebooks(tmp_path / "nb")
    assert kept == [mine] and mine.read_text() == "my own work"
    assert sorted(p.name for p in copied) == sorted({s.notebook for s in STEPS[1:]} | {PREPARE_NOTEBOOK})
    assert all(p.read_bytes() == (notebooks_dir() / p.name).read_bytes() for p in copied)
    copied, kept = copy_notebooks(tmp_path / "nb")  # again: everything is there already
    assert copied == [] and len(kept) == len(STEPS) + 1


def test_glio_kit_notebooks_command(tmp_path, capsys):
    assert main(["notebooks", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.ipynb"))) == len(STEPS) + 1  # and 00_prepare_real_data
    assert "jupyter lab" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["notebooks", str(tmp_path / "file")]) == 2


def test_batch_says_where_the_summary_went_and_when_nothing_ran(monkeypatch, tmp_path, capsys):
    import pandas as pd

    import glio_kit.run.batch

    def finished_earlier(grid, workers=1, force=False):
        table = pd.DataFrame(dict(run=["a", "b"], status=["done earlier"] * 2))
        table.attrs["out"] = str(tmp_path / "batch")
        return table

    monkeypatch.setattr(glio_kit.run.batch, "run_batch", finished_earlier)
    assert main(["batch", "grid.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"summary: {tmp_path / 'batch'}/summary.md" in out
    assert "2 runs: 2 done earlier" in out and "nothing ran" in out


def test_kernels_get_the_data_folder_of_the_working_directory(monkeypatch):
    """The kernels run in the notebooks' folder (inside site-packages for an installed kit): an unset
    GLIO_KIT_DATA is pinned to the data folder as seen from where glio-kit runs, then unset again."""
    import os

    from glio_kit.run.runner import _absolute_env
    from glio_kit.paths import default_data_dir

    monkeypatch.delenv("GLIO_KIT_DATA", raising=False)
    with _absolute_env():
        assert os.environ["GLIO_KIT_DATA"] == str(default_data_dir().resolve())
    assert "GLIO_KIT_DATA" not in os.environ


def test_no_half_made_run_folder_when_the_notebooks_are_missing(monkeypatch, tmp_path):
    import glio_kit.run.runner as runner

    def missing():
        raise GlioKitError("no notebooks found; the installation is incomplete")

    monkeypatch.setattr(runner, "notebooks_dir", missing)
    with pytest.raises(GlioKitError, match="incomplete"):
        runner.run_chain(tmp_path / "r", "smoke")
    assert not (tmp_path / "r").exists()


def test_a_misspelt_knob_names_the_nearest_one(tmp_path, capsys):
    """`-p lamda=0.5` stops before any notebook starts and suggests `lam`, instead of listing every
    knob; a grid file's misspelt name gets the same message."""
    assert main(["run", "--profile", "smoke", "--run-dir", str(tmp_path / "r"), "-p", "lamda=0.5"]) == 2
    err = capsys.readouterr().err
    assert "'lamda' (did you mean 'lam'?)" in err and "mapping_lr" not in err
    assert not (tmp_path / "r").exists()
    from glio_kit.run.steps import refuse_unknown_parameters

    with pytest.raises(GlioKitError, match=r"'epoch' \(did you mean 'epochs'\?\), 'zzz' are not declared"):
        refuse_unknown_parameters({"epoch", "zzz", "lam"}, {"epochs", "lam"})
    refuse_unknown_parameters({"lam"}, {"epochs", "lam"})  # known names pass
