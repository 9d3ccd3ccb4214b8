# One source of truth for building, checking and testing; .ci/run and the README call these.
#   make run    — install everything into .venv and start the main job on the embedded defaults
#   make test   — install everything into .venv and run every check and test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CARGO_TARGET_DIR ?= $(HOME)/.cache/llama-orch-target
PARTS := core daemon cli pool

.PHONY: install postgres check lint typecheck contracts stubtest test pytest bench run clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r requirements-engine.txt
	$(BIN)/python -m pip install -q $(foreach p,$(wildcard $(PARTS)),-e ./$(p))

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd core && cargo fmt --check

typecheck:
	$(BIN)/mypy core/python/orchestrator_core
	MYPYPATH=daemon/src $(BIN)/mypy -p orchestratord
	MYPYPATH=cli/src $(BIN)/mypy -p llorch
	MYPYPATH=pool/src $(BIN)/mypy -p llorch_pool
	$(BIN)/python -m mypy.stubtest orchestrator_core._rhai

contracts:
	$(BIN)/lint-imports

check: lint typecheck contracts

pytest:
	$(BIN)/python -m pytest -q

# PostgreSQL server binaries (Debian's package) for the tests' throwaway clusters and the HA
# benchmark; `make run` needs none (SQLite).
postgres:
	bash scripts/install-postgres.sh

test: install postgres check pytest

bench: install postgres
	$(BIN)/python benchmarks/run_all.py

run: install
	$(BIN)/python examples/main_job.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
