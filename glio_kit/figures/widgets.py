"""The residual browser of notebook 04 and the data access behind it.

The browser's logic is plain functions and one small class, so pytest can set the widget
values and check what is drawn without a browser: :class:`ResidualViewer` reads what the
scoring step saved (``score/``: scores, G(z), the residual maps, the settings they were made
with) and :meth:`ResidualViewer.draw` draws one slice for a given state
(:mod:`glio_kit.figures.residuals` holds the drawing); :func:`browser` only wires ipywidgets
to it. Errors inside a callback are printed into the widget's output area, never swallowed.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..run.config import RESIDUAL_KINDS
from .residuals import OVERLAYS, draw_slice_panels, figure_input_generated_difference
from ..data.slice_cache import SliceCache
from ..detect.scoring import (load_reconstructions, load_residual_maps, load_slice_scores,
                              load_subject_scores, score_settings)
import base64
import io

__all__ = ["ResidualViewer", "BrowserState", "browser", "residual_figures", "OVERLAYS"]


class ResidualViewer:
    """Input, G(z) and residual maps of every scored slice of a run, as the scoring step saved them.

    Attributes
    ----------
    scores : DataFrame, ``score/slice_scores.csv`` (one row per scored slice, ``k`` indexes the
        arrays below).
    subject_scores : DataFrame, ``score/subject_scores.csv``.
    recon : (M, H, W) float32, G(z) in [-1, 1].
    residual : dict kind -> (M, H, W) float32 residual maps in generator units [0, 2]
        (``absolute`` = |x - G(z)|, ``positive`` = max(x - G(z), 0), in the eroded brain,
        median-filtered as the scoring step recorded).
    settings : the :class:`~glio_kit.run.config.ScoreSettings` the run was scored with; its
        ``residual_kind`` is the default ``kind`` of :meth:`panels` and :meth:`draw`.
    """

    def __init__(self, run):
        self.run = run
        self.cache = SliceCache(run / "cache")
        self.settings = score_settings(run)
        self.scores = load_slice_scores(run)
        self.subject_scores = load_subject_scores(run)
        self.recon = load_reconstructions(run)
        self.residual = {kind: load_residual_maps(run, kind) for kind in RESIDUAL_KINDS}
        self._display_max: dict[str, float] = {}

    def subjects(self, split: str = "test") -> list[str]:
        """Subject ids of ``split``: tumour subjects first, each group by descending score."""
        s = self.subject_scores[self.subject_scores.split == split]
        return s.sort_values(["label", "score"], ascending=[False, False]).subject.tolist()

    def slices_of(self, subject: str) -> pd.DataFrame:
        """The scored slices of ``subject`` (rows of ``slice_scores.csv``), inferior to superior."""
        df = self.scores[self.scores.subject == subject].sort_values("slice_index")
        if df.empty:
            raise KeyError(f"subject {subject!r} has no scored slices in {self.run.path}")
        return df

    def default_slice(self, subject: str, kind: str | None = None) -> int:
        """Position (0-based) of the subject's slice with the highest anomaly score among those
        whose residual map (``kind``; ``None``: the recorded one) shows something: a pixel above
        5% of the colour scale (:meth:`display_max`). The highest score overall when none does.
        So the browser never opens on an all-black residual."""
        df = self.slices_of(subject)
        a = df.A.to_numpy()
        kind = kind or self.settings.residual_kind
        maps = self.residual[kind]
        visible = np.array([float(maps[int(k)].max()) > 0.05 * self.display_max(kind) for k in df.k])
        return int(np.argmax(np.where(visible, a, -np.inf))) if visible.any() else int(np.argmax(a))

    def display_max(self, kind: str) -> float:
        """Upper end of the colour scale of ``kind`` maps: their 99.9th percentile over all
        scored slices (computed once)."""
        if kind not in self._display_max:
            self._display_max[kind] = max(1e-6, float(np.percentile(self.residual[kind], 99.9)))
        return self._display_max[kind]

    def panels(self, subject: str, pos: int, kind: str | None = None) -> dict:
        """Arrays for one slice: ``x``, ``gz``, ``residual`` (H, W) float32, ``lesion``,
        ``brain`` (H, W) and its scores ``A, R, D``, ``slice_index``, ``label``.
        kind : the residual map; ``None``: the recorded ``residual_kind``."""
        df = self.slices_of(subject)
        if not 0 <= pos < len(df):
            raise IndexError(f"slice {pos} out of range 0..{len(df) - 1} for {subject}")
        r = df.iloc[pos]
        k, row = int(r.k), int(r.row)
        return dict(x=np.asarray(self.cache.images[row]), gz=np.asarray(self.recon[k]),
                    residual=np.asarray(self.residual[kind or self.settings.residual_kind][k]),
                    lesion=np.asarray(self.cache.lesion[row]), brain=np.asarray(self.cache.brain[row]),
                    A=float(r.A), R=float(r.R), D=float(r.D), slice_index=int(r.slice_index),
                    label=int(r.label))

    def draw(self, subject: str, pos: int, overlay: str = "both", threshold: float = 0.2,
             kind: str | None = None, fig=None) -> dict:
        """Draw input | G(z) | residual with the chosen overlay; return what was drawn.

        overlay : one of :data:`OVERLAYS` — the thresholded residual, the ground-truth
            contour, both, or none — drawn on the input panel.
        threshold : residual threshold in generator units (0..2) for the overlay.
        kind : the residual map; ``None``: the recorded ``residual_kind``.
        Returns dict: ``subject, pos, slice_index, overlay, threshold, flagged_pixels`` (pixels
        above the threshold), ``contour`` (whether a ground-truth contour was drawn),
        ``A`` (the slice's anomaly score) and ``fig``.
        """
        if overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
        kind = kind or self.settings.residual_kind
        p = self.panels(subject, pos, kind)
        if fig is None:
            fig = plt.figure(figsize=(9, 3.3))
        drawn = draw_slice_panels(fig, p, subject, overlay, threshold, kind, self.display_max(kind))
        return dict(subject=subject, pos=pos, slice_index=p["slice_index"], overlay=overlay,
                    threshold=threshold, A=p["A"], fig=fig, **drawn)


@dataclass
class BrowserState:
    """What the browser shows now; ``last`` is what :meth:`ResidualViewer.draw` returned."""

    subject: str
    pos: int
    overlay: str = "both"
    threshold: float = 0.2
    last: dict = field(default_factory=dict)
    error: str = ""


#: The threshold slider: residual maps are in generator units, 0 (reproduced exactly) to 2.
THRESHOLD_RANGE = (0.0, 2.0)


def _snapshot_box(W):
    """A VBox whose output also carries a PNG of what it shows (``snapshot``, bytes) and a line
    of text: a notebook opened without a kernel, an untrusted one, or one exported to HTML shows
    that picture instead of ``VBox(...)``; JupyterLab with a kernel shows the live widget."""

    class SnapshotBox(W.VBox):
        snapshot: bytes = b""
        caption: str = "residual browser"

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs) or {}
            data["text/plain"] = f"{self.caption} (live with a kernel; the picture is a snapshot)"
            if self.snapshot:
                data["image/png"] = base64.b64encode(self.snapshot).decode("ascii")
            return data

    return SnapshotBox


def browser(viewer: ResidualViewer, split: str = "test", threshold: float = 0.2):
    """An ipywidgets browser: subject dropdown, slice slider, overlay choice, residual
    threshold slider (generator units, :data:`THRESHOLD_RANGE`). Returns ``(widget, state)``;
    ``state.last`` says what was drawn. The widget's output keeps a PNG of its first view."""
    # only the live browser needs ipywidgets and IPython; the viewer and the figures do not
    import ipywidgets as W
    from IPython.display import display

    subjects = viewer.subjects(split)
    if not subjects:
        raise ValueError(f"no scored subjects in split {split!r}")
    first = subjects[0]
    state = BrowserState(subject=first, pos=viewer.default_slice(first), threshold=threshold)
    wide = dict(min_width="300px", width="420px")  # never squeezed to a sliver in a narrow window
    w_subject = W.Dropdown(options=subjects, value=first, description="subject", layout=W.Layout(**wide))
    w_slice = W.IntSlider(min=0, max=len(viewer.slices_of(first)) - 1, value=state.pos, description="slice",
                          layout=W.Layout(**wide))
    w_overlay = W.ToggleButtons(options=list(OVERLAYS), value=state.overlay, description="overlay",
                                tooltips=["thresholded residual (yellow)", "ground truth (red)",
                                          "both", "the input alone"])
    w_thr = W.FloatSlider(min=THRESHOLD_RANGE[0], max=THRESHOLD_RANGE[1], step=0.01, value=threshold,
                          description="threshold", readout_format=".2f", layout=W.Layout(**wide),
                          tooltip="residual threshold in generator units (0-2)")
    units = W.Label("residual > threshold, in generator units (0 = reproduced exactly, 2 = full range)")
    out = W.Output()
    fig = plt.figure(figsize=(9, 3.3))
    plt.close(fig)  # drawn into the Output widget only

    def redraw(*_):
        state.subject, state.pos = w_subject.value, w_slice.value
        state.overlay, state.threshold = w_overlay.value, w_thr.value
        with out:
            out.clear_output(wait=True)
            try:
                state.last = viewer.draw(state.subject, state.pos, state.overlay, state.threshold, fig=fig)
                state.error = ""
                display(fig)
            except Exception:  # shown to the user, not swallowed
                state.error = traceback.format_exc()
                print(state.error)

    def on_subject(change):
        n = len(viewer.slices_of(change["new"]))
        with w_slice.hold_trait_notifications():
            w_slice.max = n - 1
            w_slice.value = min(viewer.default_slice(change["new"]), n - 1)
        redraw()

    w_subject.observe(on_subject, names="value")
    for w in (w_slice, w_overlay, w_thr):
        w.observe(redraw, names="value")
    redraw()
    row = W.Layout(flex_flow="row wrap")  # controls wrap to the next line instead of shrinking
    ui = _snapshot_box(W)([W.HBox([w_subject, w_slice], layout=row), W.HBox([w_overlay], layout=row),
                           W.HBox([w_thr, units], layout=row), out])
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90, bbox_inches="tight")
    ui.snapshot = png.getvalue()
    ui.caption = (f"residual browser: {state.subject}, slice z={state.last.get('slice_index', state.pos)}, "
                  f"overlay {state.overlay}")
    ui.controls = dict(subject=w_subject, slice=w_slice, overlay=w_overlay, threshold=w_thr, output=out)
    return ui, state


