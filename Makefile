# The two commands of the README, and the pieces they are made of.
#   make up    create .venv, install, start every service and the edge
#   make test  create .venv, install, run every check and the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# buf (proto lint and breaking checks) from the npm package, pinned, in a tool dir of the venv.
BUF_VERSION := 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
INSTALL_BUF = test "$$($(BUF) --version 2>/dev/null)" = $(BUF_VERSION) || npm install --no-save --no-audit --no-fund --loglevel=error --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION) >/dev/null

.PHONY: up test pytest generate
.PHONY: proto-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(INSTALL_BUF)
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/interlock up $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

generate: $(STAMP)
	$(BIN)/python protos/generate.py

# Lint the protos and check them for breaking changes against HEAD and HEAD~1.
proto-check: $(STAMP)
	$(INSTALL_BUF)
	bash protos/check.sh
