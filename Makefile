# One entry point for set-up, run and checks. Every target creates .venv when it is missing.
# `make run` serves with `python -m fhir_service` (fhir_service/serve.py): HOST/PORT from the
# environment (or `make run PORT=9000`), one worker per core unless FHIR_SERVICE_WORKERS is set,
# and FHIR_SERVICE_PUBLIC_BASE_URL defaulting to http://<HOST>:<PORT>.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
LINT_PATHS := $(wildcard fhir_service tests bench scripts examples)

.PHONY: install run test lint fmt typecheck pytest lock bench fuzz examples clean system-deps browser-deps forms-deps tools-deps k8s-check valuesets

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

forms-deps:
	@bash scripts/browser-deps.sh --lforms-only

# checkov in its own venv (.venv-tools, pinned by requirements-tools.lock).
tools-deps:
	@bash scripts/tools-deps.sh

# The Kubernetes manifests: schemas (offline) and the security linter (docs/deployment.md).
k8s-check: install tools-deps
	$(BIN)/kubernetes-validate --strict --quiet $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/base/*.yaml))
	.venv-tools/bin/checkov --quiet --compact --skip-download --framework kubernetes -d deploy/kubernetes/base

browser-deps: install
	@bash scripts/browser-deps.sh

run: install forms-deps
	FHIR_SERVICE_AUTH=off \
	FHIR_SERVICE_FHIR_SERVER_ALLOWLIST='*,http://127.0.0.1,http://localhost' \
	HOST='$(HOST)' PORT='$(PORT)' $(BIN)/python -m fhir_service

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

fmt: install
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

typecheck: install
	$(BIN)/mypy fhir_service

pytest: install system-deps browser-deps tools-deps
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

test: lint typecheck pytest

lock: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

bench: install
	$(BIN)/python -m bench.run

fuzz: install
	FUZZ_EXAMPLES=2000 $(BIN)/pytest tests/fuzz -p no:cacheprovider

# Authoring: recompute every ValueSet expansion from its compose (ICD-10-CM from the FY2026
# tabular list); TX=<FHIR base> first refreshes the SNOMED CT enumerations from that server's
# $expand. Review the diff of definitions/ before committing (docs/terminology.md).
valuesets: install
	$(BIN)/python -m fhir_service.tools.expand_valuesets $(if $(TX),--terminology-server $(TX))

examples: install
	$(BIN)/python examples/run_examples.py

clean:
	rm -rf $(VENV) .venv-tools .pytest_cache .mypy_cache .ruff_cache .coverage
