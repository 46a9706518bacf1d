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
# the type checker, pinned likewise; its settings live in mypy.ini
MYPY_SPEC ?= mypy==2.4.1

.PHONY: demo test bench lint docs docs-fast clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,torch,jax,bench,distributed,docs]" "$(RUFF_SPEC)" "$(MYPY_SPEC)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m diffsolve demo

# CI's gate: lint and a fast docs build first (they fail in seconds on a lint error or a broken
# docstring), then the test suite.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs-fast
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check diffsolve kernels tests bench docs
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:randomly tests/test_typing.py

# the documentation site: every gallery script runs, warnings are errors (docs/build.py)
docs: $(STAMP)
	$(PY) docs/build.py

# the same build without executing the gallery (API reference + guides), as CI runs it
docs-fast: $(STAMP)
	$(PY) docs/build.py --fast

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/api/generated docs/gallery docs/sg_execution_times.rst
