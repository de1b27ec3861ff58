# Two commands on a fresh machine (Python 3.11):  make pipeline   and   make test
# Both create the project-local environment (.venv) if it is missing, and are idempotent.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: pipeline test env smoke dvc-yaml

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,slurm]'
	@rm -f $(VENV)/.installed-*
	@touch $@

env: $(STAMP)

pipeline: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores 8

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest

smoke: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores 2 --config params=workflow/params/smoke.yaml

dvc-yaml: $(STAMP)
	$(VENV)/bin/python -m lwpar.pipeline dvc
