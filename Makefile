# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := true
export FEAST_USAGE := False
# PORT= picks the port of `make feast-ui` (8888 by default) and `make mlflow-ui` (5000).
# The data dir whose Feast registry `make feast-ui` shows (engage writes its config there).
FEAST_DATA_DIR ?= $(or $(ENGAGE_DATA_DIR),data)

.DEFAULT_GOAL := help
.PHONY: help venv install install-dev run test test-fast test-scale test-reliability lint format mlflow-ui feast-ui serve clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[benchmarks]"
	@touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,benchmarks,scale]"
	@# The scale extra's Spark runs on a Java 17+ runtime: install Debian's when absent
	@# (best effort), then fail with the reason if there is still none.
	@command -v java >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		openjdk-17-jre-headless) >/dev/null 2>&1; } || true
	@java -version >/dev/null 2>&1 || { echo "Java is missing: the scale extra (pyspark) needs a Java 17+ runtime on PATH (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@v=$$(java -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p'); [ "$${v:-0}" -ge 17 ] || \
		{ echo "Java $$v found: the scale extra (pyspark 4) needs Java 17 or later"; exit 1; }
	@# redis-server for the Redis online-store tests (Debian package). Best effort: where
	@# apt is missing or not root, those tests skip and say why.
	@command -v redis-server >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
		>/dev/null 2>&1 || echo "redis-server not installed: the Redis online-store tests will skip"; }
	@# Headless Chromium for the report's browser test (Debian package). Best effort: where
	@# apt is missing or not root, the test skips and says why.
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		>/dev/null 2>&1 || echo "chromium not installed: the report's browser test will skip"; }
	@touch $@

venv: $(BIN)/python ## create the virtual environment (.venv)

install: $(STAMP) ## install the project and its runtime dependencies

install-dev: $(DEV_STAMP) ## install with the dev and scale extras (pytest, ruff, pyspark, redis; needs Java 17+)

run: $(STAMP) ## fresh machine -> full pipeline on the built-in demo data
	$(BIN)/engage run

test: $(DEV_STAMP) ## fresh machine -> lint + passing test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(DEV_STAMP) ## lint + the tests that need no trained pipeline (about a minute)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow and not scale"

test-scale: $(DEV_STAMP) ## the Spark (local[2]) and Redis tests: a redis-server on a free loopback port, started and stopped by the tests (about 6 min: README, Scale-out)
	$(BIN)/python -m pytest -q -m scale

test-reliability: $(DEV_STAMP) ## heavy cases: every kill point of every batch step, long API fuzzing, slow clients, every start-up failure, the end-to-end backtest (~40 min)
	$(BIN)/python -m pytest -q -m reliability_heavy

lint: $(DEV_STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

mlflow-ui: $(STAMP) ## browse runs and the model registry on 127.0.0.1:5000 (PORT=), the store training wrote
	$(BIN)/engage mlflow-ui --port $(or $(PORT),5000)

feast-ui: $(STAMP) ## browse Feast views, features, services on 127.0.0.1:8888 (PORT=, FEAST_DATA_DIR=)
	@test -f $(FEAST_DATA_DIR)/feast/feature_store.yaml || { echo "no Feast registry under $(FEAST_DATA_DIR): run engage features build"; exit 1; }
	$(BIN)/feast -c feature_repo -f $(FEAST_DATA_DIR)/feast/feature_store.yaml ui --host 127.0.0.1 --port $(or $(PORT),8888)

serve: $(STAMP) ## start the prediction service on 127.0.0.1
	$(BIN)/engage serve

clean: ## remove generated data (keeps the virtual environment)
	rm -rf data mlruns/mlflow.db mlruns/[0-9]* mlruns/models
