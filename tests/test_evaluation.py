"""The intensity baseline, the residual-area detector and the evaluation step (notebook 05)."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from glio_kit.evaluate import evaluation as E
from glio_kit.evaluate import metrics as M
from glio_kit.detect.baseline import intensity_baseline
from glio_kit.run.config import EvaluateSettings, ScoreSettings
from glio_kit.errors import GlioKitError, RunFolderError
from glio_kit.data.slice_cache import SliceCache
from glio_kit.detect.residuals import residual_map
from glio_kit.run.rundir import RunDir


# ------------------------------------------------------------------ tiny cache helper
def write_tiny_cache(folder, n_val=4, n_test_healthy=4, n_test_tumor=4, n_train=2, n_slices=3, size=16,
                     seed=0, blob_value=0.9):
    """A SliceCache on disk: disc 'brains' with a bright 'ventricle'; tumour slices get a
    bright 4x4 blob (the lesion). Returns (cache, healthy) where ``healthy`` are the images
    without blobs (a perfect healthy reconstruction)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2) < (size / 2 - 1) ** 2
    groups = ([("train", 0)] * n_train + [("val", 0)] * n_val + [("test", 0)] * n_test_healthy
              + [("test", 1)] * n_test_tumor)
    imgs, healthy, brains, lesions, rows = [], [], [], [], []
    for s, (split, label) in enumerate(groups):
        for j in range(n_slices):
            img = np.full((size, size), -1.0, np.float32)
            img[disc] = -0.2 + 0.05 * rng.standard_normal(disc.sum())
            img[size // 2 - 1:size // 2 + 1, size // 2 - 1:size // 2 + 1] = 0.5  # ventricles: bright on T2
            les = np.zeros((size, size), np.uint8)
            clean = img.copy()
            if label == 1:
                les[4:8, 4:8] = 1
                img[les > 0] = blob_value
            imgs.append(img)
            healthy.append(clean)
            brains.append(disc.astype(np.uint8))
            lesions.append(les)
            rows.append(dict(row=len(rows), subject=f"S{s:02d}", label=label, split=split,
                             slice_index=10 + j, slice_pos=j, lesion_pixels=int(les.sum()),
                             brain_pixels=int(disc.sum()), image="", mask=""))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", np.stack(imgs))
    np.save(folder / "brain.npy", np.stack(brains))
    np.save(folder / "lesion.npy", np.stack(lesions))
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    (folder / "prep.json").write_text(json.dumps(dict(normalisation="sd", image_size=[size, size],
                                                      n_slices=n_slices)))
    return SliceCache(folder), np.stack(healthy)


def write_scored_run(path, flip=(), residual_kind="positive", median_filter=0, erode=1, **kw):
    """A run folder with a cache and the score step's outputs (its contract, see glio_kit.detect.scoring).

    The reconstruction is the healthy image plus noise; the slice score is the mean positive
    residual; ``residual_{abs,pos}.npy`` are made with the given residual settings, which the
    score record holds. ``flip`` = subject ids whose scores are swapped to look like the other
    class."""
    run = RunDir(path)
    cache, healthy = write_tiny_cache(run / "cache", **kw)
    for step in ("prep", "train"):
        run.claim(step, {"x": 1})
        run.mark_done(step)
    score = ScoreSettings(profile="smoke", residual_kind=residual_kind, median_filter=median_filter,
                          erode=erode)
    run.claim_step("score", score)
    rows = cache.rows(split="val").tolist() + cache.rows(split="test").tolist()
    rng = np.random.default_rng(1)
    recon = (healthy[rows] + 0.02 * rng.standard_normal(healthy[rows].shape)).clip(-1, 1).astype(np.float32)
    (run / "score").mkdir(exist_ok=True)
    np.save(run / "score" / "recon.npy", recon)
    images, brain = np.asarray(cache.images[rows]), np.asarray(cache.brain[rows])
    for kind, name in (("absolute", "residual_abs.npy"), ("positive", "residual_pos.npy")):
        np.save(run / "score" / name, residual_map(images, recon, brain, kind, median_filter, erode))
    idx = cache.index.iloc[rows]
    a_raw = np.maximum(images - recon, 0).mean(axis=(1, 2))
    sl = pd.DataFrame(dict(row=rows, k=np.arange(len(rows)), subject=idx.subject.values,
                           label=idx.label.values, split=idx.split.values, slice_index=idx.slice_index.values,
                           R=a_raw, D=a_raw, A_raw=a_raw,
                           lesion_pixels=np.asarray(cache.lesion[rows]).sum(axis=(1, 2))))
    sl["A"] = (sl.A_raw - sl.A_raw.min()) / (sl.A_raw.max() - sl.A_raw.min())
    subj = sl.groupby("subject", sort=False).agg(label=("label", "first"), split=("split", "first"),
                                                  score=("A", "mean")).reset_index()
    for s in flip:
        lab = subj.loc[subj.subject == s, "label"].item()
        subj.loc[subj.subject == s, "score"] = 0.0 if lab == 1 else 1.0
    sl.to_csv(run / "score" / "slice_scores.csv", index=False)
    subj.to_csv(run / "score" / "subject_scores.csv", index=False)
    subj[subj.split == "test"][["subject", "label", "score"]].to_csv(run / "subjects.csv", index=False)
    run.mark_done("score")
    return run, cache


S = EvaluateSettings(profile="smoke", fpr_target=0.05, pixel_percentile=99.0, n_bootstrap=200, seed=0)


# -------------------------------------------------------------------- baseline
def test_intensity_baseline_finds_bright_blob(tmp_path):
    cache, _ = write_tiny_cache(tmp_path / "cache")
    out = intensity_baseline(cache, erode=1, percentile=99.0, fpr=0.05)
    subj = out["subject_scores"]
    test = subj[subj.split == "test"]
    assert roc_auc_score(test.label, test.score) == 1.0
    m = M.subject_metrics(test.label, test.score, out["threshold"])
    assert m["confusion"]["tp"] == 4 and m["confusion"]["fp"] == 0
    assert out["threshold"] == M.threshold_at_fpr(subj[subj.split == "val"].score, 0.05)
    assert 0.4 < out["pixel_threshold"] + 0 < 2.0  # at least the bright ventricles (0.5 + 1)
    assert set(out["slice_scores"].split) == {"val", "test"}  # train slices are never scored


def test_intensity_baseline_misses_a_dim_lesion(tmp_path):
    """A lesion no brighter than the ventricles is below the healthy percentile: no detection."""
    cache, _ = write_tiny_cache(tmp_path / "cache", blob_value=-0.2)
    out = intensity_baseline(cache)
    test = out["subject_scores"][out["subject_scores"].split == "test"]
    assert M.subject_metrics(test.label, test.score, out["threshold"])["confusion"]["tp"] == 0


# ------------------------------------------------------------------ the metrics step
REQUIRED = {"subject_auc", "accuracy", "precision", "recall", "specificity", "f1", "threshold", "confusion",
            "n_test_healthy", "n_test_tumor", "ci", "pixel_dice", "pixel_dice_per_subject", "pixel_auprc",
            "pixel_auroc", "pixel_threshold", "dice_upper_bound_test_tuned", "baseline", "paper"}


def test_evaluate_run_end_to_end(tmp_path):
    run, cache = write_scored_run(tmp_path / "run", flip=("S08",))  # S08: a healthy test subject scored high
    res = E.evaluate_run(run, S)
    assert REQUIRED <= set(res)
    assert REQUIRED - {"paper", "baseline"} <= set(res["baseline"])
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["confusion"] == res["confusion"] and set(on_disk["confusion"]) == {"tn", "fp", "fn", "tp"}
    assert res["n_test_healthy"] == 4 and res["n_test_tumor"] == 4
    assert res["confusion"] == dict(tn=3, fp=1, fn=0, tp=4)
    # threshold from healthy validation subjects only
    subj = pd.read_csv(run / "score" / "subject_scores.csv", dtype={"subject": str})
    assert res["threshold"] == pytest.approx(M.threshold_at_fpr(subj[subj.split == "val"].score, 0.05))
    assert set(res["ci"]) == set(M.METRIC_NAMES) and all(len(v) == 2 for v in res["ci"].values())
    assert res["pixel_dice"] > 0.5 and res["pixel_auroc"] > 0.9
    assert res["dice_upper_bound_test_tuned"] >= res["pixel_dice"]
    assert res["baseline"]["subject_auc"] == 1.0
    assert res["paper"]["consistency"]["matches"]["precision"] is False
    md = (run / "metrics.md").read_text()
    assert "| kit: paper's score (95% CI) |" in md and "| baseline (95% CI) |" in md
    assert "| kit: lesion load = RECOMMENDED (95% CI) |" in md
    assert "TEST-TUNED" in md and "Site-shift control" in md
    # the residual-area detector: calibrated on validation, scored on the same subjects
    area = res["residual_area"]
    assert area["n_test_healthy"] == 4 and area["n_test_tumor"] == 4 and 0 <= area["subject_auc"] <= 1
    # step 05 writes its own folder, never into the score step's
    assert (run / "detectors" / "residual_area_slice_scores.csv").exists()
    assert sorted(p.name for p in (run / "score").iterdir()) == ["recon.npy", "residual_abs.npy",
                                                                 "residual_pos.npy", "slice_scores.csv",
                                                                 "subject_scores.csv"]
    rec = RunDir(run.path).record("metrics")
    assert rec["status"] == "done" and rec["settings"]["fpr_target"] == S.fpr_target
    # done: a second call reads it back; other settings need overwrite
    assert E.evaluate_run(run, S)["accuracy"] == res["accuracy"]
    with pytest.raises(RunFolderError):
        E.evaluate_run(run, S.replace(fpr_target=0.2))
    wrong = E.misclassified(run)
    assert wrong.subject.tolist() == ["S08"] and wrong.error.tolist() == ["false positive"]


def test_metric_figures(tmp_path):
    import matplotlib.pyplot as plt

    from glio_kit.figures.metrics import metric_figures

    run, _ = write_scored_run(tmp_path / "run", flip=("S08",))
    figs = metric_figures(run, E.evaluate_run(run, S))
    assert {"roc", "confusion", "score_distributions", "baseline_score_distributions",
            "pixel_comparison"} <= set(figs)
    # the ROC legend sits beside the axes, never over the curves
    ax = figs["roc"].axes[0]
    figs["roc"].canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1
    for f in figs.values():
        plt.close(f)


def test_score_distribution_tick_labels_do_not_overlap():
    """The baseline's subject scores are small fractions (e.g. 0.0001-0.0009): their x tick
    labels must stay apart."""
    import matplotlib.pyplot as plt

    from glio_kit.figures.metrics import plot_subject_score_distributions

    rng = np.random.default_rng(0)
    subj = pd.DataFrame(dict(subject=[f"S{i}" for i in range(66)], label=[0] * 39 + [1] * 27,
                             split=["val"] * 12 + ["test"] * 54,
                             score=np.r_[rng.uniform(1e-4, 5e-4, 39), rng.uniform(1e-4, 9e-4, 27)]))
    fig = plot_subject_score_distributions(subj, 5e-4)
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(boxes) >= 3 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))
    plt.close(fig)


