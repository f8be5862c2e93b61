"""The exercise notebooks: the checks pass the solutions, fail each common wrong answer with
the intended message, and the student version (solutions filled in) runs under nbval."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import glio_kit.exercises as ex
from glio_kit.exercises import ExerciseError, library
from glio_kit.exercises.notebooks import EXERCISES, TAG_PREFIX, exercise_notebook, skeleton
from glio_kit.run import cli
from glio_kit.run.runner import available_notebooks

BCE = torch.nn.BCEWithLogitsLoss()


def _tagged_cells():
    """(notebook name, exercise name, source) of every exercise cell of the instructor notebooks."""
    out = []
    for path in available_notebooks():
        for cell in json.loads(path.read_text())["cells"]:
            for tag in cell["metadata"].get("tags", []):
                if tag.startswith(TAG_PREFIX):
                    out.append((path.name, tag[len(TAG_PREFIX):], "".join(cell["source"])))
    return out


@pytest.fixture(scope="module")
def solutions():
    """The instructor notebooks' solution functions, by name."""
    ns = {}
    for _, _, source in _tagged_cells():
        exec(source, ns)
    return ns


CHECKED = ["residual_loss", "discrimination_loss", "anomaly_score", "scale_scores", "d_step", "g_step",
           "map_latent", "subject_scores", "threshold_from_healthy", "rates_from_counts"]


def test_every_exercise_is_tagged_once():
    names = [name for _, name, _ in _tagged_cells()]
    assert sorted(names) == sorted(EXERCISES)


@pytest.mark.parametrize("name", CHECKED)
def test_solution_passes(solutions, name, capsys):
    getattr(ex, f"check_{name}")(solutions[name])
    assert f"\u2713 {name}: matches the library" in capsys.readouterr().out


def test_library_functions_pass_their_own_checks():
    ex.check_anomaly_score(library.anomaly_score)
    ex.check_rates_from_counts(library.rates)


def _d_step(detach=True, swap=False, zero=True):
    def d_step(D, opt_D, real, fake):
        out_r, out_f = D(real), D(fake.detach() if detach else fake)
        one, zero_ = torch.ones_like(out_r), torch.zeros_like(out_r)
        loss = BCE(out_r, zero_ if swap else one) + BCE(out_f, one if swap else zero_)
        if zero:
            opt_D.zero_grad()
        loss.backward()
        opt_D.step()
        return loss
    return d_step


def _g_step(label=1.0, detach=False):
    def g_step(D, opt_G, fake):
        out = D(fake.detach() if detach else fake)
        loss = BCE(out, torch.full_like(out, label))
        opt_G.zero_grad()
        loss.backward()
        opt_G.step()
        return loss
    return g_step


def _map_latent(solutions, zero_grad=True, freeze=True):
    rl, dl = solutions["residual_loss"], solutions["discrimination_loss"]

    def map_latent(G, D, x, z0, steps, lam, lr):
        if freeze:
            G.eval(), D.eval()
        fx = D.features(x).detach()
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for p in (*G.parameters(), *D.parameters()):
            p.requires_grad_(False)
        for _ in range(steps):
            if zero_grad:
                opt.zero_grad()
            gz = G(z)
            ((1 - lam) * rl(x, gz) + lam * dl(fx, D.features(gz))).sum().backward()
            opt.step()
        for p in (*G.parameters(), *D.parameters()):
            p.requires_grad_(True)
        G.train(), D.train()
        return z.detach()
    return map_latent


def _threshold_from_all(subjects, fpr):
    s = subjects[subjects.label == 0].score.sort_values(ascending=False)  # test subjects too
    return float(s.iloc[int(math.floor(fpr * len(s)))])


def _threshold_quantile(subjects, fpr):
    return float(np.quantile(subjects[(subjects.split == "val") & (subjects.label == 0)].score, 1 - fpr))


def _rates(swap=False, guard=True):
    def rates_from_counts(tn, fp, fn, tp):
        div = (lambda a, b: a / b if b else 0.0) if guard else (lambda a, b: a / b)
        p, r = div(tp, tp + fp), div(tp, tp + fn)
        return dict(accuracy=div(tp + tn, tn + fp + fn + tp), precision=r if swap else p,
                    recall=p if swap else r)
    return rates_from_counts


def _unwritten(*args):
    raise NotImplementedError


