# Two commands for a fresh machine; each first creates .venv from requirements.txt if it is missing
# (torch's CUDA build: about 5.5 GB, 2 minutes).
#
#   make figure1     the synthetic experiments of the report's Figure 1 (about 5 s on 2 CPU cores)
#   make test        the whole test suite, as CI runs it, in two streams at once (about 15 minutes on
#                    2 CPU cores; one stream, `python -m pytest -q`, takes about 19)
#   make test-fast   the tests without the end-to-end runs
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

# Two streams of test files at once: most tests wait on the child processes they start (run_all.sh, a
# training script, torch's import), so one stream leaves a core idle, and CI has 20 minutes. The
# halves take about equal time; each has its own temporary folder; the first's output follows the
# second's; the status fails if either does; Ctrl-C stops both.
SUITE_A := test_reliability.py test_golden.py test_catalog.py test_gpu_check.py test_losses.py test_structure.py \
           test_synthetic.py
SUITE_B := $(filter-out $(SUITE_A),$(sort $(wildcard test_*.py)))

test: $(VENV)/installed
	@tmp=$$(mktemp -d); trap 'kill 0; rm -rf "$$tmp"' INT TERM; \
	$(PY) -m pytest -q --basetemp="$$tmp/a" $(SUITE_A) > "$$tmp/a.log" 2>&1 & a=$$!; \
	$(PY) -m pytest -q --basetemp="$$tmp/b" $(SUITE_B); b=$$?; \
	wait $$a; ra=$$?; echo "--- $(SUITE_A)"; cat "$$tmp/a.log"; rm -rf "$$tmp"; \
	[ $$ra -eq 0 ] && [ $$b -eq 0 ]

test-fast: $(VENV)/installed
	$(PY) -m pytest -q -m "not slow"

gpu-check:
	@$(PYTHON) gpu_check.py

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@