def test_evaluation_reads_the_saved_residual_maps(tmp_path):
    """The pixel metrics are those of the maps the score step saved, made with the settings
    in its record; the evaluation has no residual settings of its own."""
    runs = {med: write_scored_run(tmp_path / f"median{med}", median_filter=med)[0] for med in (0, 3)}
    res = {med: E.evaluate_run(run, S) for med, run in runs.items()}
    for med in (0, 3):
        assert res[med]["residual"] == dict(kind="positive", median=med, erode=1)
        assert res[med]["params"]["median_filter"] == med
        assert res[med]["params"]["residual_kind"] == "positive"
    assert res[0]["pixel_threshold"] != res[3]["pixel_threshold"]
    assert res[0]["pixel_auroc"] != res[3]["pixel_auroc"]
    # the subject-level numbers of the paper's score do not depend on the maps; the baselines'
    # maps are median-filtered like the residual maps (one harness), so theirs do
    assert res[0]["subject_auc"] == res[3]["subject_auc"]
    assert res[0]["baseline"]["pixel_auroc"] != res[3]["baseline"]["pixel_auroc"]
    # nothing is recomputed: the saved maps are what is scored
    run = runs[0]
    np.save(run / "score" / "residual_pos.npy", np.zeros_like(np.load(run / "score" / "residual_pos.npy")))
    (run / "metrics.json").unlink()  # the same settings: read back unless it is gone
    zeroed = E.evaluate_run(run, S)
    assert zeroed["pixel_dice"] == 0.0 and zeroed["pixel_auroc"] == 0.5


