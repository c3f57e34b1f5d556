# fenrec-dist: `make demo` and `make test` set everything up on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all bench clean report

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[cpu,test]"
	@touch $(STAMP)

install: $(STAMP)

# Warm DeepSpeed's one-off CPU op build so no single test pays for it.
$(VENV)/.ds-warm: $(STAMP)
	$(PY) -m fenrec_dist.distributed.warmup
	@touch $@

demo: $(STAMP) $(VENV)/.ds-warm
	$(VENV)/bin/fenrec demo

# The fast tier: unit and small integration tests, in-process CLI calls, gloo process groups;
# no Ray cluster, no Tune sweep, no subprocess training (those are `ray` or `slow`).
test: $(STAMP) $(VENV)/.ds-warm
	$(PY) -m pytest -q -m "not slow and not ray" --timeout=600 --durations=25

# Every tier: Ray Train runs (one worker equals one process, a killed worker resumes), Tune
# sweeps, `ray job submit` against a real local head, subprocess CLI runs. CI runs this.
test-all: $(STAMP) $(VENV)/.ds-warm
	$(PY) -m pytest -q --timeout=3600 --durations=25

# README results table and results/valid_curves.png from results/ (see results/README.md).
report: $(STAMP)
	$(VENV)/bin/fenrec report

clean:
	rm -rf $(VENV) runs data .pytest_cache
