# DerMAE Studio. `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Browser tests drive Debian's chromium (Playwright cannot download browsers here); the Slurm tests start a real
# single-node Slurm from Debian's slurm-wlm and munge (deploy/slurm/local_cluster.py: no root beyond installing).
CHROMIUM  := /usr/bin/chromium
SLURMCTLD := /usr/sbin/slurmctld
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# $(call apt_install,packages,who needs them)
define apt_install
	@command -v apt-get >/dev/null || { echo "$(2) need the Debian packages: $(1)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(1)
endef

PROFILE ?= cpu64
DATASET ?=

.PHONY: install demo serve train test test-fast test-slurm lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

$(CHROMIUM):
	$(call apt_install,chromium,the browser tests)

$(SLURMCTLD):
	$(call apt_install,slurm-wlm munge,the Slurm tests)

demo: install  ## engine + studio on the default data (HAM10000, else DermaMNIST, else phantom; DERMAE_DATA picks)
	$(BIN)/dermae demo $(if $(filter command line environment,$(origin PROFILE)),--profile $(PROFILE))

serve: install  ## the Gradio demo of the student the studio serves (MODEL=export folder: serve that one, no engine)
	$(BIN)/python -m studio.demo $(if $(MODEL),--model $(MODEL))

train: install  ## MAE + teacher + every arm on the newest version (DATASET=, SEEDS=, REAL_FRACTION=, EXTERNAL=)
	$(BIN)/dermae train --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(REAL_FRACTION),--real-fraction $(REAL_FRACTION)) $(if $(EXTERNAL),--external $(EXTERNAL))

# DERMAE_REQUIRE_SLURM=1: where make installed Slurm, a Slurm test that cannot start it fails instead of skipping.
test: install $(CHROMIUM) $(SLURMCTLD)  ## lint, then the whole suite (slow end-to-end, browser and Slurm tests included)
	$(BIN)/ruff check .
	DERMAE_REQUIRE_SLURM=1 $(BIN)/pytest

test-fast: install  ## the suite without the slow end-to-end tests
	$(BIN)/pytest -m "not slow"

test-slurm: install $(SLURMCTLD)  ## the Slurm executor on a real single-node Slurm started in a temporary folder
	DERMAE_REQUIRE_SLURM=1 $(BIN)/pytest -m slurm tests/slurm

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install $(CHROMIUM)  ## benchmarks: print figures and ratios, assert nothing about time
	$(BIN)/python bench/import_speed.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/mae_speed.py
	$(BIN)/python bench/review_speed.py
	$(BIN)/python bench/review_load.py
	$(BIN)/python bench/review_browser.py
	$(BIN)/python bench/serve_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
