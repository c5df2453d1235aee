# The two commands: `make run` (the board, with everything it needs) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two pytest workers, each with its own Prefect server, Redis database and SQLite file: most
# of a test's time is spent waiting for Prefect, flows and the browser, not on the CPU.
TEST_WORKERS ?= 2

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m reslock_web.launcher

# First what the machine must have (Chromium, Redis, venv): installed with apt-get as root,
# else one line saying what to install, within seconds.
test:
	$(PYTHON) -m tests.support.machine
	@$(MAKE) --no-print-directory $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var tests/artifacts
