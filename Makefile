# Two commands for a fresh machine; each first creates .venv from requirements.txt if it is missing
# (torch's CUDA build: about 5.5 GB, 2 minutes).
#
#   make figure1     the synthetic experiments of the report's Figure 1 (about 5 s on 2 CPU cores)
#   make test        the whole test suite, as CI runs it (about 7 minutes on 2 CPU cores)
#   make test-fast   the tests without the end-to-end runs (about a minute)
#
# And one that uses $(PYTHON) as it is, no venv, nothing installed (docs/speed.md):
#
#   make gpu-check PYTHON=python3   on a CUDA machine, in at most 8 minutes: the CUDA test tier, a --quick
#                    grid with --per-gpu and the benchmark, into $OUT or results/gpu-check/; without CUDA
#                    one line and exit status 0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: figure1 test test-fast gpu-check

figure1: $(VENV)/installed
	$(PY) synthetic_long_servedio.py
	$(PY) synthetic_ding.py

test: $(VENV)/installed
	$(PY) -m pytest -q

test-fast: $(VENV)/installed
	$(PY) -m pytest -q -m "not slow"

gpu-check:
	@$(PYTHON) gpu_check.py

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@
