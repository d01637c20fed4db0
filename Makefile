# labgate — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/demo.yaml

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/labgate run --config $(CONFIG)

# The storage and delivery tests run on SQLite and on a real PostgreSQL server, which
# scripts/postgres.sh installs (Debian's package) and starts on loopback.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check protocols drivers middleware simulators tests benchmarks
	$(BIN)/mypy
	LABGATE_TEST_POSTGRES="$$(bash scripts/postgres.sh start)" $(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check protocols drivers middleware simulators tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/e2e.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis .mypy_cache .ruff_cache
