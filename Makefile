# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run run-execution2 test test-fast setup install lint bench lock clean airflow

run: $(INSTALLED)  ## Set up and run the Message Center (Airflow UI, scheduler, DAGs, push API)
	$(BIN)/mc run

run-execution2: $(INSTALLED)  ## A second execution instance (cell 1, port 8090) beside `make run`
	$(BIN)/mc run --profile execution2

test: $(INSTALLED)  ## Set up and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mc test -- $(PYTEST_ARGS)

test-fast: $(INSTALLED)  ## The fast tier in seconds: ruff, import layers, tests marked fast (no database)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -m fast -q $(PYTEST_ARGS)

bench: $(INSTALLED)  ## Benchmarks: every stage next to its bare limit, one table (BENCH_ARGS=--quick)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(INSTALLED)

setup: $(INSTALLED)  ## Start the embedded PostgreSQL, migrate, load airflow_settings.yaml
	$(BIN)/mc setup

lint: $(INSTALLED)  ## ruff, and the import layers (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

lock:  ## Re-resolve requirements.txt into requirements.lock (needs the package index)
	rm -rf /tmp/mc-lock-venv && $(PYTHON) -m venv /tmp/mc-lock-venv
	/tmp/mc-lock-venv/bin/pip install --quiet -r requirements.txt
	/tmp/mc-lock-venv/bin/pip freeze --exclude-editable | sort > requirements.lock

clean:  ## Stop this checkout's embedded PostgreSQL, remove the virtualenv and all local state
	if [ -x $(BIN)/mc ] && [ -d .mc/postgres ]; then $(BIN)/mc stop; fi
	rm -rf $(VENV) .mc
