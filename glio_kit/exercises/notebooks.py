"""The student version of the notebooks, written from the instructor version.

One source, two versions: an instructor notebook holds each exercise as a working solution
cell tagged ``exercise:<name>`` (the instructor version runs it as it is). The student
version (:func:`exercise_notebook`) replaces each such cell by

1. a short markdown cell naming the exercise,
2. the skeleton: every function of the cell keeps its signature and docstring, its body
   becomes ``raise NotImplementedError`` (the cell's other lines, imports say, stay),
3. a check cell calling ``glio_kit.exercises.check_<function>`` for each function,
4. a hint cell (collapsed).

``fill_solutions=True`` keeps the solutions in step 2 (tests run that version under nbval).
"""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

__all__ = ["EXERCISES", "TAG_PREFIX", "exercise_notebook", "skeleton", "write_exercise_notebook"]

TAG_PREFIX = "exercise:"

#: name -> (title, hint): the exercises the instructor notebooks tag, in the paper's words.
EXERCISES = {
    "dcgan_update": (
        "the DCGAN update (D step, then G step)",
        "D step: `BCE(D(real), 1) + BCE(D(fake.detach()), 0)` with `torch.ones_like` / `torch.zeros_like` "
        "labels; `opt_D.zero_grad()`, `loss.backward()`, `opt_D.step()`. `detach()` keeps the D step from "
        "training G. G step: `BCE(D(fake), 1)` (the non-saturating loss: fake labelled real), then the same "
        "three calls with `opt_G`."),
    "mapping_loss": (
        "the residual loss L_R and the discrimination loss L_D",
        "One value per slice: `(x - gz).abs().flatten(1).sum(1)` sums over every pixel of each slice "
        "but not over the batch; the same for the features `f(x) - f(G(z))`."),
    "anomaly_score": (
        "the anomaly score A",
        "`A = (1 - lam) * R + lam * D`: lam weights the discrimination score, 1 - lam the residual."),
    "scale_scores": (
        "the score in [0, 1], fitted on healthy validation slices",
        "`mean, sd = np.mean(a_raw_val), np.std(a_raw_val, ddof=1)`, then "
        "`1 / (1 + np.exp(-(a_raw - mean) / sd))`. Only the validation slices set the map, never the test "
        "ones."),
    "map_latent": (
        "the latent-mapping loop (AnoGAN)",
        "`with frozen(G, D):` compute `fx = D.features(x)` under `torch.no_grad()`, then "
        "`z = z0.clone().requires_grad_(True)`, `opt = torch.optim.Adam([z], lr=lr)` and `steps` times: "
        "`opt.zero_grad()`, `gz = G(z)`, the loss `(1 - lam) * residual_loss(...) + lam * "
        "discrimination_loss(...)`, `loss.sum().backward()`, `opt.step()`. Return `z.detach()`."),
    "subject_scores": (
        "the subject score (the mean of its slices' A)",
        "`slices.groupby('subject')['A'].mean()` gives a Series indexed by subject."),
    "threshold_from_healthy": (
        "the threshold from healthy validation subjects",
        "Keep `subjects[(subjects.split == 'val') & (subjects.label == 0)].score`, sort it from high to low "
        "and take the entry at index `floor(fpr * n)`: at most that many healthy validation subjects "
        "score above it. Never look at the test subjects."),
    "rates_from_counts": (
        "accuracy, precision and recall from the confusion counts",
        "accuracy = (TP + TN) / all, precision = TP / (TP + FP), recall = TP / (TP + FN); a rate whose "
        "denominator is 0 is 0."),
}


def _exercise_name(cell: dict) -> str | None:
    for tag in cell.get("metadata", {}).get("tags", []):
        if tag.startswith(TAG_PREFIX):
            name = tag[len(TAG_PREFIX):]
            if name not in EXERCISES:
                raise ValueError(f"unknown exercise tag {tag!r}; known: {sorted(EXERCISES)}")
            return name
    return None


def _functions(source: str) -> list[ast.FunctionDef]:
    return [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]


def skeleton(source: str) -> str:
    """``source`` with every top-level function's body (after its docstring) replaced.

    Parameters
    ----------
    source : str
        A solution cell's code.

    Returns
    -------
    str
        The same code where each function keeps its decorators, signature and docstring and
        its body is ``raise NotImplementedError``; other statements are unchanged.
    """
    lines = source.splitlines()
    out, pos = [], 0
    for fn in _functions(source):
        first = fn.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str)
        keep_to = first.end_lineno if has_doc else fn.body[0].lineno - 1
        indent = " " * (fn.body[0].col_offset)
        out += lines[pos:keep_to]
        out.append(f"{indent}raise NotImplementedError  # your code here")
        pos = fn.end_lineno
    out += lines[pos:]
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _cell(kind: str, source: str, cell_id: str, tags=()) -> dict:
    cell = dict(cell_type=kind, id=cell_id, metadata={"tags": list(tags)} if tags else {}, source=source)
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _exercise_cells(cell: dict, name: str, fill_solutions: bool) -> list[dict]:
    title, hint = EXERCISES[name]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    names = [fn.name for fn in _functions(source)]
    code = copy.deepcopy(cell)
    code["source"] = source if fill_solutions else skeleton(source)
    code["metadata"].setdefault("tags", [])
    cid = cell.get("id", name)
    checks = ", ".join(f"check_{n}" for n in names)
    calls = "\n".join(f"check_{n}({n})" for n in names)
    task = (f"### \u270f\ufe0f Exercise: {title}\n\nComplete {', '.join(f'`{n}`' for n in names)} below "
            f"(replace `raise NotImplementedError`), then run the check under it.")
    return [
        _cell("markdown", task, f"{cid}-task"),
        code,
        _cell("code", f"from glio_kit.exercises import {checks}\n\n{calls}", f"{cid}-check",
              tags=["exercise-check"]),
        _cell("markdown", f"<details><summary>Hint</summary>\n\n{hint}\n\n</details>", f"{cid}-hint",
              tags=["exercise-hint"]),
    ]


def exercise_notebook(nb: dict, fill_solutions: bool = False) -> dict:
    """The student version of an instructor notebook (nbformat 4 JSON as a dict).

    Parameters
    ----------
    nb : dict
        The instructor notebook; cells tagged ``exercise:<name>`` hold the solutions.
    fill_solutions : bool
        Keep the solutions in the exercise cells (for tests and for checking the checks).

    Returns
    -------
    dict
        A new notebook; a notebook without exercise cells comes back unchanged (a copy).
    """
    out = copy.deepcopy(nb)
    cells = []
    for cell in nb["cells"]:
        name = _exercise_name(cell) if cell["cell_type"] == "code" else None
        cells += [copy.deepcopy(cell)] if name is None else _exercise_cells(cell, name, fill_solutions)
    out["cells"] = cells
    return out


def write_exercise_notebook(src: Path, out: Path, fill_solutions: bool = False) -> None:
    """Write the student version of the notebook ``src`` to ``out``."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    text = json.dumps(exercise_notebook(nb, fill_solutions), indent=1, ensure_ascii=False) + "\n"
    Path(out).write_text(text, encoding="utf-8")
