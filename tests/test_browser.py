"""The residual browser in a real browser: JupyterLab on a smoke run, notebook 04 executed in
headless Chromium, every control changed, the picture redrawn each time, no widget error.

Runs when Chromium, its driver and selenium are installed (``.ci/run`` installs Debian's
``chromium`` and ``chromium-driver`` and sets ``GLIO_KIT_REQUIRE_BROWSER=1``, which turns a
missing browser into a failure instead of a skip). About a minute on 2 cores: steps 01-03 of a
smoke run, JupyterLab and the browser.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

MISSING = [name for name, ok in (("chromium", CHROMIUM), ("chromedriver", DRIVER),
                                 ("selenium", HAVE_SELENIUM)) if not ok]
if MISSING and os.environ.get("GLIO_KIT_REQUIRE_BROWSER"):
    raise RuntimeError(f"GLIO_KIT_REQUIRE_BROWSER is set but {MISSING} are missing: install them "
                       f"(apt-get install chromium chromium-driver; pip install selenium)")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"browser test needs {MISSING}")

TOKEN = "glio-kit-browser-test"
NOTEBOOK = "04_residuals.ipynb"
KERNEL = ("const w = window.jupyterapp.shell.currentWidget; return w && w.sessionContext && "
          "w.sessionContext.session && w.sessionContext.session.kernel ? "
          "w.sessionContext.session.kernel.status : null")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Steps 01-03 of a smoke run (what notebook 04 reads), by the calls their notebooks make."""
    from glio_kit.data import preprocess
    from glio_kit.detect import scoring
    from glio_kit.run.config import get_config
    from glio_kit.run.rundir import RunDir
    from glio_kit.gan.train import train_dcgan

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLIO_KIT_DATA", str(root / "data"))
        mp.setenv("GLIO_KIT_QUIET", "1")
        s = get_config("smoke")
        run = RunDir(root / "run")
        cache = preprocess.prepare(run, s.prep, preprocess.resolve_cohort(s.prep, "", "", ""))
        train_dcgan(run, cache, s.train)
        scoring.score_run(run, cache, s.score)
    return run.path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(smoke_run, tmp_path_factory):
    """JupyterLab serving a copy of notebook 04, its kernels reading the smoke run; yields its URL."""
    from glio_kit.paths import notebooks_dir

    home = tmp_path_factory.mktemp("lab")
    (home / "root").mkdir()
    shutil.copyfile(notebooks_dir() / NOTEBOOK, home / "root" / NOTEBOOK)
    (home / "config" / "labconfig").mkdir(parents=True)  # no "Jupyter news?" pop-up over the page
    (home / "config" / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = dict(os.environ, GLIO_KIT_RUN_DIR=str(smoke_run), GLIO_KIT_PROFILE="smoke",
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    port = _free_port()
    log = open(home / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={home / 'root'}", "--allow-root",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(home / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not answer: {(home / 'lab.log').read_text()[-2000:]}")
        yield url, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_residual_browser_in_jupyterlab(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, home = lab
    d = browser

    def picture():
        imgs = d.find_elements(By.CSS_SELECTOR, ".widget-vbox .widget-output img")
        return imgs[0].get_attribute("src") if imgs else None

    def wait_for(condition, what, seconds):
        try:
            WebDriverWait(d, seconds).until(lambda _: condition())
        except Exception:
            d.save_screenshot(str(home / "failed.png"))
            raise AssertionError(f"{what} (after {seconds} s; screenshot: {home / 'failed.png'}; "
                                 f"widget output: {errors()})") from None

    def redrawn(before, what):
        wait_for(lambda: picture() not in (None, before), f"the picture did not change after setting {what}",
                 60)
        assert errors() == [], f"after setting {what}"
        return picture()

    def errors():
        texts = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".widget-vbox .widget-output pre")]
        page = d.page_source
        return [t for t in texts if t.strip()] + (["Error displaying widget"]
                                                  if "Error displaying widget" in page else [])

    def type_into(slider, value):
        readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(str(value), Keys.ENTER)

    d.get(f"{url}/lab/tree/{NOTEBOOK}?token={TOKEN}")
    wait_for(lambda: d.execute_script("return !!window.jupyterapp") and d.execute_script(KERNEL) == "idle",
             "JupyterLab did not open the notebook with an idle kernel", 180)
    d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    wait_for(lambda: picture() is not None, "the browser widget did not draw", 180)
    wait_for(lambda: d.execute_script(KERNEL) == "idle", "notebook 04 did not finish", 180)
    assert errors() == []
    box = d.find_element(By.CSS_SELECTOR, ".widget-vbox")
    d.execute_script("arguments[0].scrollIntoView()", box)
    src = picture()

    Select(box.find_element(By.CSS_SELECTOR, ".widget-dropdown select")).select_by_index(1)
    src = redrawn(src, "subject")

    slice_slider, threshold_slider = box.find_elements(By.CSS_SELECTOR, ".widget-hslider")
    now = float(slice_slider.find_element(By.CSS_SELECTOR, ".noUi-handle").get_attribute("aria-valuenow"))
    type_into(slice_slider, 0 if now else 1)
    src = redrawn(src, "slice")

    box.find_element(By.CSS_SELECTOR, "button[data-value='residual']").click()
    src = redrawn(src, "overlay")

    handle = threshold_slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    assert handle.get_attribute("aria-valuemax") == "2.0"  # generator units, as the notebook says
    type_into(threshold_slider, "0.05")
    redrawn(src, "threshold")
    d.save_screenshot(str(home / "browser.png"))
