# `make run` starts the suite; `make test` installs everything and runs ruff, mypy and pytest.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=

.PHONY: install run test lint typecheck pytest bench clean

# uv comes from PyPI into a private folder when it is not installed already.
.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

install: $(if $(shell command -v uv 2>/dev/null),,.tools/bin/uv)
	$(UV) sync --locked --all-packages

run: install
	deploy/run-local.sh

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: install
	.venv/bin/mypy

pytest: install
	.venv/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	.venv/bin/python -m bench

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
