# The README's two commands: `make demo` and `make test`. Both build the virtual environment
# on first use (and again whenever setup.cfg or pyproject.toml change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the CPU build that this project's machines carry on disk; any torch>=2.1 works.
TORCH_SPEC ?= torch==2.13.0
# ruff is pinned here and only here, so `make lint` gives the same verdict on every machine.
RUFF_SPEC ?= ruff==0.17.6

.PHONY: demo test bench lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,torch,jax,bench]" "$(RUFF_SPEC)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m diffsolve demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check diffsolve kernels tests bench

clean:
	rm -rf $(VENV) build *.egg-info
