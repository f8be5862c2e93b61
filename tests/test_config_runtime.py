import json

import pytest

from glio_kit.config import get_config, image_hw, profile_name
from glio_kit.errors import RunFolderError
from glio_kit.runtime import RunDir


def test_profiles_and_overrides(monkeypatch):
    monkeypatch.delenv("GLIO_KIT_PROFILE", raising=False)
    assert profile_name() == "demo"
    monkeypatch.setenv("GLIO_KIT_PROFILE", "smoke")
    cfg = get_config(None, epochs=None, lam=0.5)
    assert cfg["profile"] == "smoke" and cfg["image_size"] == [32, 32]
    assert cfg["lam"] == 0.5 and cfg["epochs"] == 2  # None keeps the profile value
    paper = get_config("paper")
    assert paper["image_size"] == [448, 364] and paper["epochs"] == 150 and paper["mapping_steps"] == 500
    assert paper["lam"] == 0.1


def test_unknown_profile_and_parameter():
    with pytest.raises(ValueError, match="unknown profile"):
        get_config("fast")
    with pytest.raises(ValueError, match="epoch"):
        get_config("smoke", epoch=3)


def test_image_hw():
    assert image_hw(64) == [64, 64]
    assert image_hw("448x364") == [448, 364]
    with pytest.raises(ValueError):
        image_hw([4, 4])


def test_run_folder_claims(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.claim("prep", {"a": 1}) is False
    run.mark_done("prep")
    assert run.claim("prep", {"a": 1}) is True  # same parameters: already done
    with pytest.raises(RunFolderError, match="a: 1 -> 2"):
        run.claim("prep", {"a": 2})
    assert json.loads((run / "steps" / "prep.json").read_text())["params"] == {"a": 1}  # untouched
    assert run.claim("prep", {"a": 2}, overwrite=True) is False


def test_later_step_invalidated_by_redone_earlier_step(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunFolderError, match="needs step 'prep'"):
        run.claim("train", {"epochs": 1}, after=("prep",))
    run.claim("prep", {"a": 1}); run.mark_done("prep")
    run.claim("train", {"epochs": 1}, after=("prep",)); run.mark_done("train")
    run.claim("prep", {"a": 2}, overwrite=True); run.mark_done("prep")
    with pytest.raises(RunFolderError, match="earlier step"):
        run.claim("train", {"epochs": 1}, after=("prep",))


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunFolderError, match="not a glio-kit run folder"):
        RunDir(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