WRONG = {
    "residual sums over the batch": ("residual_loss", lambda x, gz: (x - gz).abs().sum(),
                                     "expected shape (5,), got (); you reduce over the batch too"),
    "residual mean over pixels": ("residual_loss", lambda x, gz: (x - gz).abs().flatten(1).mean(1),
                                  "you average over the pixels"),
    "residual squared": ("residual_loss", lambda x, gz: (x - gz).pow(2).flatten(1).sum(1), "you square"),
    "residual without abs": ("residual_loss", lambda x, gz: (x - gz).flatten(1).sum(1),
                             "take the absolute value"),
    "features summed over channels only": ("discrimination_loss", lambda f, g: (f - g).abs().sum(1),
                                           "reduce over all of each slice's elements"),
    "score weights swapped": ("anomaly_score", lambda R, D, lam: lam * R + (1 - lam) * D,
                              "the weights are swapped"),
    "score without lambda": ("anomaly_score", lambda R, D, lam: R + D, "the lambda weighting is missing"),
    "score with minus sign": ("anomaly_score", lambda R, D, lam: (1 - lam) * R - lam * D, "not - lam * D"),
    "scaling fitted on the test slices": ("scale_scores",
                                          lambda a, v: 1 / (1 + np.exp(-(a - a.mean()) / (a.std() + 1e-9))),
                                          "fit the mean and SD on the healthy validation slices"),
    "scaling min-max": ("scale_scores", lambda a, v: np.clip((a - v.min()) / (v.max() - v.min()), 0, 1),
                        "min-max scaling"),
    "scaling population SD": ("scale_scores", lambda a, v: 1 / (1 + np.exp(-(a - v.mean()) / v.std())),
                              "sample SD"),
    "D step without detach": ("d_step", _d_step(detach=False), "sent gradients into G"),
    "D step labels swapped": ("d_step", _d_step(swap=True), "the labels are swapped"),
    "D step without zero_grad": ("d_step", _d_step(zero=False), "zero the old gradients"),
    "G step with the saturating label": ("g_step", _g_step(label=0.0), "labels the generated slices as real"),
    "G step detaching fake": ("g_step", _g_step(detach=True), "do not detach it here"),
    "subject max": ("subject_scores", lambda sl: sl.groupby("subject")["A"].max(), "maximum"),
    "subject mean over all slices": ("subject_scores", lambda sl: sl["A"].mean(), "returned one number"),
    "threshold from test subjects": ("threshold_from_healthy", _threshold_from_all,
                                     "changes when the test subjects' scores change"),
    "threshold by quantile": ("threshold_from_healthy", _threshold_quantile,
                              "healthy validation subjects score above your threshold"),
    "precision and recall swapped": ("rates_from_counts", _rates(swap=True),
                                     "precision and recall are swapped"),
    "division by zero": ("rates_from_counts", _rates(guard=False), "raised ZeroDivisionError"),
    "not written yet": ("anomaly_score", _unwritten, "is not written yet"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_answer_fails_with_its_message(case):
    name, fn, message = WRONG[case]
    with pytest.raises(ExerciseError) as err:
        getattr(ex, f"check_{name}")(fn)
    assert message in str(err.value), str(err.value)
    assert len(str(err.value)) < 300  # one or two sentences


@pytest.mark.parametrize("case, message", [
    ("zero_grad", "zero the gradients every step"), ("freeze", "BatchNorm statistics")])
def test_wrong_mapping_loop_fails(solutions, case, message):
    with pytest.raises(ExerciseError, match=message):
        ex.check_map_latent(_map_latent(solutions, **{case: False}))


def test_skeleton_keeps_signature_and_docstring(solutions):
    source = next(src for _, name, src in _tagged_cells() if name == "mapping_loss")
    ns = {}
    exec(skeleton(source), ns)
    assert ns["residual_loss"].__doc__ == solutions["residual_loss"].__doc__
    with pytest.raises(ExerciseError, match="not written yet"):
        ex.check_residual_loss(ns["residual_loss"])


def test_student_notebooks_hide_the_solutions_and_add_checks():
    nb = json.loads(next(p for p in available_notebooks() if p.name.startswith("02")).read_text())
    student = exercise_notebook(nb)
    code = ["".join(c["source"]) for c in student["cells"] if c["cell_type"] == "code"]
    assert not any("fake.detach()" in c for c in code)  # only in the hint
    assert "check_d_step(d_step)\ncheck_g_step(g_step)" in "\n".join(code)
    assert len(student["cells"]) == len(nb["cells"]) + 3
    assert len({c["id"] for c in student["cells"]}) == len(student["cells"])
    filled = exercise_notebook(nb, fill_solutions=True)["cells"][9]
    assert "exercise:dcgan_update" in filled["metadata"]["tags"]
    assert filled["source"] == "".join(nb["cells"][8]["source"])


def test_cli_writes_the_student_version_and_keeps_existing(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert cli.main(["notebooks", str(dest), "--exercises"]) == 0
    nb03 = json.loads((dest / "03_scoring.ipynb").read_text())
    assert sum("exercise-check" in c["metadata"].get("tags", []) for c in nb03["cells"]) == 4
    (dest / "05_metrics.ipynb").write_text("student work")
    assert cli.main(["notebooks", str(dest), "--exercises"]) == 0
    assert (dest / "05_metrics.ipynb").read_text() == "student work"
    assert "kept" in capsys.readouterr().out


@pytest.mark.notebook
def test_exercise_notebooks_run_under_nbval_with_solutions(tmp_path):
    """The student version with the solutions filled in runs 01-05 in order (smoke profile)."""
    dest = tmp_path / "nbs"
    assert cli.main(["notebooks", str(dest), "--exercises", "--fill-solutions"]) == 0
    env = dict(os.environ, GLIO_KIT_PROFILE="smoke", GLIO_KIT_RUN_DIR=str(tmp_path / "run"),
               GLIO_KIT_DATA=os.environ.get("GLIO_KIT_DATA", str(tmp_path / "data")))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        "--nbval-current-env", str(dest)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert (Path(tmp_path) / "run" / "metrics.json").exists()
