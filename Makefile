# kube-dispatcher: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else is a step they depend on. Requires python3 (>= 3.11) and go (>= 1.25).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit stack-build stack-up stack-down bench clean

# The airflow extra is installed too: tests/airflow runs DAGs with the real Airflow.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,airflow]'
	@touch $@

## Build (or find cached) the test stack's Go binaries: kube-apiserver, kube-scheduler, etcd, kwok, vault, helm.
stack-build: $(STAMP)
	$(BIN)/python -m tests.stack build

stack-up: stack-build
	$(BIN)/python -m tests.stack up

stack-down: $(STAMP)
	$(BIN)/python -m tests.stack down

## Static checks: ruff, mypy --strict on dispatcher/, import-linter layer contracts.
lint: $(STAMP)
	$(BIN)/ruff check dispatcher tests benchmarks demo examples
	$(BIN)/ruff format --check dispatcher tests benchmarks demo examples
	$(BIN)/mypy --strict dispatcher
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

## Everything CI runs: static checks, then the whole suite against the real stack.
## TEST_WORKERS pytest-xdist workers, each with its own stack; a file stays on one worker.
TEST_WORKERS ?= 2
test: lint stack-build
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

## The demo: brings up the stack, starts the dispatcher, routes a mix of tasks.
demo: stack-build
	$(BIN)/python -m demo

bench: stack-build
	$(BIN)/python -m benchmarks.bench_routing

clean: stack-down
	rm -rf $(VENV) .stack