# -------------------------------------------------------------------------- the step
@dataclass
class ResidualFigures:
    """What step 04 drew: the viewer, the two subjects of Figures 4 and 5, and the figures
    (``name -> matplotlib Figure``, each saved as ``figures/<name>.png``)."""

    viewer: ResidualViewer
    healthy: str
    tumour: str
    figures: dict


def median_subject(viewer: ResidualViewer, label: int) -> str:
    """The test subject of ``label`` (0 healthy, 1 tumour) with the median subject score."""
    test = viewer.subject_scores[viewer.subject_scores.split == "test"].sort_values("score")
    names = test[test.label == label].subject.tolist()
    if not names:
        raise KeyError(f"no {'tumour' if label else 'healthy'} test subject in {viewer.run.path}")
    return names[len(names) // 2]


def residual_figures(run, settings) -> ResidualFigures:
    """Step 04: the paper's Figures 4 and 5 and a snapshot of the browser, saved; the step's record.

    Parameters
    ----------
    run : RunDir
        A run folder whose ``score`` step is done.
    settings : ViewSettings
        ``subject_healthy`` / ``subject_tumor`` (empty: the test subject with the median score),
        ``n_figure_slices``.

    Returns
    -------
    ResidualFigures
        Figures ``04_figure4_healthy``, ``04_figure5_tumour`` and ``04_browser_snapshot``.
    """
    # figures only, redrawn on every run: a newer scoring simply replaces this step's record
    run.claim_step("residuals", settings, overwrite=True)
    viewer = ResidualViewer(run)
    healthy = settings.subject_healthy or median_subject(viewer, 0)
    tumour = settings.subject_tumor or median_subject(viewer, 1)
    figures = {
        "04_figure4_healthy": figure_input_generated_difference(viewer, healthy, settings.n_figure_slices),
        "04_figure5_tumour": figure_input_generated_difference(viewer, tumour, settings.n_figure_slices),
        "04_browser_snapshot": viewer.draw(tumour, viewer.default_slice(tumour), overlay="both",
                                           threshold=0.2)["fig"],
    }
    for name, fig in figures.items():
        run.save_figure(fig, name)
        plt.close(fig)  # shown where the notebook asks for it, not all at once here
    run.mark_done("residuals", healthy=healthy, tumour=tumour)
    return ResidualFigures(viewer, healthy, tumour, figures)
