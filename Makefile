# memeops — the two set-up commands are `make repro` and `make test`; each creates .venv and
# installs the pinned working set (requirements.lock) first, so either works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Offline switches and in-project tool state, from the one place that defines them.
RUNTIME_ENV = eval "$$($(BIN)/memeops env)" && export PATH="$(BIN):$$PATH"

.PHONY: install browser repro test test-fast bench verify ui serve mlflow-server flow lock clean help

help:
	@echo "make repro   - create .venv, install, run the DVC pipeline (dvc repro)"
	@echo "make test    - create .venv, install, run the test suite"
	@echo "make test-fast - unit tests only (-m 'not slow')"
	@echo "make bench   - the whole pipeline from scratch in a temp copy, timed per stage, + epoch ratio, serving latency -> reports/bench.{json,md}"
	@echo "make verify  - rebuild the pipeline in a temp copy, check every headline number against its committed"
	@echo "               interval (reports/comparison.csv, ablations.csv vs \$$VERIFY_BASELINE, HEAD); docs/reproducibility.md"
	@echo "make ui      - MLflow UI on the project's tracking store (http://127.0.0.1:5000)"
	@echo "make serve   - serve models:/memeops-\$$VARIANT@\$$ALIAS (gatedclip@champion, else @challenger) on http://127.0.0.1:\$$PORT (5001)"
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

# Headless Chromium for the report's browser test (tests/code/test_report_browser.py), from Debian's
# packages. Idempotent: nothing to do when `chromium` is on PATH. Without apt-get (or without root /
# sudo) it warns in one line and goes on; the test then skips, except under CI=true where it fails.
browser:
	@command -v chromium >/dev/null 2>&1 && exit 0; \
	warn() { echo "warning: chromium not installed ($$1); the report browser test will skip (and fail under CI=true)" >&2; exit 0; }; \
	command -v apt-get >/dev/null 2>&1 || warn "no apt-get"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else warn "not root and no sudo"; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	echo "installing chromium from Debian's packages (apt-get)"; \
	$$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	  || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || warn "apt-get install chromium failed"; \
	command -v chromium >/dev/null 2>&1 || warn "chromium still not on PATH"

repro: install
	$(RUNTIME_ENV) && dvc repro

test: install browser
	$(RUNTIME_ENV) && pytest

test-fast: install browser
	$(RUNTIME_ENV) && pytest -m "not slow"

# The whole default pipeline from scratch in a temp copy (stage times vs. the 20-minute budget, no-op
# repro, throughput), then the cached-vs-recomputed epoch, encoder probes and serving latency on that
# copy -> reports/bench.json + reports/bench.md (docs/bench.md). E.g. BENCH_ARGS="--keep".
BENCH_ARGS ?=
bench: install
	$(RUNTIME_ENV) && python -m benchmarks.run_all $(BENCH_ARGS)

# The rebuild check (docs/reproducibility.md): one `dvc repro` of the working tree's code in a temp copy
# (benchmarks.pipeline's copy, this venv; its bench JSON stays in the copy), then `memeops verify` of the
# copy's reports/ against $(VERIFY_BASELINE)'s; the copy is deleted either way. Exit 1 names the numbers
# outside their committed intervals.
VERIFY_BASELINE ?= HEAD
verify: install
	$(RUNTIME_ENV) && tmp="$$(mktemp -d -t memeops-verify-XXXXXX)" && trap 'rm -rf "$$tmp"' EXIT && \
	python -m benchmarks.pipeline --workdir "$$tmp" --keep --bench-file "$$tmp/bench.json" && \
	memeops verify --baseline "$(VERIFY_BASELINE)" --rebuilt "$$tmp/project/reports"

ui: install
	$(RUNTIME_ENV) && MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
		--backend-store-uri "$$MLFLOW_TRACKING_URI" --artifacts-destination "$(CURDIR)/mlartifacts" \
		--host 127.0.0.1 --port 5000 --workers 1

# A registered model behind MLflow's scoring server (POST /invocations, GET /ping; docs/serving.md),
# in this environment (no conda / virtualenv), on loopback. Per-image limits: MLFLOW_PYFUNC_INFERENCE_CONFIG.
VARIANT ?= gatedclip
ALIAS ?= champion
PORT ?= 5001
# ALIAS=champion (default) falls back to @challenger, and says so, while nothing is promoted yet.
serve: install
	$(RUNTIME_ENV) && uri="$$(memeops serve-uri $(VARIANT) --alias $(ALIAS))" && \
		mlflow models serve -m "$$uri" --host 127.0.0.1 --port $(PORT) --env-manager local

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

# The whole DVC pipeline through Prefect; e.g. make flow FLOW_ARGS="--stages tune@gatedclip"
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
