"""Every knob reaches every step that reads it: one `glio-kit run --profile smoke` with every knob
set away from its profile value, then each step's record and output are checked.

A knob is written once (a field of its step's settings class in glio_kit.run.config); the notebooks'
parameters, the command line's -p and the step records derive from it. This test is what
shows the derivation holds end to end, through papermill and the notebooks."""
import json

import numpy as np
import pandas as pd
import pytest

from glio_kit.run.cli import main
from glio_kit.run.config import SETTINGS, get_config
from glio_kit.run.steps import STEPS

#: A value for every knob, different from the smoke profile's, that the smoke chain can run with.
VALUES = dict(
    seed=3, device="cpu",
    synth_train_healthy=5, synth_test_healthy=3, synth_test_tumor=3, synth_voxel_size=5.0,
    synth_wmh_fraction=0.34,
    normalisation="zscore", harmonisation="landmarks", image_size=[32, 24], slab=[0.35, 0.65], n_slices=3,
    val_fraction=0.4,
    latent_dim=16, ngf=4, ndf=4, epochs=1, batch_size=4, lr=0.001, beta1=0.6, beta2=0.99, ema_decay=0.5,
    amp=False,
    checkpoint_every=2, compare_paper_lr_epochs=0,
    mapping="encoder+iterative", mapping_steps=3, mapping_lr=0.02, mapping_batch_size=16, restarts=2, lam=0.3,
    encoder_epochs=2, encoder_lr=0.002, encoder_batch_size=4, kappa=0.5, subject_reduction="topk", topk=2,
    residual_kind="absolute", median_filter=0, erode=2,
    subject_healthy="", subject_tumor="", n_figure_slices=2,
    fpr_target=0.1, pixel_percentile=95.0, intensity_percentile=85.0, n_bootstrap=20,
    lesion_min_size=3, recommended_score="residual_area",
)
#: Knobs whose smoke value is the empty default: the figures pick a subject themselves.
SAME_AS_PROFILE = {"subject_healthy", "subject_tumor"}


def _arg(v) -> str:
    return json.dumps(v) if isinstance(v, (list, bool)) else str(v)


@pytest.fixture(scope="module")
def knob_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("knobs")
    mp = pytest.MonkeyPatch()
    mp.setenv("GLIO_KIT_DATA", str(tmp / "data"))
    mp.delenv("GLIO_KIT_RUN_DIR", raising=False)
    mp.setenv("GLIO_KIT_QUIET", "1")
    run_dir = tmp / "run"
    args = ["run", "--profile", "smoke", "--run-dir", str(run_dir)]
    for k, v in VALUES.items():
        args += ["-p", f"{k}={_arg(v)}"]
    assert main(args) == 0
    yield tmp, run_dir
    mp.undo()


def test_every_knob_has_a_test_value():
    every = {k for cls in SETTINGS.values() for k in cls.knobs()}
    assert every == set(VALUES), "give each new knob a test value here"
    smoke = get_config("smoke").as_dict()
    same = {k for k, v in VALUES.items() if smoke[k] == (tuple(v) if isinstance(v, list) else v)}
    assert same == SAME_AS_PROFILE, f"these test values equal the profile's and prove nothing: {same}"


def test_every_knob_is_in_the_record_of_every_step_that_reads_it(knob_run):
    _, run_dir = knob_run
    for st in STEPS:
        rec = json.loads((run_dir / "steps" / f"{st.name}.json").read_text())
        assert rec["status"] == "done", st.name
        for knob in st.settings.knobs():
            assert rec["settings"][knob] == VALUES[knob], f"{knob} did not reach step {st.name!r}"


