# memeops — the two set-up commands are `make repro` and `make test`; each creates .venv and
# installs the pinned working set (requirements.lock) first, so either works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Offline switches and in-project tool state, from the one place that defines them.
RUNTIME_ENV = eval "$$($(BIN)/memeops env)" && export PATH="$(BIN):$$PATH"

.PHONY: install repro test test-fast bench ui lock clean help

help:
	@echo "make repro   - create .venv, install, run the DVC pipeline (dvc repro)"
	@echo "make test    - create .venv, install, run the test suite"
	@echo "make test-fast - unit tests only (-m 'not slow')"
	@echo "make bench   - benchmarks (after make repro) -> reports/bench.json"
	@echo "make ui      - MLflow UI on the project's tracking store (http://127.0.0.1:5000)"
	@echo "make lock    - re-resolve requirements.in into requirements.lock"

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

repro: install
	$(RUNTIME_ENV) && dvc repro

test: install
	$(RUNTIME_ENV) && pytest

test-fast: install
	$(RUNTIME_ENV) && pytest -m "not slow"

bench: install
	$(RUNTIME_ENV) && python -m benchmarks.train_epoch && python -m benchmarks.encoder_probe

ui: install
	$(RUNTIME_ENV) && MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
		--backend-store-uri "$$MLFLOW_TRACKING_URI" --artifacts-destination "$(CURDIR)/mlartifacts" \
		--host 127.0.0.1 --port 5000 --workers 1

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf .cache .prefect .pytest_cache
