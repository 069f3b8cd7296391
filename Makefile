# DerMAE Studio. `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Browser tests drive Debian's chromium (Playwright cannot download browsers here).
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PROFILE ?= cpu64
DATASET ?=

.PHONY: install demo serve train test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "the browser tests need chromium at $(CHROMIUM)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

demo: install  ## engine + studio on the default data (HAM10000, else DermaMNIST, else phantom; DERMAE_DATA picks)
	$(BIN)/dermae demo $(if $(filter command line environment,$(origin PROFILE)),--profile $(PROFILE))

serve: install  ## the Gradio demo of the student the studio serves (MODEL=export folder: serve that one, no engine)
	$(BIN)/python -m studio.demo $(if $(MODEL),--model $(MODEL))

train: install  ## MAE + teacher + every arm on the newest version (DATASET=, SEEDS=, REAL_FRACTION=, EXTERNAL=)
	$(BIN)/dermae train --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(REAL_FRACTION),--real-fraction $(REAL_FRACTION)) $(if $(EXTERNAL),--external $(EXTERNAL))

test: install $(CHROMIUM)  ## lint, then the whole suite (slow end-to-end and browser tests included)
	$(BIN)/ruff check .
	$(BIN)/pytest

test-fast: install  ## the suite without the slow end-to-end tests
	$(BIN)/pytest -m "not slow"

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
