# `make run` starts the suite; `make test` installs everything and runs ruff, mypy, the unit
# tier and the integration tier.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
# pytest-xdist workers of the integration tier, each with its own database and bus prefix
# (measured on 2 cores: README, "Two commands").
TEST_WORKERS ?= 2

.PHONY: install run demo test lint typecheck pytest test-unit test-integration test-faults bench clean

# uv comes from PyPI into a private folder when it is not installed already.
.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

install: $(if $(shell command -v uv 2>/dev/null),,.tools/bin/uv)
	$(UV) sync --locked --all-packages

run: install
	deploy/run-local.sh

# `make run` in its own database with a sample store, the sandbox vendors and first syncs
# (README, "A demo store"); it starts over each time.
demo: install
	.venv/bin/python -m deploy.demo

# Ruff, and Redocly's `recommended` rules on the OpenAPI document segment-api serves (SPEC
# section 3: no error), printed to build/openapi.json without starting it.
lint: install node_modules/.package-lock.json
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	@mkdir -p build
	.venv/bin/python -m segment_api.print_openapi > build/openapi.json
	REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
	  node_modules/.bin/redocly lint --extends recommended build/openapi.json
	node deploy/tools/check-asyncapi.mjs docs/asyncapi.json

# Redocly's CLI from the npm registry, at the version package-lock.json pins.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

typecheck: install
	.venv/bin/mypy

# No PostgreSQL, RabbitMQ or services: seconds.
test-unit: install promtool
	.venv/bin/pytest tests/unit $(PYTEST_ARGS)

# Everything else, against the real PostgreSQL and RabbitMQ, in parallel. Tests are handed
# out one at a time, the long ones first (tests/fixtures/ordering.py), so the workers end
# together.
test-integration: install pgbouncer
	.venv/bin/pytest --ignore=tests/unit --ignore=tests/faults -n $(TEST_WORKERS) --maxschedchunk 1 $(PYTEST_ARGS)

# PgBouncer from Debian's packages for tests/shared/test_pgbouncer.py: installed when missing
# and we are root (CI); otherwise that test skips, saying why.
.PHONY: pgbouncer
pgbouncer:
	@test -x /usr/sbin/pgbouncer || command -v pgbouncer >/dev/null || [ "$$(id -u)" != 0 ] || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	       apt-get install -y -qq --no-install-recommends pgbouncer; } \
	  || echo "make: pgbouncer could not be installed; tests/shared/test_pgbouncer.py skips"

# promtool from Debian's prometheus package, for tests/unit/deploy/test_monitoring.py (alert
# rules and dashboard queries): installed when missing and we are root (CI); otherwise those
# tests skip, saying why. The package's server is not started where policy-rc.d forbids it
# (containers); elsewhere `systemctl disable --now prometheus` stops it.
.PHONY: promtool
promtool:
	@command -v promtool >/dev/null || [ "$$(id -u)" != 0 ] || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	       apt-get install -y -qq --no-install-recommends prometheus; } \
	  || echo "make: promtool could not be installed; the alert rule tests skip"

# Faults injected under a steady load (tests/faults): its own PostgreSQL cluster, a three-node
# RabbitMQ cluster, two replicas of each service. Minutes, one test at a time.
test-faults: install
	.venv/bin/pytest tests/faults $(PYTEST_ARGS)

pytest: test-unit test-integration

test: lint typecheck pytest test-faults

bench: install
	.venv/bin/python -m bench

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
