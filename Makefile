# memeops — the two set-up commands are `make repro` and `make test`; each creates .venv and
# installs the pinned working set (requirements.lock) first, so either works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Offline switches and in-project tool state, from the one place that defines them.
RUNTIME_ENV = eval "$$($(BIN)/memeops env)" && export PATH="$(BIN):$$PATH"

.PHONY: install repro test test-fast bench ui serve mlflow-server flow lock clean help

help:
	@echo "make repro   - create .venv, install, run the DVC pipeline (dvc repro)"
	@echo "make test    - create .venv, install, run the test suite"
	@echo "make test-fast - unit tests only (-m 'not slow')"
	@echo "make bench   - benchmarks (after make repro) -> reports/bench.json"
	@echo "make ui      - MLflow UI on the project's tracking store (http://127.0.0.1:5000)"
	@echo "make serve   - serve models:/memeops-\$$VARIANT@\$$ALIAS (gatedclip@champion) on http://127.0.0.1:\$$PORT (5001)"
	@echo "               POST /invocations; docs/serving.md"
	@echo "make mlflow-server - MLflow tracking server for many clients (loopback; MLFLOW_BACKEND_STORE_URI /"
	@echo "               MLFLOW_ARTIFACTS_DESTINATION for Postgres + S3; docs/scaleout.md)"
	@echo "make flow    - the DVC pipeline as a Prefect flow (python -m flows.pipeline \$$FLOW_ARGS)"
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

# A registered model behind MLflow's scoring server (POST /invocations, GET /ping; docs/serving.md),
# in this environment (no conda / virtualenv), on loopback. Per-image limits: MLFLOW_PYFUNC_INFERENCE_CONFIG.
VARIANT ?= gatedclip
ALIAS ?= champion
PORT ?= 5001
serve: install
	$(RUNTIME_ENV) && mlflow models serve -m "models:/memeops-$(VARIANT)@$(ALIAS)" \
		--host 127.0.0.1 --port $(PORT) --env-manager local

# The tracking server for several clients (they set MLFLOW_TRACKING_URI=http://<host>:<port>).
# Defaults: the project's sqlite store and mlartifacts/, on loopback. Overrides (docs/scaleout.md):
#   MLFLOW_BACKEND_STORE_URI=postgresql://user:pass@db:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlflow   (AWS_* credentials in the server's environment)
#   MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000 MLFLOW_WORKERS=4 MLFLOW_ALLOWED_HOSTS=mlflow.internal:5000
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 2
mlflow-server: install
	$(RUNTIME_ENV) && MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
		--backend-store-uri "$${MLFLOW_BACKEND_STORE_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--artifacts-destination "$${MLFLOW_ARTIFACTS_DESTINATION:-$(CURDIR)/mlartifacts}" \
		--serve-artifacts --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		$${MLFLOW_ALLOWED_HOSTS:+--allowed-hosts "$$MLFLOW_ALLOWED_HOSTS"}

# The whole DVC pipeline through Prefect; e.g. make flow FLOW_ARGS="--stages train@gatedclip"
FLOW_ARGS ?=
flow: install
	$(RUNTIME_ENV) && python -m flows.pipeline $(FLOW_ARGS)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf .cache .prefect .pytest_cache
