"""A first hour without surprises (issue 20): what a new user meets, checked one point at a time.

One real smoke run, interrupted with Ctrl-C and then resumed, serves points 4, 8, 5 and 10
(about a minute and a half on 2 cores); the other points are checked without running a notebook.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from glio_kit.run import timings
from glio_kit.run.cli import INTERRUPTED, build_parser, main
from glio_kit.run.rundir import RunDir
from glio_kit.run.steps import STEPS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
KIT = str(Path(sys.executable).with_name("glio-kit"))


def _notebook_text(name: str) -> str:
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"])


def _help(*argv) -> str:
    parser = build_parser()
    if not argv:
        return parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[argv[0]].format_help()


def _user_env(tmp_path) -> dict:
    """A new user's shell: none of this checkout's or this test's settings; the cohort in tmp."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GLIO_KIT_") and k != "PYTEST_CURRENT_TEST"}
    env["GLIO_KIT_DATA"] = str(tmp_path / "data")
    return env


@pytest.fixture
def new_user(monkeypatch, tmp_path):
    """In-process: an empty working folder, no profile or run folder from the environment."""
    for k in ("GLIO_KIT_PROFILE", "GLIO_KIT_RUN_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GLIO_KIT_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------ 1-3: README, run times
def test_1_the_readme_opens_with_a_three_line_quick_start():
    top = README.split("> Reproduces:")[0]
    block = re.search(r"```bash\n(.*?)```", top, re.S).group(1).strip().splitlines()
    assert len(block) == 3
    assert "--index-url https://download.pytorch.org/whl/cpu" in block[0]
    assert "glio-kit run --profile smoke" in block[1]
    assert "report.html" in block[2]
    assert "make demo" not in top


def test_2_every_text_states_the_same_run_times():
    line = timings.profiles_line()
    assert line in README.replace("\n", " ")
    assert line in _help()
    for st in STEPS:
        text = _notebook_text(st.notebook).replace("\n", " ")
        assert line in text, st.notebook
        assert f"This notebook (measured on {timings.MACHINE}): {timings.step_time(st.name)}." in text
    assert f"({timings.run_time('demo')})" in README  # the make demo line
    # the figures that disagreed before (issue 20, point 2) are gone from every text
    texts = [README, _help()] + [_notebook_text(st.notebook) for st in STEPS]
    for old in ("about 11 minutes", "fits 15 minutes", "279 s", "320 s", "about 5.5 min"):
        assert not any(old in t for t in texts), old


def test_2_the_default_profile_says_how_long_it_takes(new_user, capsys):
    from glio_kit.run.cli import chosen_profile

    assert chosen_profile(None) == "demo"
    out = capsys.readouterr().out
    assert timings.run_time("demo") in out and f"--profile smoke: {timings.run_time('smoke')}" in out


def test_3_the_pip_section_says_to_install_the_cpu_torch_first():
    section = README.split("**Without a checkout.**")[1].split("\n\n")[0]
    cpu = section.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < section.index("`pip install .`") and "CUDA" in section


# ------------------------------------------- 4, 8, 5, 10: one real smoke run, Ctrl-C, resume
def _run_until(cmd, cwd, env, line: str, timeout: float = 300):
    """Start ``cmd`` in its own session, wait for ``line`` in its output, press Ctrl-C (SIGINT
    to its process group, as a terminal does). Returns (exit status, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    seen, lines = threading.Event(), []

    def read():
        for out in proc.stdout:
            lines.append(out)
            if line in out:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(timeout), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    return proc.returncode, "".join(lines)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``glio-kit run --profile smoke`` from an empty folder, interrupted during training, then
    the same command again."""
    tmp = tmp_path_factory.mktemp("first-hour")
    env = _user_env(tmp)
    cmd = [KIT, "run", "--profile", "smoke", "--run-dir", "runs/smoke"]
    rc, interrupted = _run_until(cmd, tmp, env, "[train DCGAN] started")  # inside notebook 02
    after_interrupt = json.loads((tmp / "runs" / "smoke" / "steps" / "train.json").read_text())["status"]
    resumed = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    return dict(tmp=tmp, run=tmp / "runs" / "smoke", env=env, rc=rc, interrupted=interrupted,
                train_after_interrupt=after_interrupt, resumed=resumed)


def test_4_ctrl_c_prints_one_line_and_exits_130(smoke_run):
    out = smoke_run["interrupted"]
    assert smoke_run["rc"] == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert out.rstrip().splitlines()[-1] == INTERRUPTED
    assert smoke_run["train_after_interrupt"] == "failed"  # marked unfinished, never done
    resumed = smoke_run["resumed"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "01_data_prep.ipynb: done earlier with the same settings, skipped" in resumed.stdout


def test_8_a_clean_run_prints_no_kernel_error(smoke_run):
    out = smoke_run["resumed"].stdout + smoke_run["resumed"].stderr
    assert "05_metrics.ipynb: ran" in out
    assert "KeyboardInterrupt caught" not in out and "ERROR |" not in out


def test_8_a_finished_kernel_is_not_interrupted_on_shutdown(monkeypatch):
    """jupyter_client sends SIGINT before every shutdown; a kernel busy with a message then logs
    "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel". The kit's manager sends none."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    from glio_kit.run.kernels import TrackedKernelManager

    interrupts = []

    async def interrupt(self):
        interrupts.append(self.shutting_down)

    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    km = TrackedKernelManager(kernel_name="python3")
    run_sync(km.start_kernel)()
    try:
        run_sync(km._async_interrupt_kernel)()  # asked for while running: still sent
        run_sync(km.shutdown_kernel)()
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
    assert interrupts == [False]


def test_5_a_rerun_without_the_profile_names_the_folders_profile(smoke_run):
    env = smoke_run["env"]
    out = subprocess.run([KIT, "run", "--run-dir", "runs/smoke"], cwd=smoke_run["tmp"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "this folder was made with the smoke profile (add --profile smoke)" in out.stderr
    assert "--force" not in out.stderr and "epochs" not in out.stderr  # no list of changed knobs
    assert json.loads((smoke_run["run"] / "run.json").read_text())["profile"] == "smoke"


def test_10_metrics_of_a_smoke_run_say_so(smoke_run):
    from glio_kit.run.config import SMOKE_NOTE

    assert json.loads((smoke_run["run"] / "metrics.json").read_text())["note"] == SMOKE_NOTE
    md = (smoke_run["run"] / "metrics.md").read_text()
    assert md.startswith("| metric |") and f"\n**Note:** {SMOKE_NOTE}" in md  # right under the table


def test_10_metrics_md_without_a_note_has_none():
    from glio_kit.evaluate.markdown import metrics_markdown

    assert "**Note:**" not in metrics_markdown({"subject_auc": 0.5})
    assert "\n\n**Note:** smoke!\n" in metrics_markdown({"subject_auc": 0.5, "note": "smoke!"})


# ------------------------------------------------------------- 7: cohort folders
def test_7_missing_cohort_folders_are_named_by_their_flags_before_anything_starts(new_user, monkeypatch,
                                                                                  capsys):
    import papermill

    def no_kernel(*a, **k):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    assert main(["run", "--profile", "smoke", "--run-dir", "r", "--train-healthy", "nope/"]) == 2
    err = capsys.readouterr().err
    assert f"--train-healthy nope/: no such folder ({new_user / 'nope'})" in err
    assert "--test-healthy and --test-tumor not given" in err
    assert "test_healthy_dir" not in err
    assert main(["run", "--profile", "smoke", "--run-dir", "r", "--train-healthy", "a", "--test-healthy", "b",
                 "--test-tumor", "c"]) == 2
    err = capsys.readouterr().err
    assert all(f"{flag} {name}: no such folder" in err
               for flag, name in (("--train-healthy", "a"), ("--test-healthy", "b"), ("--test-tumor", "c")))
    assert not (new_user / "r").exists()


def test_7_parameters_and_grids_get_the_same_check_in_their_own_names(new_user):
    from glio_kit.errors import GlioKitError
    from glio_kit.run.runner import run_chain

    with pytest.raises(GlioKitError, match=r"test_healthy_dir and test_tumor_dir not given(.|\n)*"
                                           r"train_healthy_dir x: no such folder"):
        run_chain("r", "smoke", {"train_healthy_dir": "x"})


# ------------------------------------------------------------ 9: example grids
def test_9_glio_kit_examples_writes_the_shipped_grids(new_user, capsys):
    from glio_kit.run.grid import load_grid, plan_runs

    assert main(["examples", "mine"]) == 0
    names = sorted(p.name for p in (new_user / "mine").glob("*.yaml"))
    assert names == ["grid.yaml", "grid_slurm.yaml", "grid_smoke.yaml"]
    assert "glio-kit batch mine/grid_smoke.yaml" in capsys.readouterr().out
    spec = load_grid(Path("mine") / "grid_smoke.yaml")
    assert spec["out"] == str(new_user / "runs" / "grid-smoke")  # beside the user, not the grid file
    assert len(plan_runs(spec)) == 4
    (new_user / "mine" / "grid.yaml").write_text("mine")
    assert main(["examples", "mine"]) == 0 and (new_user / "mine" / "grid.yaml").read_text() == "mine"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-data"]["glio_kit.examples"] == ["*.yaml"]  # in the wheel


def test_9_help_advertises_no_file_the_wheel_lacks_and_says_where_out_goes():
    for text in (_help(), _help("batch")):
        assert not re.search(r"(?<![\w/-])examples/grid", text), text
    batch = " ".join(_help("batch").split())
    assert "glio-kit examples DIR" in batch and "from the folder you run the command in" in batch


# ------------------------------------------------------------ 10: batch summary
def _fake_run(folder: Path, auc: float, recommended="lesion_load"):
    folder.mkdir(parents=True)
    blocks = {"residual_area": {"subject_auc": 0.6}, "lesion_load": {"subject_auc": 0.7},
              "baseline": {"subject_auc": 0.4}}
    (folder / "metrics.json").write_text(json.dumps(dict(
        subject_auc=auc, accuracy=0.5, precision=0.5, recall=0.5, pixel_dice=0.1, **blocks,
        ci=dict(subject_auc=[0.1, 0.9], accuracy=[0.2, 0.8]), recommended=dict(name=recommended))))


def test_10_the_summary_labels_every_detector_and_the_recommended_one(tmp_path):
    from glio_kit.detect.detectors import DETECTORS
    from glio_kit.run.batch_summary import summarise, summary_figure

    runs = [dict(name=f"lam={v}", point={"lam": v}) for v in (0, 0.5)]
    for r in runs:
        _fake_run(tmp_path / r["name"], 0.8)
    (tmp_path / "batch.json").write_text(json.dumps({"profile": "smoke"}))
    table = summarise(tmp_path, runs, {r["name"]: dict(status="ok", seconds=3.0, error="") for r in runs})
    md = (tmp_path / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    for det in DETECTORS.values():
        assert det.column in header, det.name
    assert f"{DETECTORS['lesion_load'].column} = RECOMMENDED" in header
    assert "The recommended score is kit: lesion load" in md
    assert md.startswith("**Note:** smoke profile")
    assert set(table["recommended_score"]) == {"lesion_load"}
    fig = summary_figure(table, "smoke")
    texts = [t.get_text() for t in fig.texts]
    assert any("smoke profile" in t for t in texts)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(legend) == sorted(d.label + (" (recommended)" if d.name == "lesion_load" else "")
                                    for d in DETECTORS.values())
    assert not any("smoke profile" in t.get_text() for t in summary_figure(table, "demo").texts)


def test_10_a_rerun_keeps_the_timings(tmp_path, monkeypatch):
    import yaml

    from glio_kit.run import batch as B

    def executor(run_dir, profile, params, notebooks=None, force=False):
        run = RunDir(run_dir)
        for st in STEPS:
            run.claim(st.name, {"lam": params.get("lam")}, overwrite=True)
            run.mark_done(st.name)
        _fake_run(Path(run_dir) / "m", 0.8)
        (Path(run_dir) / "m" / "metrics.json").rename(Path(run_dir) / "metrics.json")
        time.sleep(0.2)
        return []

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(dict(profile="smoke", out=str(tmp_path / "b"), grid=dict(lam=[0, 0.5]))))
    first = B.run_batch(grid, executor=executor, declared={"05_metrics.ipynb": {"lam"}}, progress=False,
                        cohorts=False)
    assert (first["seconds"] > 0).all()
    again = B.run_batch(grid, executor=executor, declared={"05_metrics.ipynb": {"lam"}}, progress=False,
                        cohorts=False)
    assert set(again["status"]) == {"done earlier"}
    assert list(again["seconds"]) == list(first["seconds"])
    assert list(pd.read_csv(tmp_path / "b" / "summary.csv")["seconds"]) == list(first["seconds"])


# ------------------------------------------------------ 11: copied notebooks find the run
def _setup(step="residuals", **namespace):
    from glio_kit.run.notebook import setup

    return setup(step, dict(dict(profile=None, run_dir=""), **namespace))


def test_11_a_copied_notebook_finds_the_run_beside_it_and_its_profile(new_user, capsys):
    run = RunDir(new_user / "runs" / "smoke", profile="smoke")
    (new_user / "mine").mkdir()
    os.chdir(new_user / "mine")  # where glio-kit notebooks put the copies; the kernel runs there
    settings, found = _setup()
    out = capsys.readouterr().out
    assert found.path == run.path and settings.profile == "smoke"
    assert "profile: smoke" in out.splitlines()[0]  # the header line
    assert f"run folder: {run.path} (found; made with the smoke profile" in out


def test_11_with_only_the_run_folder_set_the_header_shows_its_profile(new_user, monkeypatch, capsys):
    run = RunDir(new_user / "elsewhere", profile="smoke")
    monkeypatch.setenv("GLIO_KIT_RUN_DIR", str(run.path))
    settings, _ = _setup()
    assert settings.profile == "smoke" and "profile: smoke" in capsys.readouterr().out.splitlines()[0]
    monkeypatch.setenv("GLIO_KIT_PROFILE", "demo")  # a profile chosen wins (the steps then compare)
    assert _setup()[0].profile == "demo"


def test_11_a_folder_made_before_run_json_knew_its_profile(tmp_path):
    run = RunDir(tmp_path / "old")
    (run.path / "run.json").write_text('{"glio_kit": "0.1.0"}\n')
    assert run.profile() is None
    run.claim("prep", {"a": 1}, settings={"profile": "smoke"})
    assert RunDir(run.path, create=False).profile() == "smoke"


# ------------------------------------------------- 12: refusals, progress units, extras
def test_12_a_refused_run_leaves_no_folder_behind(new_user, capsys):
    assert main(["run", "--profile", "smoke", "--run-dir", "fresh", "-p", "epochs=-1"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (new_user / "fresh").exists()
    kept = RunDir(new_user / "kept", profile="smoke")  # an existing run folder stays as it was
    before = sorted(p.name for p in kept.path.iterdir())
    assert main(["run", "--profile", "smoke", "--run-dir", "kept", "-p", "epochs=-1"]) == 2
    assert sorted(p.name for p in kept.path.iterdir() if p.name != "run.lock") == before


def test_12_one_unit_per_progress_line():
    import io

    from glio_kit.progress import LineBar

    out = io.StringIO()
    list(LineBar(range(8), desc="preprocess", stream=out))
    with LineBar(total=8, desc="synthetic cohort", unit="subject", stream=out) as bar:
        bar.update(8)
    lines = out.getvalue().splitlines()
    assert lines[1] == "[preprocess] done: 8/8 in 0 s"  # no tqdm "it" beside the next bar's "subject"
    assert lines[-1] == "[synthetic cohort] done: 8/8 subject in 0 s"


def test_12_test_tools_are_only_in_the_dev_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not runtime & {"pytest", "nbval", "coverage", "pytest-xdist", "ruff", "selenium"}
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert "pytest" in dev and "nbval" in dev


# ---------------------------------------------- issue 17: the preparation notebook too
def test_glio_kit_notebooks_copies_the_preparation_notebook(new_user):
    assert main(["notebooks", "mine"]) == 0
    assert (new_user / "mine" / "00_prepare_real_data.ipynb").exists()
    assert main(["notebooks", "ex", "--exercises"]) == 0
    assert (new_user / "ex" / "00_prepare_real_data.ipynb").exists()
