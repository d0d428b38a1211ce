# kube-dispatcher: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else is a step they depend on. Requires python3 (>= 3.11, with venv), go (>= 1.26.7)
# and make, and network access to PyPI and the Go module proxy.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-noprov lint unit stack-build stack-up stack-down bench clean

# The airflow extra is installed too: tests/airflow runs DAGs with the real Airflow.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,airflow]'
	@touch $@

# The same environment without the cncf provider, and so with the kubernetes client a
# dispatcher-only install gets (37.x): a copy of .venv (a copied venv works when run as
# `python -m`), less the provider. A few seconds; no other download than kubernetes.
NOPROV       := .venv-noprov
NOPROV_STAMP := $(NOPROV)/.installed
$(NOPROV_STAMP): $(STAMP)
	rm -rf $(NOPROV) && cp -a $(VENV) $(NOPROV) && rm -f $(NOPROV)/.installed
	$(NOPROV)/bin/python -m pip uninstall --quiet --yes apache-airflow-providers-cncf-kubernetes kubernetes_asyncio
	$(NOPROV)/bin/python -m pip install --quiet 'kubernetes>=37'
	@touch $@

## Build (or find cached) the test stack's Go binaries: kube-apiserver, kube-scheduler, etcd, kwok,
## vault, helm, prometheus and promtool (the monitoring tests' server and rule checker).
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

## Without the cncf provider (kubernetes 37.x): the unit tests, the cluster connection and
## the credentials on the stack, and the Airflow tests that parse or run DAGs without the
## provider (a KPO example DAG with its imports changed among them).
test-noprov: $(NOPROV_STAMP) stack-build
	$(NOPROV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests/unit \
		tests/clusters/test_connection.py \
		tests/airflow/test_kpo_parameters.py tests/airflow/test_isolation.py \
		tests/airflow/test_example_dags.py tests/airflow/test_kpo_example.py \
		tests/airflow/test_pod_template.py tests/airflow/test_job_operator.py \
		tests/airflow/test_job_parameters.py tests/airflow/test_decorators.py tests/credentials

## Everything CI runs: static checks, the whole suite against the real stack (with the
## cncf provider, kubernetes 36.x, as DAG authors have it), then test-noprov.
## TEST_WORKERS pytest-xdist workers, each with its own stack; a file stays on one worker.
TEST_WORKERS ?= 2
test: lint stack-build
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) test-noprov

## The demo: brings up the stack, starts the dispatcher, routes a mix of tasks.
demo: stack-build
	$(BIN)/python -m demo

bench: stack-build
	$(BIN)/python -m benchmarks.bench_routing

clean: stack-down
	rm -rf $(VENV) $(NOPROV) .stack
