# The README's two commands:  make run  (set up + run the pipeline)  and  make test  (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test bench benchmark-pneumoniamnist rehearsal mlflow-server

$(BIN)/.lungxray-installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/.lungxray-installed

run: setup
ifneq ($(CONFIG),)
	cp $(CONFIG) params.yaml
	@echo "params.yaml <- $(CONFIG)"
endif
	lungxray check-params  # every section at once: each stage reads only its own
	dvc repro

# pytest exits 5 when it collects no test: that is not a failure of the suite
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" && rc=0; exit $$rc

# PneumoniaMNIST on its official splits, offline from ../shared/data, results written into docs/benchmarks.md
benchmark-pneumoniamnist: setup
	cp configs/pneumoniamnist.yaml params.yaml
	@echo "params.yaml <- configs/pneumoniamnist.yaml"
	lungxray check-params
	dvc repro
	$(BIN)/python benchmarks/pneumoniamnist/report.py --update-docs

# the default recipe (nine architectures at 224 px) rehearsed on the CPU over a subset of ../shared/data, with local
# weight files standing in for ImageNet's (configs/rehearsal.yaml); about 45 min on 2 cores; then predict with --cam
rehearsal: setup
	cp configs/rehearsal.yaml params.yaml
	@echo "params.yaml <- configs/rehearsal.yaml"
	$(BIN)/python benchmarks/rehearsal/make_weights.py --params params.yaml
	lungxray check-params
	$(BIN)/python benchmarks/rehearsal/run.py

# a team MLflow server: PostgreSQL store (local, in mlflow-server/postgres) and served artifacts, on 127.0.0.1:5000;
# options after ARGS, e.g. make mlflow-server ARGS="--auth --host 0.0.0.0"  (lungxray mlflow-server --help)
mlflow-server: setup
	lungxray mlflow-server $(ARGS)
