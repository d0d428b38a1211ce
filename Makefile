# kube-dispatcher: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else is a step they depend on. Requires python3 (>= 3.11, with venv), go (>= 1.26.7)
# and make, and network access to PyPI and the Go module proxy.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-provider lint unit stack-build stack-up stack-down bench clean

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

## In the environment DAG authors have (the cncf provider, so kubernetes 36.x): the tests
## marked `generation`, i.e. whose code depends on the provider or on the client's generation
## (Kubernetes model objects in DAGs, the provider's parameters, the ApiClient the credential
## code builds, the kubeconfig loader, the raw GET of the dependency informers). The rest
## (Vault-only credential tests, DAG runs that use no model object) ran already on 37.x.
test-provider: $(STAMP) stack-build
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m generation \
		tests/airflow tests/credentials tests/clusters tests/smoke/test_compare_benchmark.py

## Everything CI runs: static checks (mypy under both client generations), the whole suite
## against the real stack without the cncf provider, on kubernetes 37.x as the service's
## image installs it, then test-provider. TEST_WORKERS pytest-xdist workers, each with its
## own stack; a file stays on one worker.
TEST_WORKERS ?= 2
test: lint stack-build $(NOPROV_STAMP)
	$(NOPROV)/bin/python -m mypy --strict --cache-dir .mypy_cache/noprov dispatcher
	$(NOPROV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) test-provider

## The demo: brings up the stack, starts the dispatcher, routes a mix of tasks.
demo: stack-build
	$(BIN)/python -m demo

bench: stack-build
	$(BIN)/python -m benchmarks.bench_routing

clean: stack-down
	rm -rf $(VENV) $(NOPROV) .stack
