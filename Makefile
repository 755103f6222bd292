# `make run` and `make test` are all a fresh machine needs (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test lint bench crash-test

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python app.py

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

# Kill a real run after every store commit, resume, compare exports (benchmarks/CRASH.md).
crash-test: install
	$(BIN)/python -m benchmarks.crash
