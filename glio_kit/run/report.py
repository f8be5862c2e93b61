"""One self-contained HTML page of a run: ``glio-kit report RUN_DIR`` (``glio-kit run`` writes it last).

``<run>/report.html`` holds the metrics table with its confidence intervals (``metrics.md``),
every figure of ``figures/`` embedded as a PNG (the residual browser as its saved snapshot),
each step's settings (``steps/*.json``), the timings (step records and executed notebooks) and
the versions and device each notebook ran with (``environment.json``, written by
:func:`glio_kit.run.notebook.setup`). It loads nothing from the network: styles inline, images as
``data:`` URIs, no scripts, so it opens offline and can be mailed to a reviewer.
"""
from __future__ import annotations

import base64
import html
import json
import platform
from datetime import datetime
from importlib import metadata
from pathlib import Path

import mistune

from .. import __version__
from ..atomic import write_text
from ..detect import detectors as D
from ..errors import GlioKitError
from ..progress import duration
from .config import SMOKE_NOTE
from .environment import MACHINE
from .steps import STEPS

#: The name of the page in the run folder.
REPORT = "report.html"
#: Captions of figures that are not plain plots.
CAPTIONS = {"04_browser_snapshot": "the residual browser of notebook 04 (a snapshot; live in the notebook)"}
PACKAGES = ("torch", "numpy", "scipy", "pandas", "matplotlib", "nibabel", "nilearn", "scikit-learn",
            "papermill", "ipywidgets")

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } code { background: #f4f4f4; padding: 0 3px; }
.note { background: #fff3cd; border: 1px solid #e0c36b; padding: 0.6em 1em; margin: 1em 0; }
.meta { color: #555; } figure { display: inline-block; margin: 0.6em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { color: #555; font-size: 12px; }
details { margin: 0.4em 0; }
"""


def write_report(run_dir, out=None) -> Path:
    """Write the page (default ``<run_dir>/report.html``) and return its path.

    run_dir : a run folder of ``glio-kit run`` (``run.json`` and ``steps/``); steps that have not
        run yet are listed as such, so a page can be written at any point.
    """
    run = Path(run_dir).expanduser().resolve()
    if not (run / "run.json").exists() or not (run / "steps").is_dir():
        raise GlioKitError(f"{run}: not a glio-kit run folder (no run.json and steps/); give the folder "
                           f"that `glio-kit run --run-dir` wrote")
    path = Path(out) if out else run / REPORT
    write_text(path, report_html(run))
    return path


def report_html(run: Path) -> str:
    """The page as one string (UTF-8 HTML, no external resources)."""
    records = {st.name: _json(run / "steps" / f"{st.name}.json") for st in STEPS}
    env = _json(run / "environment.json") or {}
    profile = next((r["settings"].get("profile") for r in records.values()
                    if r and isinstance(r.get("settings"), dict) and r["settings"].get("profile")), "?")
    parts = [f"<h1>glio-kit run: {_e(run.name)}</h1>",
             f"<p class='meta'>{_e(str(run))} &middot; profile <b>{_e(profile)}</b> &middot; page written "
             f"{datetime.now():%Y-%m-%d %H:%M} by glio-kit {__version__}</p>",
             "<p class='meta'>Reproduces: E. Aydogan Duman et al., Utilizing Deep Convolutional Generative "
             "Adversarial Networks for Automatic Segmentation of Gliomas: An Artificial Intelligence Study. "
             "Turkish Neurosurgery 32(1):16&ndash;21, 2022. doi:10.5137/1019-5149.JTN.29217-20.2</p>"]
    if profile == "smoke":
        parts.append(f"<p class='note'><b>Note:</b> {_e(SMOKE_NOTE)}</p>")
    parts += [_metrics(run), _detectors(run), _figures(run), _settings(records), _timings(run, records),
              _environment(env)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>glio-kit report: {_e(run.name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _metrics(run: Path) -> str:
    md = run / "metrics.md"
    if not md.exists():
        return "<h2>Metrics</h2><p>No <code>metrics.md</code> yet: notebook 05 has not run.</p>"
    return "<h2>Metrics (test set, 95% bootstrap CIs)</h2>\n" + mistune.html(md.read_text())


def _detectors(run: Path) -> str:
    """The table of subject scores: what each column of the metrics is, its subject AUC here."""
    result = _json(run / "metrics.json") or {}
    rec = (result.get("recommended") or {}).get("name")
    rows = "".join(f"<tr><td><code>{_e(d.name)}</code>{' (recommended)' if d.name == rec else ''}</td>"
                   f"<td>{_e(d.origin)}</td><td>{_e(d.what)}</td>"
                   f"<td>{_e(_auc(D.block(result, d).get('subject_auc')))}</td></tr>"
                   for d in D.DETECTORS.values())
    return ("<h2>Subject scores</h2><p class='meta'>The detectors of <code>glio_kit.detect.detectors</code>, "
            "one column each in the metrics above.</p><table><tr><th>detector</th><th>origin</th>"
            f"<th>what it is</th><th>subject AUC (test)</th></tr>{rows}</table>")


def _figures(run: Path) -> str:
    figs = sorted((run / "figures").glob("*.png"))
    if not figs:
        return "<h2>Figures</h2><p>No figures yet.</p>"
    out = ["<h2>Figures</h2>"]
    for st in STEPS:
        mine = [f for f in figs if f.name.startswith(st.notebook[:2] + "_")]
        if mine:
            out.append(f"<h3>{_e(st.notebook.removesuffix('.ipynb'))}</h3>")
        out += [_figure(f) for f in mine]
    out += [_figure(f) for f in figs if not any(f.name.startswith(s.notebook[:2] + "_") for s in STEPS)]
    return "\n".join(out)


def _figure(png: Path) -> str:
    """One figure, embedded as a ``data:`` URI, with its name (and what it is, where that says more)."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(png.stem, png.stem)
    return (f"<figure><img alt='{_e(png.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)} (<code>figures/{_e(png.name)}</code>)</figcaption></figure>")


def _settings(records: dict) -> str:
    out = ["<h2>Settings</h2><p class='meta'>Every knob each step ran with (<code>steps/&lt;step&gt;.json"
           "</code>); change one with <code>-p name=value</code> or the notebook's parameters cell.</p>"]
    for st in STEPS:
        rec = records[st.name]
        if not rec:
            out.append(f"<details><summary><b>{st.name}</b>: not run</summary></details>")
            continue
        rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(_value(v))}</td>"
                       f"<td>{_e(_help(st, k))}</td></tr>" for k, v in (rec.get("settings") or {}).items())
        status = _e(rec.get("status", "?"))
        out.append(f"<details open><summary><b>{st.name}</b> ({_e(st.notebook)}): {status}</summary>"
                   f"<table><tr><th>knob</th><th>value</th><th>what it is</th></tr>{rows}</table>"
                   "</details>")
    return "\n".join(out)


def _timings(run: Path, records: dict) -> str:
    rows, total = [], 0.0
    for st in STEPS:
        nb = _json(run / "notebooks" / st.notebook) or {}
        pm = (nb.get("metadata") or {}).get("papermill") or {}
        seconds = pm.get("duration")
        total += seconds or 0.0
        info = (records[st.name] or {}).get("info") or {}
        step_s = info.get("seconds")
        rows.append(f"<tr><td>{_e(st.notebook)}</td><td>{_e(_seconds(seconds))}</td>"
                    f"<td>{_e(_seconds(step_s))}</td><td>{_e(str(pm.get('end_time') or '–')[:19])}</td></tr>")
    return ("<h2>Timings</h2><table><tr><th>notebook</th><th>whole notebook</th><th>its main step</th>"
            "<th>finished</th></tr>" + "".join(rows)
            + f"<tr><th>total</th><th>{_e(_seconds(total))}</th><th></th><th></th></tr></table>")


def _environment(env: dict) -> str:
    out = ["<h2>Versions and device</h2>"]
    env = dict(env)
    machine = env.pop(MACHINE, None)
    if machine:
        cells = "".join(f"<tr><td>{_e(k)}</td><td>{_e(str(v))}</td></tr>" for k, v in machine.items())
        out.append(f"<p class='meta'>The machine and every scientific package "
                   f"(<code>environment.json</code>, <code>{MACHINE}</code>):</p>"
                   f"<table><tr><th>what</th><th>version</th></tr>{cells}</table>")
    if env:
        keys = sorted({k for v in env.values() for k in v if k != "step"})
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        rows = "".join(f"<tr><td>{_e(step)}</td>" + "".join(f"<td>{_e(str(v.get(k, '')))}</td>" for k in keys)
                       + "</tr>" for step, v in env.items())
        out.append(f"<p class='meta'>What each notebook ran with (<code>environment.json</code>):</p>"
                   f"<table><tr><th>step</th>{head}</tr>{rows}</table>")
    else:
        out.append("<p>No <code>environment.json</code> in this run folder (made by an older glio-kit).</p>")
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    out.append(f"<p class='meta'>This page was written with Python {platform.python_version()}, "
               f"glio-kit {__version__}, {_e(versions)}.</p>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- helpers
def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _help(step, name: str) -> str:
    try:
        return step.settings.help(name)
    except KeyError:
        return ""


def _auc(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _seconds(s) -> str:
    if s is None:
        return "–"
    return duration(float(s))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _e(text) -> str:
    return html.escape(str(text), quote=True)
