import json

import pytest

from glio_kit.run.config import SETTINGS, ScoreSettings, all_knobs, get_config, image_hw, profile_name
from glio_kit.errors import RunFolderError
from glio_kit.run.rundir import RunDir


def test_profiles_and_overrides(monkeypatch):
    monkeypatch.delenv("GLIO_KIT_PROFILE", raising=False)
    assert profile_name() == "demo"
    monkeypatch.setenv("GLIO_KIT_PROFILE", "smoke")
    s = get_config(None, epochs=None, lam=0.5)
    assert s.profile == "smoke" and s.prep.profile == "smoke" and s.prep.image_size == (32, 32)
    assert s.score.lam == 0.5 and s.train.epochs == 2  # None keeps the profile value
    paper = get_config("paper")
    assert (paper.prep.image_size == (448, 364) and paper.train.epochs == 150
            and paper.score.mapping_steps == 500)
    assert paper.score.lam == 0.1


def test_settings_are_typed_and_checked():
    s = get_config("smoke", epochs="3", lr=1, amp="false", image_size="32x24")
    assert s.train.epochs == 3 and isinstance(s.train.lr, float) and s.train.amp is False
    assert s.prep.image_size == (32, 24) and s.prep.identity()["image_size"] == [32, 24]
    with pytest.raises(ValueError, match="epochs must be int"):
        get_config("smoke", epochs=2.5)
    with pytest.raises(ValueError, match="mapping must be one of"):
        get_config("smoke", mapping="gradient")
    with pytest.raises(ValueError, match="lam must be in"):
        get_config("smoke", lam=2)
    # a knob that does not change the result is recorded but not part of the step's identity
    s = get_config("smoke").score
    assert "mapping_batch_size" in s.as_dict() and "mapping_batch_size" not in s.identity()
    assert {"median_filter", "erode", "residual_kind", "encoder_lr"} <= set(s.identity())


def test_every_knob_is_written_once():
    """Each knob belongs to the steps that read it; only seed and device are shared by all."""
    shared = {k for k, steps in all_knobs().items() if len(steps) > 1}
    assert shared == {"seed", "device"}
    for name, cls in SETTINGS.items():
        for knob in cls.knobs():
            assert cls.help(knob), f"{name}.{knob} has no help text"
    assert ScoreSettings().median_filter == 3  # the demo's defaults are the fields' defaults


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
    run.claim("prep", {"a": 1})
    run.mark_done("prep")
    run.claim("train", {"epochs": 1}, after=("prep",))
    run.mark_done("train")
    run.claim("prep", {"a": 2}, overwrite=True)
    run.mark_done("prep")
    with pytest.raises(RunFolderError, match="step 'prep' now holds a run with other parameters"):
        run.claim("train", {"epochs": 1}, after=("prep",))


def test_later_step_invalidated_by_earlier_step_redone_with_same_values(tmp_path):
    """Redoing a step, even with the same values, makes the steps that read it stale."""
    run = RunDir(tmp_path / "run")
    run.claim("prep", {"a": 1})
    run.mark_done("prep")
    run.claim("train", {"epochs": 1}, after=("prep",))
    run.mark_done("train")
    assert run.claim("train", {"epochs": 1}, after=("prep",)) is True
    run.mark_failed("prep", "redo", status="stale")
    assert run.claim("prep", {"a": 1}) is False  # redone with the same values
    run.mark_done("prep")
    with pytest.raises(RunFolderError, match="step 'prep' was redone after this step ran"):
        run.claim("train", {"epochs": 1}, after=("prep",))
    assert run.claim("train", {"epochs": 1}, after=("prep",), overwrite=True) is False


def test_failed_attempt_that_left_nothing_does_not_block_a_retry(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim("prep", {"train_healthy": "/data/ixi_trian"})  # a typo: the step fails, nothing written
    run.mark_failed("prep", "InputError: folder does not exist")
    assert not run.is_done("prep")
    assert run.claim("prep", {"train_healthy": "/data/ixi_train"}) is False  # the corrected retry
    run.mark_done("prep")
    assert run.record("prep")["params"] == {"train_healthy": "/data/ixi_train"}
    # a failed attempt that did leave products (a cache) is not replaced without asking
    run.claim("prep", {"train_healthy": "/data/other"}, overwrite=True)
    (run / "cache").mkdir()
    run.mark_failed("prep", "interrupted")
    with pytest.raises(RunFolderError, match="was started \\(failed\\) with other settings"):
        run.claim("prep", {"train_healthy": "/data/ixi_train"})


def test_step_records_are_written_atomically_and_corrupt_ones_named(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim("prep", {"a": 1})
    run.mark_done("prep", n=3)
    assert sorted(p.name for p in (run / "steps").iterdir()) == ["prep.json"]  # no temporary left
    rec = run / "steps" / "prep.json"
    rec.write_text(rec.read_text()[:25])  # cut short, as by a full disk before this fix
    for call in (lambda: run.record("prep"), lambda: run.is_done("prep"),
                 lambda: run.claim("prep", {"a": 1})):
        with pytest.raises(RunFolderError, match="prep.json: step record cannot be read.*--force prep"):
            call()
    rec.write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="prep.json: is not a glio-kit step record"):
        run.record("prep")


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunFolderError, match="not a glio-kit run folder"):
        RunDir(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
