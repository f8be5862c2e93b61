"""The summary of a batch: ``summary.csv``, ``summary.md`` and ``summary.png`` in its folder."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_text
from ..detect import detectors as D
from .config import SMOKE_NOTE as CONFIG_SMOKE_NOTE


def value_str(v) -> str:
    """A grid value as text: lists joined with ``x`` (``64x64``), booleans in lower case."""
    if isinstance(v, (list, tuple)):
        return "x".join(value_str(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def error_line(err: BaseException) -> str:
    """First informative line of an error (papermill's: ``ename: evalue``)."""
    if getattr(err, "ename", None):
        return (f"{err.ename}: "
                f"{str(getattr(err, 'evalue', '')).splitlines()[0] if getattr(err, 'evalue', '') else ''}")
    for line in str(err).splitlines():
        if line.strip() and set(line.strip()) != {"-"}:
            return f"{type(err).__name__}: {line.strip()}"
    return type(err).__name__


SUMMARY_METRICS = ("subject_auc", "accuracy", "precision", "recall", "pixel_dice")
#: The summary's timing columns, kept for a run that is finished when the batch starts again.
TIMINGS = ("seconds", "prefix_seconds")


def previous_timings(out) -> dict:
    """``{run: {"seconds": .., "prefix_seconds": ..}}`` from the batch folder's last
    ``summary.csv`` (empty when there is none or it cannot be read)."""
    try:
        old = pd.read_csv(Path(out) / "summary.csv")
    except (OSError, ValueError):
        return {}
    if "run" not in old or "seconds" not in old:
        return {}
    return {str(r["run"]): {k: float(r[k]) for k in TIMINGS if k in old and r[k] == r[k]}
            for _, r in old.iterrows()}


def other_detectors() -> list:
    """The detectors besides the paper's score (the top level of ``metrics.json``): each has a
    ``<name>_auc`` column in the summary."""
    return [d for d in D.DETECTORS.values() if d is not D.top_level()]


def summarise(out, runs: list[dict], status: dict, group_of: dict | None = None) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` in the batch folder ``out``.

    Parameters
    ----------
    out : path
        The batch folder (one run folder per grid point inside).
    runs : list of dict
        ``name`` and ``point`` (grid values) per run.
    status : dict
        Run name -> ``status``, ``seconds``, ``error`` (and ``prefix_seconds``).
    group_of : dict, optional
        Run name -> the shared-prefix group it belongs to.

    Returns
    -------
    DataFrame
        One row per run: grid values, :data:`SUMMARY_METRICS`, ``<detector>_auc`` for every
        detector besides the paper's score, CIs, timings, status.
    """
    out = Path(out)
    group_of = group_of or {}
    grid_names = list(dict.fromkeys(k for r in runs for k in r["point"]))
    rows = []
    for r in runs:
        st = status.get(r["name"], dict(status="not run", seconds=0.0, error=""))
        row = dict(run=r["name"], **{k: value_str(r["point"].get(k, ""))
                                     if isinstance(r["point"].get(k), (list, tuple))
                                     else r["point"].get(k, "") for k in grid_names})
        m = {}
        mfile = out / r["name"] / "metrics.json"
        if st["status"] in ("ok", "done earlier") and mfile.exists():
            m = json.loads(mfile.read_text())
        for k in SUMMARY_METRICS:
            row[k] = m.get(k)
        for det in other_detectors():
            row[f"{det.name}_auc"] = D.block(m, det).get("subject_auc")
        row["recommended_score"] = (m.get("recommended") or {}).get("name", "")
        ci = m.get("ci") or {}
        for k in ("subject_auc", "accuracy"):
            lo, hi = (ci.get(k) or [None, None])
            row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
        row["seconds"] = st.get("seconds", 0.0)
        row["prefix_seconds"] = st.get("prefix_seconds", 0.0)
        row["shared_prefix"] = group_of.get(r["name"], "")
        row["status"] = st["status"]
        row["error"] = st.get("error", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["out"] = str(out)
    with atomic_path(out / "summary.csv") as tmp:  # each summary file: the old one or the whole new one
        table.to_csv(tmp, index=False)
    batch = out / "batch.json"
    profile = json.loads(batch.read_text()).get("profile", "") if batch.exists() else ""
    write_text(out / "summary.md", summary_markdown(table, grid_names, profile))
    try:
        fig = summary_figure(table, profile)
        with atomic_path(out / "summary.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    except Exception as err:  # noqa: BLE001 - the tables matter more than the picture
        print(f"[batch] summary.png not written: {error_line(err)}")
    return table


#: Above a smoke batch's table: its equal, meaningless numbers are not a bug.
SMOKE_NOTE = f"**Note:** {CONFIG_SMOKE_NOTE}"


def summary_markdown(table: pd.DataFrame, grid_names: list[str], profile: str = "") -> str:
    """The summary table: grid values as given (``lam`` 0.1, not 0.100), metrics to 3 decimals."""
    def f(v):
        return ("–" if v is None or (isinstance(v, float) and v != v)
                else (f"{v:.3f}" if isinstance(v, float) else str(v)))

    def given(v):
        return "–" if v is None or (isinstance(v, float) and v != v) else value_str(v)

    others = [d.name for d in other_detectors()]
    top, rec = D.top_level(), recommended(table)
    mark = {d.name: (" = RECOMMENDED" if d.name == rec else "") for d in D.DETECTORS.values()}
    cols = ["run", *grid_names, f"subject AUC (95% CI; {top.column}{mark[top.name]})", "accuracy (95% CI)",
            "precision", "recall", "pixel Dice",
            *[f"{d.name} AUC ({d.column}{mark[d.name]})" for d in other_detectors()], "seconds", "status"]
    lines = [SMOKE_NOTE, ""] if profile == "smoke" else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        auc = f(r["subject_auc"]) + (f" ({f(r['subject_auc_lo'])}–{f(r['subject_auc_hi'])})"
                                     if r["subject_auc_lo"] is not None
                                     and r["subject_auc_lo"] == r["subject_auc_lo"] else "")
        acc = f(r["accuracy"]) + (f" ({f(r['accuracy_lo'])}–{f(r['accuracy_hi'])})"
                                  if r["accuracy_lo"] is not None
                                  and r["accuracy_lo"] == r["accuracy_lo"] else "")
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        vals = [r["run"], *[given(r[g]) for g in grid_names], auc, acc, f(r["precision"]), f(r["recall"]),
                f(r["pixel_dice"]), *[f(r.get(f"{name}_auc")) for name in others], f(float(r["seconds"])),
                status.replace("|", "/")]
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", f"Accuracy, precision, recall and pixel Dice are those of {top.column} (the paper's score, "
              f"{top.label}); each other column is the subject AUC of the detector it names "
              f"(glio_kit.detect.detectors)."]
    if rec:
        det = D.DETECTORS[rec]
        lines.append(f"The recommended score is {det.column} ({det.label}), chosen on development cohorts, "
                     f"never on these runs' test subjects.")
    return "\n".join(lines) + "\n"


def recommended(table: pd.DataFrame) -> str:
    """The detector every finished run of the table recommends (``metrics.json``'s
    ``recommended``), or "" when they differ or none says."""
    names = {n for n in table.get("recommended_score", pd.Series(dtype=str)).dropna() if n}
    return names.pop() if len(names) == 1 and next(iter(names)) in D.DETECTORS else ""


def summary_figure(table: pd.DataFrame, profile: str = ""):
    """Bars of subject AUC and accuracy per run with 95% CI whiskers (the paper's score), the
    other detectors' AUCs as markers in their colours, every one labelled and the recommended
    one marked; failed runs marked; a smoke batch says that its numbers mean nothing."""
    n = len(table)
    rec = recommended(table)

    def label(det):
        return det.label + (" (recommended)" if det.name == rec else "")

    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * n + 3), 3.8), sharey=True)
    x = np.arange(n)
    for ax, key, title in ((axes[0], "subject_auc", "subject AUC"), (axes[1], "accuracy", "accuracy")):
        vals = pd.to_numeric(table[key], errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(table[f"{key}_lo"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(table[f"{key}_hi"], errors="coerce").to_numpy(dtype=float)
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
        ax.bar(x, np.nan_to_num(vals), yerr=err, capsize=3, color=D.top_level().colour,
               label=label(D.top_level()))
        others = [d for d in other_detectors() if f"{d.name}_auc" in table]
        if key == "subject_auc":
            for det in others:
                b = pd.to_numeric(table[f"{det.name}_auc"], errors="coerce").to_numpy(dtype=float)
                ax.plot(x, b, "D", color=det.colour, label=label(det))
            ax.legend(fontsize=7, loc="lower right")
        for i, s in enumerate(table["status"]):
            if s not in ("ok", "done earlier"):
                ax.text(i, 0.05, s, rotation=90, ha="center", va="bottom", color="C3", fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)  # chance (AUC) / a coin on a balanced set
        ax.set_xticks(x, table["run"], rotation=40, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.05), title=title if key == "subject_auc" else f"{title} ({D.top_level().label})")
    fig.suptitle("Batch summary (test set; whiskers = 95% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    if profile == "smoke":
        fig.text(0.5, -0.02, textwrap.fill(f"Note: {CONFIG_SMOKE_NOTE}", 110), ha="center", va="top",
                 fontsize=7, color="C3")
    return fig
