# kmsbridge: two commands on a fresh machine: `make demo` and `make test`.
# Every install step is here (virtualenv, Python packages, Kafka jars, helm, PostgreSQL, Prometheus),
# each idempotent, so CI on a clean clone does exactly what a developer does.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := .cache
KAFKA_LIBS := $(CACHE)/kafka/libs
HELM := $(CACHE)/bin/helm
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: install prereqs venv jars helm system-deps lint typecheck test test-unit test-integration \
        test-e2e test-chaos-smoke demo bench bench-reconcile chaos clean stack-down

install: prereqs venv jars

prereqs:
	@scripts/check-prereqs.sh

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

jars: $(KAFKA_LIBS)/.resolved
$(KAFKA_LIBS)/.resolved: tools/kafka/pom.xml
	@if [ -n "$$KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS" ]; then echo "using $$KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS; no local broker needed"; \
	else mvn -q -B -f tools/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(KAFKA_LIBS)) && touch $@; fi

helm: $(HELM)
$(HELM):
	GOBIN=$(abspath $(CACHE)/bin) go install helm.sh/helm/v3/cmd/helm@v3.22.0

system-deps:
	@scripts/install-system-deps.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports  # the floors of docs/architecture.md (pyproject.toml [tool.importlinter])

typecheck: lint

test-unit: venv
	$(PYTEST) tests/unit -q

test-integration: install system-deps helm
	$(PYTEST) tests/integration -q

test-e2e: install
	$(PYTEST) tests/e2e -q

test-chaos-smoke: install
	$(PYTEST) tests/chaos -q -m "not full"

test: install system-deps helm lint
	$(PYTEST) tests -q -m "not full" --timeout=900

demo: install
	$(BIN)/kmsbridge demo

chaos: install
	$(PYTEST) tests/chaos -q -s --timeout=3600 -m "chaos and full"

bench: install system-deps
	$(BIN)/python -m bench.run_all

bench-reconcile: install
	$(BIN)/python -m bench.reconcile

stack-down:
	-$(BIN)/kmsbridge stack down

clean: stack-down
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
