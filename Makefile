# Two commands for a fresh machine; each first creates .venv from requirements.txt if it is missing
# (torch's CUDA build: about 5.5 GB, 2 minutes).
#
#   make figure1     the synthetic experiments of the report's Figure 1 (about 5 s on 2 CPU cores)
#   make test        the whole test suite, as CI runs it, in two pytest-xdist workers (5 min 17 s on
#                    2 CPU cores; one process, `python -m pytest -q`, takes about 7 minutes)
#   make test-fast   the tests without the end-to-end runs (-m "not slow"): about 30 s (40 s in one process)
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

# The suite in two pytest-xdist workers: one process leaves a core idle while its tests wait on the
# processes they start (measured on 2 cores: 5 min 17 s with -n 2 on a clean clone, 7 min 12 s in one
# process; CPU time 450-500 s, a third of the old suite's 1,693 s; -n 3 was slower). Tests that share an expensive fixture (xdist_group marks) run in one worker (--dist loadgroup).
# A plain command, so that Ctrl-C or a signal to make stops pytest and its workers, and the tests'
# processes, with nothing left behind (test_reliability.py checks).
# TESTS: a selection, e.g. make test TESTS=test_losses.py
TESTS ?=

test: $(VENV)/installed
	$(PY) -m pytest -q -n 2 --dist loadgroup $(TESTS)

test-fast: $(VENV)/installed
	$(PY) -m pytest -q -n 2 -m "not slow" $(TESTS)

# make gpu-check MINUTES=6 ARGS="--device cpu": its time limit and arguments (python3 gpu_check.py --minutes 6 ...)
MINUTES ?=
ARGS ?=

gpu-check:
	@$(PYTHON) gpu_check.py $(if $(MINUTES),--minutes $(MINUTES)) $(ARGS)

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@
