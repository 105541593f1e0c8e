# The two commands of the README, and the pieces they are made of.
#   make up    create .venv, install, start every service and the edge
#   make test  create .venv, install, run every check and the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# buf (proto lint and breaking checks) from the npm package, pinned, in a tool dir of the venv.
# Only the checks need it, so `make up` works without npm.
BUF_VERSION := 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
INSTALL_BUF = test "$$($(BUF) --version 2>/dev/null)" = $(BUF_VERSION) || npm install --no-save --no-audit --no-fund --loglevel=error --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION) >/dev/null

.PHONY: up test generate proto-check lint typecheck pytest bench-ratelimit

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/interlock up $(ARGS)

# Every check, cheapest first, then the suite with its coverage floor.
test: lint typecheck proto-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Lint the protos and check them for breaking changes against HEAD and HEAD~1.
proto-check: $(STAMP)
	$(INSTALL_BUF)
	bash protos/check.sh

# The coverage floor: what the suite meets today; later work keeps it.
COVERAGE_FLOOR := 90

pytest: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR) $(PYTEST_ARGS)

generate: $(STAMP)
	$(BIN)/python protos/generate.py

# The ratelimit decision benchmark (bench/README.md): the real service over gRPC,
# 10 s per backend after a 2 s warm-up, memory then Redis (redis://127.0.0.1:6379/0
# unless BENCH_ARGS says --redis-url). More flags through BENCH_ARGS, such as
# BENCH_ARGS='--backend memory --json bench.json'.
bench-ratelimit: $(STAMP)
	$(BIN)/python -m bench.ratelimit --seconds 10 --warmup 2 --concurrency 32 $(BENCH_ARGS)

# The usage ledger benchmark (bench/README.md): loads a fresh SQLite ledger of 1M and then
# 10M events and times the usage reports on the hourly rollups against the same GROUP BY on
# the raw events. For PostgreSQL: BENCH_ARGS='--backend postgres --database-url postgresql://…'
# (BENCH_ARGS' --events replaces the sizes, e.g. BENCH_ARGS='--events 100000').
.PHONY: bench-usage
bench-usage: $(STAMP)
	$(BIN)/python -m bench.usage_stats --events 1000000 10000000 --backend sqlite $(BENCH_ARGS)

# The gateway overhead benchmark (bench/README.md): a mock upstream straight, through Interlock
# and through LiteLLM proxy (installed into .venv-litellm by bench/litellm/setup.sh on first use),
# interleaved, 3 repetitions of 10 s runs. BENCH_ARGS='--quick', '--skip-litellm', '--json out.json'.
.PHONY: bench-gateway
bench-gateway: $(STAMP)
	$(BIN)/python -m bench.gateway --reps 3 --seconds 10 $(BENCH_ARGS)

# Where Interlock's CPU goes under chat at 64 connections: py-spy on every process (bench/README.md).
.PHONY: bench-profile
bench-profile: $(STAMP)
	$(BIN)/python -m bench.profile_gateway --seconds 15 $(BENCH_ARGS)