def test_evaluation_uses_the_recorded_residual_kind_and_erosion(tmp_path):
    run, _ = write_scored_run(tmp_path / "run", residual_kind="absolute", median_filter=3, erode=2)
    res = E.evaluate_run(run, S)
    assert res["residual"] == dict(kind="absolute", median=3, erode=2)
    assert res["residual_area"]["description"].startswith("DCGAN absolute residual")
    assert "|x - G(z)|" in (run / "metrics.md").read_text()
    base = pd.read_csv(run / "detectors" / "baseline_slice_scores.csv")
    assert len(base) == len(pd.read_csv(run / "score" / "slice_scores.csv"))


def test_evaluate_run_without_masks_or_scores(tmp_path):
    run, cache = write_scored_run(tmp_path / "run")
    np.save(run / "cache" / "lesion.npy", np.zeros_like(np.asarray(cache.lesion)))
    res = E.evaluate_run(run, S)
    assert res["has_masks"] is False and "pixel_dice" not in res
    empty = RunDir(tmp_path / "empty")
    empty.claim("score", {})
    empty.mark_done("score")
    with pytest.raises(GlioKitError):
        E.evaluate_run(empty, S)


def test_metrics_needs_score_step(tmp_path):
    with pytest.raises(RunFolderError, match="score"):
        E.evaluate_run(RunDir(tmp_path / "r"), S)


