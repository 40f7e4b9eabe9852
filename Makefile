# Set-up and the two README commands. torch is pinned to the CPU build on disk here;
# a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: setup setup-test demo test bench

setup:
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[data]"

setup-test:
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"

demo: setup
	$(PYTHON) -m diffinfer.cli demo --out demo.png

test: setup-test
	$(PYTHON) -m pytest tests
