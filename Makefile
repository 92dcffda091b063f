# xshim: build foreign-architecture container images on hosts without binfmt_misc.
#
#   make demo    install what is needed, then xshim build the example for amd64+arm64 (no binfmt)
#   make test    install what is needed, then run the whole test suite (lint, unit, integration)
#   make check   the pure and quick tests only (lint and unit tests; no root, qemu or builders)
#   make bench   the benchmark against binfmt (in a private user namespace), raw qemu and proot -q
#   make lint    ruff and mypy only

PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: deps demo test check unit lint bench clean

deps:
	sh .ci/install-deps

demo: deps
	sh examples/run-example.sh

test: deps
	$(PYTHON) -m pytest -v -ra $(PYTEST_ARGS) tests

check: deps
	$(PYTHON) -m pytest -q -ra -m "not integration and not docker and not slow" tests

unit: check

lint: deps
	$(PYTHON) -m pytest -v tests/test_lint.py

bench: deps
	$(PYTHON) bench/run.py

clean:
	rm -rf build dist .xshim *.egg-info .pytest_cache .mypy_cache .ruff_cache