def test_lesion_load_recommended_score_and_detector_scores(tmp_path):
    run, cache = write_scored_run(tmp_path / "run")
    res = E.evaluate_run(run, S)
    load = res["lesion_load"]
    assert load["n_test_tumor"] == 4 and load["min_size"] == S.lesion_min_size
    saved = E.load_detector_scores(run, "lesion_load")
    test = saved[saved.split == "test"]
    # the tumour subjects' blobs are found as objects; the healthy ones have none
    assert (test[test.label == 1].score > 0).all() and load["subject_auc"] == 1.0
    assert res["recommended"]["name"] == "lesion_load"
    assert res["recommended"]["subject_auc"] == load["subject_auc"]
    assert res["recommended"]["threshold"] == load["threshold"]
    # detectors/subject_scores.csv: one column per detector of the table; subjects.csv stays the score step's
    table = pd.read_csv(run / "detectors" / "subject_scores.csv", dtype={"subject": str})
    assert list(table.columns) == ["subject", "label", "split", "paper", "residual_area", "lesion_load",
                                   "baseline", "atlas_area", "atlas_lesion_load"]
    assert np.allclose(table.set_index("subject").lesion_load, saved.set_index("subject").score)
    assert list(pd.read_csv(run / "subjects.csv").columns) == ["subject", "label", "score"]
    # choosing another recommended score changes which block is repeated
    run2, _ = write_scored_run(tmp_path / "run2")
    res2 = E.evaluate_run(run2, S.replace(recommended_score="paper"))
    assert res2["recommended"]["name"] == "paper"
    assert res2["recommended"]["subject_auc"] == res2["subject_auc"]
    assert "| kit: paper's score = RECOMMENDED (95% CI) |" in (run2 / "metrics.md").read_text()


def test_site_shift_control():
    """Lesion-free slices of tumour subjects against healthy test slices: 0.5 when they look
    alike, 1.0 when every lesion-free tumour slice scores above every healthy one."""
    rng = np.random.default_rng(0)
    n = 40
    slices = pd.DataFrame(dict(split="test", label=np.r_[np.ones(n), np.zeros(n)].astype(int),
                               lesion_pixels=np.r_[np.zeros(n // 2), np.full(n // 2, 30), np.zeros(n)],
                               A=rng.uniform(size=2 * n), k=np.arange(2 * n)))
    same = E.site_shift(slices)
    assert same["n_lesion_free_tumour_slices"] == n // 2 and same["n_healthy_test_slices"] == n
    assert 0.3 < same["auc_slice_A"] < 0.7
    shifted = slices.copy()
    shifted.loc[(shifted.label == 1) & (shifted.lesion_pixels == 0), "A"] += 1.0  # a "site" offset
    assert E.site_shift(shifted)["auc_slice_A"] == 1.0
    maps = np.zeros((2 * n, 4, 4))
    maps[: n // 2] = 1.0
    assert E.site_shift(shifted, maps)["auc_residual_mean"] == 1.0
    assert E.site_shift(slices[slices.label == 0])["auc_slice_A"] is None  # nothing to compare


def test_notes_count_validation_subjects_in_words():
    from glio_kit.evaluate.markdown import _notes

    assert "on 1 healthy validation subject at" in " ".join(_notes({"n_val_healthy": 1, "fpr_target": 0.05}))
    assert "on 12 healthy validation subjects at" in " ".join(_notes({"n_val_healthy": 12}))


def test_metrics_md_shows_validation_specificity_and_the_rules_guarantee(tmp_path):
    run, _ = write_scored_run(tmp_path / "run")  # 4 healthy validation subjects
    res = E.evaluate_run(run, S)
    assert res["expected_fpr"] == pytest.approx(1 / 5) and res["ci_resamples_validation"] is True
    assert res["val_specificity"] == pytest.approx(1 - res["val_fpr"])
    md = (run / "metrics.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| expected share of new healthy"))
    assert row.split(" | ")[2] == "0.200"  # 1/(4+1): 4 validation subjects cannot mean 5 %
    assert any(ln.startswith("| specificity on healthy validation") for ln in md.splitlines())