def test_every_knob_changes_the_output_that_depends_on_it(knob_run):
    tmp, run_dir = knob_run
    v = VALUES
    # prep: cohort, split, slices, size, normalisation
    # another synthetic cohort gets a folder of its own, named by what differs from the profile
    folder = f"synthetic-smoke-seed{v['seed']}-train5-healthy3-tumor3-voxel5-wmh0.34"
    assert [p.name for p in (tmp / "data").glob("synthetic-*")] == [folder]
    cohort = json.loads((tmp / "data" / folder / "cohort.json").read_text())
    made = cohort["parameters"]
    assert made["voxel_size"] == v["synth_voxel_size"] and made["wmh_fraction"] == v["synth_wmh_fraction"]
    index = pd.read_csv(run_dir / "cache" / "index.csv", dtype={"subject": str})
    subjects = index.drop_duplicates("subject")
    assert len(subjects) == v["synth_train_healthy"] + v["synth_test_healthy"] + v["synth_test_tumor"]
    assert (subjects.split == "val").sum() == round(v["val_fraction"] * v["synth_train_healthy"])
    assert (index.groupby("subject").size() == v["n_slices"]).all()
    assert np.load(run_dir / "cache" / "images.npy", mmap_mode="r").shape[1:] == tuple(v["image_size"])
    prep = json.loads((run_dir / "cache" / "prep.json").read_text())
    assert prep["normalisation"] == v["normalisation"] and prep["slab"] == v["slab"]
    assert prep["harmonisation"] == v["harmonisation"]
    assert len(prep["harmonisation_reference"]["reference"]) == 11
    # train: the model's shape, epochs, checkpoints, the side run skipped
    import torch

    ckpt = torch.load(run_dir / "train" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    for k in ("latent_dim", "ngf", "ndf", "lr", "beta1", "beta2", "ema_decay", "batch_size", "amp"):
        assert ckpt["config"][k] == v[k], k
    assert "G_ema" in ckpt  # the average of G, which the mapping loads
    assert len(pd.read_csv(run_dir / "train" / "losses.csv")) == v["epochs"]
    assert (run_dir / "train" / "checkpoints" / f"epoch_{v['epochs']:03d}.pt").exists()
    assert not (run_dir / "figures" / "02_learning_rate_comparison.png").exists()
    # score: steps, lambda, reduction, restarts
    score = run_dir / "score"
    assert len(pd.read_csv(score / "mapping_history.csv")) == v["mapping_steps"] + 1
    slices = pd.read_csv(score / "slice_scores.csv", dtype={"subject": str})
    assert np.allclose(slices.A_raw, (1 - v["lam"]) * slices.R + v["lam"] * slices.D)
    assert slices.restart.max() < v["restarts"]
    subj = pd.read_csv(score / "subject_scores.csv", dtype={"subject": str}).set_index("subject")
    topk = slices.groupby("subject").A_raw.apply(lambda a: np.sort(a.to_numpy())[::-1][:v["topk"]].mean())
    assert np.allclose(subj.loc[topk.index, "score_raw"], topk)
    assert (run_dir / "score" / "encoder.pt").exists()  # mapping = encoder+iterative trains one
    # metrics: the residual maps it evaluated are the ones the score step made
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["residual"] == dict(kind=v["residual_kind"], median=v["median_filter"], erode=v["erode"])
    assert metrics["params"]["fpr_target"] == v["fpr_target"]
    assert metrics["pixel_percentile"] == v["pixel_percentile"]
    assert metrics["baseline"]["pixel_percentile"] == v["intensity_percentile"]
    assert metrics["params"]["n_bootstrap"] == v["n_bootstrap"]
    assert metrics["lesion_load"]["min_size"] == v["lesion_min_size"]
    assert metrics["recommended"]["name"] == v["recommended_score"]


def test_median_filter_changes_the_pixel_metrics(knob_run):
    """The knob that used to be lost: redo scoring with another median filter; metrics follow."""
    _, run_dir = knob_run
    before = json.loads((run_dir / "metrics.json").read_text())
    args = ["run", "--profile", "smoke", "--run-dir", str(run_dir), "--force",
            "--notebook", "03_scoring.ipynb", "--notebook", "05_metrics.ipynb"]
    for k, val in dict(VALUES, median_filter=5).items():
        args += ["-p", f"{k}={_arg(val)}"]
    assert main(args) == 0
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["residual"]["median"] == 5 and before["residual"]["median"] == 0
    assert after["pixel_auroc"] != before["pixel_auroc"]
    assert after["pixel_threshold"] != before["pixel_threshold"]
