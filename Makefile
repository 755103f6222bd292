# `make run` and `make test` are all a fresh machine needs (see README).
# Dependencies live in pyproject.toml; requirements.txt (runtime) and requirements-dev.txt (tests,
# lint) are generated from it (`python -m tests.test_packaging --write`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-dev run test lint bench crash-test

# the app's and the CLI's dependencies only
$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# plus pytest, playwright, ruff (requirements-dev.txt includes requirements.txt)
$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

run: install
	$(BIN)/python app.py

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: install-dev
	$(BIN)/ruff check .

# Kill a real run after every store commit, resume, compare exports (benchmarks/CRASH.md).
crash-test: install
	$(BIN)/python -m benchmarks.crash
