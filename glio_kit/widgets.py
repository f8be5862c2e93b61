"""The paper's Figures 4 and 5 and the residual browser of notebook 04.

The browser's logic is plain functions and one small class, so pytest can set the widget
values and check what is drawn without a browser: :class:`ResidualViewer` loads what the
scoring step wrote (``score/``) and :meth:`ResidualViewer.draw` draws one slice for a given
state; :func:`browser` only wires ipywidgets to it. Errors inside a callback are printed into
the widget's output area, never swallowed.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .preprocess import SliceCache
from .scoring import load_slice_scores, load_subject_scores

OVERLAYS = ("residual", "ground truth", "both", "none")
GREY = dict(cmap="gray", vmin=-1, vmax=1, interpolation="nearest")


class ResidualViewer:
    """Input, G(z) and residual of every scored slice of a run.

    Attributes
    ----------
    scores : DataFrame, ``score/slice_scores.csv`` (one row per scored slice, ``k`` indexes the
        arrays below).
    recon : (M, H, W) float32, G(z) in [-1, 1].
    residual : dict kind -> (M, H, W) float32 residual maps in generator units [0, 2]
        (``absolute`` = |x - G(z)|, ``positive`` = max(x - G(z), 0), brain-masked).
    """

    def __init__(self, run):
        self.run = run
        self.cache = SliceCache(run / "cache")
        sdir = run / "score"
        self.scores = load_slice_scores(run)
        self.recon = np.load(sdir / "recon.npy", mmap_mode="r")
        self.residual = {"positive": np.load(sdir / "residual_pos.npy", mmap_mode="r"),
                         "absolute": np.load(sdir / "residual_abs.npy", mmap_mode="r")}
        self.subject_scores = load_subject_scores(run)

    def subjects(self, split: str = "test") -> list[str]:
        """Subject ids of ``split``: tumour subjects first, each group by descending score."""
        s = self.subject_scores[self.subject_scores.split == split]
        return s.sort_values(["label", "score"], ascending=[False, False]).subject.tolist()

    def slices_of(self, subject: str) -> pd.DataFrame:
        df = self.scores[self.scores.subject == subject].sort_values("slice_index")
        if df.empty:
            raise KeyError(f"subject {subject!r} has no scored slices in {self.run.path}")
        return df

    def default_slice(self, subject: str) -> int:
        """Position (0-based) of the subject's slice with the highest anomaly score."""
        return int(np.argmax(self.slices_of(subject).A.to_numpy()))

    def panels(self, subject: str, pos: int, kind: str = "positive") -> dict:
        """Arrays for one slice: ``x``, ``gz``, ``residual``, ``lesion``, ``brain`` and its scores."""
        df = self.slices_of(subject)
        if not 0 <= pos < len(df):
            raise IndexError(f"slice {pos} out of range 0..{len(df) - 1} for {subject}")
        r = df.iloc[pos]
        k, row = int(r.k), int(r.row)
        return dict(x=np.asarray(self.cache.images[row]), gz=np.asarray(self.recon[k]),
                    residual=np.asarray(self.residual[kind][k]), lesion=np.asarray(self.cache.lesion[row]),
                    brain=np.asarray(self.cache.brain[row]), A=float(r.A), R=float(r.R), D=float(r.D),
                    slice_index=int(r.slice_index), label=int(r.label))

    def draw(self, subject: str, pos: int, overlay: str = "both", threshold: float = 0.2,
             kind: str = "positive", fig=None) -> dict:
        """Draw input | G(z) | residual with the chosen overlay; return what was drawn.

        overlay : one of :data:`OVERLAYS` — the thresholded residual (yellow), the ground-truth
            contour (red), both, or none — drawn on the input panel.
        threshold : residual threshold in generator units (0..2) for the overlay.
        Returns dict: ``subject, pos, slice_index, overlay, threshold, flagged_pixels`` (pixels
        above the threshold), ``contour`` (whether a ground-truth contour was drawn),
        ``A`` (the slice's anomaly score) and ``fig``.
        """
        if overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
        p = self.panels(subject, pos, kind)
        if fig is None:
            fig = plt.figure(figsize=(9, 3.3))
        fig.clf()
        axes = fig.subplots(1, 3)
        flagged = p["residual"] > threshold
        axes[0].imshow(p["x"], **GREY)
        contour = False
        if overlay in ("residual", "both") and flagged.any():
            axes[0].imshow(np.ma.masked_where(~flagged, flagged), cmap="autumn_r", alpha=0.6, vmin=0, vmax=1)
        if overlay in ("ground truth", "both") and p["lesion"].any():
            axes[0].contour(p["lesion"].astype(float), levels=[0.5], colors="red", linewidths=1)
            contour = True
        axes[1].imshow(p["gz"], **GREY)
        im = axes[2].imshow(p["residual"], cmap="inferno", vmin=0, vmax=max(1e-6, float(self.residual[kind].max())))
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        titles = (f"input x  ({'tumour' if p['label'] else 'healthy'})", "generated G(z)",
                  f"residual ({kind})  A={p['A']:.2f}")
        for ax, t in zip(axes, titles):
            ax.set_title(t, fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(f"{subject}  slice z={p['slice_index']}", fontsize=10)
        return dict(subject=subject, pos=pos, slice_index=p["slice_index"], overlay=overlay, threshold=threshold,
                    flagged_pixels=int(flagged.sum()), contour=contour, A=p["A"], fig=fig)


def figure_input_generated_difference(viewer: ResidualViewer, subject: str, n: int = 4, kind: str = "absolute"):
    """The paper's Figures 4 and 5: rows input (A), generated (B), difference (C) for ``n``
    slices of one subject, with the ground-truth contour where there is one.

    The slices are spread through the subject's scored slab, centred on the slice with the
    most lesion for tumour subjects. Returns a Figure.
    """
    df = viewer.slices_of(subject)
    lesion_px = np.array([viewer.cache.lesion[int(r)].sum() for r in df.row])
    centre = int(np.argmax(lesion_px)) if lesion_px.any() else len(df) // 2
    pos = np.unique(np.clip(centre + np.round(np.linspace(-(n - 1), n - 1, n)).astype(int), 0, len(df) - 1))
    vmax = max(1e-6, float(np.percentile(viewer.residual[kind], 99.9)))
    fig, axes = plt.subplots(3, len(pos), figsize=(2.1 * len(pos), 6.6), squeeze=False)
    for c, p in enumerate(pos):
        d = viewer.panels(subject, int(p), kind)
        for r, (img, style) in enumerate(((d["x"], GREY), (d["gz"], GREY),
                                          (d["residual"], dict(cmap="inferno", vmin=0, vmax=vmax)))):
            ax = axes[r, c]
            ax.imshow(img, **style)
            if d["lesion"].any() and r in (0, 2):
                ax.contour(d["lesion"].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, c].set_title(f"z={d['slice_index']}  A={d['A']:.2f}", fontsize=8)
    for r, name in enumerate(("A) input", "B) generated", "C) difference")):
        axes[r, 0].set_ylabel(name, fontsize=9)
    label = "HGG patient" if viewer.slices_of(subject).label.iloc[0] else "healthy subject"
    fig.suptitle(f"{subject} ({label}): input, generated and difference"
                 + ("; cyan = ground truth" if lesion_px.any() else ""), fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class BrowserState:
    """What the browser shows now; ``last`` is what :meth:`ResidualViewer.draw` returned."""

    subject: str
    pos: int
    overlay: str = "both"
    threshold: float = 0.2
    last: dict = field(default_factory=dict)
    error: str = ""


def browser(viewer: ResidualViewer, split: str = "test", threshold: float = 0.2):
    """An ipywidgets browser: subject dropdown, slice slider, overlay choice, residual
    threshold slider. Returns ``(widget, state)``; ``state.last`` says what was drawn."""
    import ipywidgets as W
    from IPython.display import display

    subjects = viewer.subjects(split)
    if not subjects:
        raise ValueError(f"no scored subjects in split {split!r}")
    first = subjects[0]
    state = BrowserState(subject=first, pos=viewer.default_slice(first), threshold=threshold)
    w_subject = W.Dropdown(options=subjects, value=first, description="subject")
    w_slice = W.IntSlider(min=0, max=len(viewer.slices_of(first)) - 1, value=state.pos, description="slice")
    w_overlay = W.ToggleButtons(options=list(OVERLAYS), value=state.overlay, description="overlay")
    w_thr = W.FloatSlider(min=0.0, max=1.0, step=0.01, value=threshold, description="threshold")
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
    ui = W.VBox([W.HBox([w_subject, w_slice]), W.HBox([w_overlay, w_thr]), out])
    ui.controls = dict(subject=w_subject, slice=w_slice, overlay=w_overlay, threshold=w_thr, output=out)
    return ui, state


def plot_misclassified(viewer: ResidualViewer, wrong: pd.DataFrame, n: int = 6, kind: str = "positive"):
    """For each misclassified test subject (up to ``n``): its most anomalous slice, G(z) and the
    residual, titled with the error type (and ``has_wmh`` where the cohort records it)."""
    wrong = wrong.head(n)
    fig, axes = plt.subplots(len(wrong), 3, figsize=(6.6, 2.3 * len(wrong)), squeeze=False)
    vmax = max(1e-6, float(np.percentile(viewer.residual[kind], 99.9)))
    for i, r in enumerate(wrong.itertuples()):
        d = viewer.panels(r.subject, viewer.default_slice(r.subject), kind)
        extra = " (WMH)" if getattr(r, "has_wmh", False) is True else ""
        for j, (img, style) in enumerate(((d["x"], GREY), (d["gz"], GREY),
                                          (d["residual"], dict(cmap="inferno", vmin=0, vmax=vmax)))):
            axes[i, j].imshow(img, **style)
            if d["lesion"].any() and j != 1:
                axes[i, j].contour(d["lesion"].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(f"{r.subject}\n{r.error}{extra}", fontsize=7)
        axes[i, 2].set_title(f"score {r.score:.3f}", fontsize=8)
    axes[0, 0].set_title("input (most anomalous slice)", fontsize=8)
    axes[0, 1].set_title("G(z)", fontsize=8)
    fig.tight_layout()
    return fig
