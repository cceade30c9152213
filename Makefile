# Two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-deep test-pythons test-bundled-sqlite lint typecheck pytest bench check-sdist export-core clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples tools
	$(BIN)/ruff format --check src tests bench examples tools

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs in parallel worker processes (pytest-xdist): one per CPU, and
# worksteal hands a waiting worker the tests another has not started yet, so the
# slow ones do not pile up on one worker. `make test PYTEST_WORKERS=0` runs it in
# this process alone (for pdb, or to compare).
PYTEST_WORKERS ?= auto
PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)

pytest: $(STAMP)
	$(BIN)/pytest $(PARALLEL)

test: lint typecheck pytest

# The quick loop while developing: every test but those marked slow.
test-fast: $(STAMP)
	$(BIN)/pytest $(PARALLEL) -m "not slow"

# The property tests under the deep Hypothesis profile: 25 times the examples, fresh
# ones on every run (CI's profile is derandomised); what fails is kept in .hypothesis.
test-deep: $(STAMP)
	$(BIN)/pytest $(PARALLEL) -m hypothesis --hypothesis-profile=deep

# The suite again on Python 3.12 and 3.13 where installed (CI runs it after `make test`).
test-pythons:
	PYTEST_WORKERS=$(PYTEST_WORKERS) tools/test-other-pythons.sh

# The suite again with the whole process on the SQLite bundled in pysqlite3 (the
# bundled-sqlite extra, CF_DB_SQLITE=bundled; CI runs it after `make test`). The package's
# pytest plugin (entry point cf_db) imports it as pytest starts, so the switch comes before
# conftest.py and the test modules import sqlite3; test_bundled_sqlite.py checks it did.
test-bundled-sqlite: $(STAMP)
	CF_DB_SQLITE=bundled $(BIN)/pytest -p no:cacheprovider $(PARALLEL)

bench: $(STAMP)
	$(BIN)/python -m bench

# The whole suite again from an unpacked sdist (what a packager downloads).
check-sdist: $(STAMP)
	tools/check-sdist.sh $(BIN)/python

# Put circuitforge_core.db into a circuitforge-core checkout (docs/upgrading.md, "For
# circuitforge-core maintainers"): make export-core CORE=../circuitforge-core [VERSION=0.22.0]
export-core: $(STAMP)
	@test -n "$(CORE)" || { echo "usage: make export-core CORE=path/to/circuitforge-core [VERSION=x.y.z] [CHECK=1]"; exit 2; }
	$(BIN)/python tools/export_to_core.py $(if $(VERSION),--version $(VERSION)) $(if $(CHECK),--check) $(CORE)

clean:
	rm -rf $(VENV) .venv-3.12 .venv-3.13 .pytest_cache .mypy_cache .ruff_cache .hypothesis
