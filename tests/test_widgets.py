"""The residual browser's logic: set the widget values and check what is drawn."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from glio_kit.run.config import get_config
from glio_kit.figures import residuals as figures
from glio_kit.data.preprocess import prepare
from glio_kit.detect.residuals import residual_map
from glio_kit.run.rundir import RunDir
from glio_kit.figures import widgets

MAPS = dict(median_filter=0, erode=0)  # the residual maps' settings of the stand-in scoring


@pytest.fixture
def scored_run(tmp_path, tiny_cohort):
    """A prepared run with a stand-in scoring output: G(z) = the input with lesions removed,
    recorded as a done ``score`` step with :data:`MAPS`."""
    run = RunDir(tmp_path / "run")
    s = get_config("smoke", n_slices=3, **MAPS)
    cache = prepare(run, s.prep, tiny_cohort, progress=False)
    rows = np.concatenate([cache.rows(split="val"), cache.rows(split="test")])
    x = np.asarray(cache.images[rows])
    les, brain = np.asarray(cache.lesion[rows]), np.asarray(cache.brain[rows])
    gz = np.where(les > 0, np.median(x[brain > 0]), x).astype(np.float32)  # a 'healthy' reconstruction
    sdir = run / "score"
    sdir.mkdir()
    np.save(sdir / "recon.npy", gz)
    np.save(sdir / "residual_abs.npy", residual_map(x, gz, brain, kind="absolute", median=0, erode=0))
    np.save(sdir / "residual_pos.npy", residual_map(x, gz, brain, kind="positive", median=0, erode=0))
    run.claim("score", s.score.identity(), settings=s.score.as_dict())
    run.mark_done("score")
    idx = cache.index.iloc[rows]
    A = np.abs(x - gz).mean(axis=(1, 2))
    sl = pd.DataFrame(dict(row=rows, k=np.arange(len(rows)), subject=idx.subject.values,
                           label=idx.label.values, split=idx.split.values, slice_index=idx.slice_index.values,
                           R=A, D=A, A_raw=A, A=A))
    sl.to_csv(sdir / "slice_scores.csv", index=False)
    su = sl.groupby("subject").agg(label=("label", "first"), split=("split", "first"),
                                   score=("A", "mean")).reset_index()
    su.to_csv(sdir / "subject_scores.csv", index=False)
    return run


def test_draw_overlays_and_threshold(scored_run):
    v = widgets.ResidualViewer(scored_run)
    tumour = [s for s in v.subjects() if v.slices_of(s).label.iloc[0] == 1][0]
    pos = v.default_slice(tumour)
    both = v.draw(tumour, pos, overlay="both", threshold=0.05)
    assert both["contour"] and both["flagged_pixels"] > 0
    assert len(both["fig"].axes) >= 3
    residual_only = v.draw(tumour, pos, overlay="residual", threshold=0.05)
    assert not residual_only["contour"]
    high = v.draw(tumour, pos, overlay="both", threshold=1.99)
    assert high["flagged_pixels"] < both["flagged_pixels"]
    healthy = [s for s in v.subjects() if v.slices_of(s).label.iloc[0] == 0][0]
    assert not v.draw(healthy, 0, overlay="ground truth")["contour"]  # no lesion, no contour
    with pytest.raises(ValueError, match="overlay"):
        v.draw(tumour, pos, overlay="heatmap")


def test_subjects_ordered_tumours_first(scored_run):
    v = widgets.ResidualViewer(scored_run)
    labels = [v.slices_of(s).label.iloc[0] for s in v.subjects()]
    assert labels == sorted(labels, reverse=True)


def test_browser_follows_the_widgets(scored_run):
    v = widgets.ResidualViewer(scored_run)
    ui, state = widgets.browser(v)
    c = ui.controls
    assert state.last["subject"] == c["subject"].value
    other = c["subject"].options[-1]
    c["subject"].value = other
    assert state.last["subject"] == other and c["slice"].max == len(v.slices_of(other)) - 1
    c["slice"].value = 0
    assert state.last["pos"] == 0
    c["overlay"].value = "ground truth"
    assert state.last["overlay"] == "ground truth"
    c["threshold"].value = 0.5
    assert state.last["threshold"] == 0.5 and state.error == ""


def test_callback_errors_are_shown(scored_run, monkeypatch):
    v = widgets.ResidualViewer(scored_run)
    ui, state = widgets.browser(v)

    def broken(*a, **k):
        raise RuntimeError("residual file unreadable")

    monkeypatch.setattr(v, "draw", broken)
    ui.controls["threshold"].value = 0.3
    assert "residual file unreadable" in state.error


def test_viewer_reads_the_recorded_settings(scored_run):
    """The viewer shows the saved maps of the recorded residual_kind unless told otherwise."""
    v = widgets.ResidualViewer(scored_run)
    assert v.settings.median_filter == MAPS["median_filter"] and v.settings.erode == MAPS["erode"]
    tumour = v.subjects()[0]
    pos = v.default_slice(tumour)
    k = int(v.slices_of(tumour).iloc[pos].k)
    recorded = v.settings.residual_kind
    other = "absolute" if recorded == "positive" else "positive"
    assert np.array_equal(v.panels(tumour, pos)["residual"], v.residual[recorded][k])
    assert np.array_equal(v.panels(tumour, pos, other)["residual"], v.residual[other][k])
    assert v.display_max(recorded) > 0


def test_paper_figures_4_and_5(scored_run):
    v = widgets.ResidualViewer(scored_run)
    for s in (v.subjects()[0], v.subjects()[-1]):
        fig = figures.figure_input_generated_difference(v, s, n=3)
        assert len(fig.axes) == 9


def test_misclassified_figure(scored_run):
    v = widgets.ResidualViewer(scored_run)
    wrong = pd.DataFrame(dict(subject=v.subjects()[:2], error=["FN", "FP"], score=[0.4, 0.6],
                              has_wmh=[False, True]))
    fig = figures.plot_misclassified(v, wrong)
    assert len(fig.axes) == 6


def test_overlay_colours_match_the_notebook_text(scored_run):
    """Notebook 04 says: thresholded residual yellow, ground truth red (figures/style.py)."""
    from matplotlib.colors import to_rgba

    from glio_kit.figures.style import LESION_COLOUR, RESIDUAL_COLOUR

    assert (RESIDUAL_COLOUR, LESION_COLOUR) == ("yellow", "red")
    v = widgets.ResidualViewer(scored_run)
    tumour = v.subjects()[0]
    fig = v.draw(tumour, v.default_slice(tumour), overlay="both", threshold=0.05)["fig"]
    ax = fig.axes[0]
    overlay = ax.images[1]  # above the grey input
    assert overlay.cmap(1.0) == to_rgba(RESIDUAL_COLOUR)
    contour_colours = {tuple(c) for coll in ax.collections for c in coll.get_edgecolor()}
    assert contour_colours == {to_rgba(LESION_COLOUR)}
    assert "yellow: residual > 0.05, red: ground truth" in fig._suptitle.get_text()


def test_threshold_slider_in_generator_units_and_wide_enough(scored_run):
    ui, _ = widgets.browser(widgets.ResidualViewer(scored_run))
    thr = ui.controls["threshold"]
    assert (thr.min, thr.max) == (0.0, 2.0)  # residual maps are in generator units 0..2
    assert thr.layout.min_width == "300px"


def test_opens_on_a_slice_whose_residual_shows(scored_run):
    v = widgets.ResidualViewer(scored_run)
    tumour = v.subjects()[0]
    df = v.slices_of(tumour)
    kind = v.settings.residual_kind
    top = int(np.argmax(df.A.to_numpy()))
    v.display_max(kind)  # the colour scale is fixed before the map is blanked
    v.residual[kind] = v.residual[kind].copy()
    v.residual[kind][int(df.iloc[top].k)] = 0.0  # the most anomalous slice's map is all black
    pos = v.default_slice(tumour)
    assert pos != top and v.panels(tumour, pos)["residual"].max() > 0
    for k in df.k:  # nothing shows anywhere: the highest score
        v.residual[kind][int(k)] = 0.0
    assert v.default_slice(tumour) == top


def test_browser_output_keeps_a_snapshot(scored_run):
    """Opened without a kernel (or exported to HTML) the browser's output is a picture, not VBox(...)."""
    ui, state = widgets.browser(widgets.ResidualViewer(scored_run))
    bundle = ui._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # live in JupyterLab
    assert bundle["image/png"] and not bundle["text/plain"].startswith("VBox")
    assert state.subject in bundle["text/plain"]


def test_executed_notebook_keeps_the_browser_as_its_snapshot(scored_run, tmp_path):
    """What glio-kit run stores: the picture and its text, no live widget and no widget state."""
    import json

    from glio_kit.run.notebook import WIDGET_VIEW, freeze_widgets

    ui, _ = widgets.browser(widgets.ResidualViewer(scored_run))
    bundle = ui._repr_mimebundle_()
    nb = dict(cells=[dict(cell_type="code", id="a", metadata={}, source="ui", execution_count=1,
                          outputs=[dict(output_type="execute_result", execution_count=1, metadata={},
                                        data=bundle)])],
              metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
              nbformat=4, nbformat_minor=5)
    path = tmp_path / "04.ipynb"
    path.write_text(json.dumps(nb))
    assert freeze_widgets(path) == 1
    stored = json.loads(path.read_text())
    assert "widgets" not in stored["metadata"]
    data = stored["cells"][0]["outputs"][0]["data"]
    assert set(data) == {"image/png", "text/plain"} and WIDGET_VIEW not in data
    assert freeze_widgets(path) == 0  # nothing left to freeze
