"""Stage 6, quality control: what a person should look at, one picture per subject, one page for all.

Flags (the ``warnings`` column of ``prepare.csv``):

- brain volume outside :data:`ADULT_BRAIN_ML` (HD-BET's mask holds the brain and the CSF around
  it, roughly the intracranial volume: 1.1-1.9 l in adults; Colin27 gives 1.93 l and the MNI152
  template's brain mask 1.9-2.0 l, hence the generous range); far outside means the extraction
  took scalp, or lost part of the brain;
- poor registration: the brain mask carried onto the template overlaps the template's brain mask
  by a Dice below :data:`MIN_REGISTRATION_DICE`;
- the brain mask touches the field of view's edge: the scan may have cut the brain off.
"""
from __future__ import annotations

import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: QC pictures are written by workers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage  # noqa: E402

from matplotlib.colors import ListedColormap  # noqa: E402

from ...atomic import write_bytes, write_text  # noqa: E402

__all__ = ["ADULT_BRAIN_ML", "COLUMNS", "MIN_REGISTRATION_DICE", "flags", "qc_figure", "touches_edge",
           "write_overview", "write_table"]

ADULT_BRAIN_ML = (850.0, 2100.0)
MIN_REGISTRATION_DICE = 0.85
_CYAN = ListedColormap(["#00e5ff"])  # the template's edges
#: prepare.csv's columns, in order.
COLUMNS = ["subject", "status", "brain_ml", "registration_dice", "registration_mi", "warnings",
           "brain_mask", "native_voxel_mm", "seconds", "image", "seg", "transform", "qc"]


def flags(brain_ml: float, registration_dice: float, touches_edge: bool) -> list:
    """The warnings for one subject (empty when nothing needs a look).

    Parameters
    ----------
    brain_ml : float
        Brain mask volume in ml.
    registration_dice : float
        Dice of the carried mask with the template's brain mask.
    touches_edge : bool
        Whether the mask reaches a face of the scan's field of view.

    Returns
    -------
    warnings : list of str
    """
    out = []
    lo, hi = ADULT_BRAIN_ML
    if not lo <= brain_ml <= hi:
        out.append(f"brain volume {brain_ml:.0f} ml outside the adult range {lo:.0f}-{hi:.0f} ml")
    if registration_dice < MIN_REGISTRATION_DICE:
        out.append(f"poor registration (mask Dice with the template {registration_dice:.2f} "
                   f"< {MIN_REGISTRATION_DICE})")
    if touches_edge:
        out.append("brain mask touches the field of view's edge (brain cut off?)")
    return out


def touches_edge(mask: np.ndarray) -> bool:
    """True when the mask has a voxel on any face of its volume."""
    m = np.asarray(mask, bool)
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
                or m[:, :, 0].any() or m[:, :, -1].any())


def _edges(template: np.ndarray) -> np.ndarray:
    """The template's tissue boundaries: strong gradients of the smoothed template (bool)."""
    g = ndimage.gaussian_gradient_magnitude(template.astype(np.float32), sigma=1.0)
    return g > np.percentile(g[template > 0], 90)


def qc_figure(image: np.ndarray, mask: np.ndarray, template: np.ndarray, path, title: str = "") -> Path:
    """Write the QC picture: axial, coronal and sagittal slices through the brain's centre.

    Parameters
    ----------
    image : ndarray of shape (197, 233, 189)
        The prepared scan on the template grid (RAS).
    mask : ndarray of shape (197, 233, 189), bool
        Its brain mask (drawn as a red contour).
    template : ndarray of shape (197, 233, 189)
        The registration template (its edges drawn in cyan: they should follow the scan's anatomy).
    path : str or Path
        The PNG to write (atomically).
    title : str
        Shown above the slices (subject and warnings).

    Returns
    -------
    path : Path
    """
    centre = [int(round(c)) for c in ndimage.center_of_mass(mask)] if mask.any() else \
        [s // 2 for s in image.shape]
    edges = _edges(template)
    vmax = float(np.percentile(image[mask], 99)) if mask.any() else float(image.max() or 1)
    views = [("axial", lambda a: a[:, :, centre[2]]), ("coronal", lambda a: a[:, centre[1], :]),
             ("sagittal", lambda a: a[centre[0], :, :])]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax, (name, cut) in zip(axes, views):
        ax.imshow(cut(image).T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        ax.imshow(np.ma.masked_where(~cut(edges).T, cut(edges).T), cmap=_CYAN, origin="lower",
                  alpha=0.55, vmin=0, vmax=1)
        ax.contour(cut(mask).T.astype(float), levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def write_table(out, rows: list) -> Path:
    """Write ``out/prepare.csv`` (one row per subject, :data:`COLUMNS`), atomically."""
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return write_text(Path(out) / "prepare.csv", table.to_csv(index=False))


def write_overview(out, rows: list) -> Path:
    """Write ``out/prepare_qc.html``: every subject's status, figures and QC picture on one page
    (flagged and failed subjects first)."""
    order = sorted(rows, key=lambda r: (r.get("status") not in ("failed",), not r.get("warnings"),
                                        r["subject"]))
    parts = ["<!doctype html><meta charset='utf-8'><title>glio-kit prepare: QC</title>",
             "<style>body{font-family:sans-serif;margin:1em} .warn{color:#b00} td{vertical-align:top;"
             "padding:4px 8px;border-bottom:1px solid #ddd} img{max-width:640px}</style>",
             f"<h1>glio-kit prepare: {len(rows)} subjects</h1>",
             "<p>Each picture: the prepared scan on the MNI152 template grid, the brain mask (red) and "
             "the template's edges (cyan). Check that the red contour holds the whole brain and no "
             "scalp, and that the cyan edges follow the scan's ventricles and outline.</p><table>",
             "<tr><th>subject</th><th>status</th><th>brain ml</th><th>reg. Dice</th><th>warnings</th>"
             "<th>QC</th></tr>"]
    for r in order:
        warn = html.escape(str(r.get("warnings") or ""))
        qc = r.get("qc")
        pic = f"<img src='{html.escape(qc)}' loading='lazy'>" if qc else ""
        ml = f"{r['brain_ml']:.0f}" if isinstance(r.get("brain_ml"), (int, float)) else ""
        dice = f"{r['registration_dice']:.3f}" if isinstance(r.get("registration_dice"), (int, float)) else ""
        parts.append(f"<tr><td>{html.escape(r['subject'])}</td><td>{html.escape(str(r['status']))}</td>"
                     f"<td>{ml}</td><td>{dice}</td><td class='warn'>{warn}</td><td>{pic}</td></tr>")
    parts.append("</table>")
    return write_text(Path(out) / "prepare_qc.html", "\n".join(parts))
