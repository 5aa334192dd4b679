# Two commands a new user needs: `make demo` and `make test` (README.md).
# Both build their own virtual environment (.venv) and JavaScript dependencies
# (node_modules). Each install step prints one line; a tool's own output is shown only
# when it fails (scripts/quietly.sh).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The package with its runtime dependencies (enough for the demo), and with its test ones.
DEMO_STAMP := $(VENV)/.installed-demo
STAMP      := $(VENV)/.installed
NPM        := $(shell command -v npm 2>/dev/null)
STEP       := scripts/quietly.sh
# `make demo PORT=9000`: the demo's HTTP port (8080 otherwise, from demos/sockway.toml).
PORT ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench bench-perf system-deps clean

$(BIN)/python:
	@$(STEP) "creating $(VENV) (a Python virtual environment)…" $(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml setup.py | $(BIN)/python
	@$(STEP) "installing sockway and its Python packages into $(VENV) (pip)…" $(BIN)/pip install -e .
	@touch $@

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	@$(STEP) "installing sockway with its Python test packages into $(VENV) (pip)…" $(BIN)/pip install -e '.[test]'
	@touch $@ $(DEMO_STAMP)

node_modules/.package-lock.json: package.json
	@$(STEP) "installing sockjs-client and the benchmarks' peers into node_modules (npm)…" \
	  npm install --no-audit --no-fund
	@touch $@

## Run the gateway with the demos on 127.0.0.1:8080 (memory broker, no services needed).
## Without npm, the pages load sockjs-client from a CDN (the gateway says so).
demo: $(DEMO_STAMP) $(if $(NPM),node_modules/.package-lock.json)
	@scripts/system-deps.sh demo
	$(BIN)/sockway serve --config demos/sockway.toml$(if $(PORT), --port $(PORT))

## Run the whole test suite.
test: $(STAMP) node_modules/.package-lock.json system-deps
	@$(STEP) "checking the code with ruff…" $(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --groups -o console_output_style=classic

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

## Benchmarks against Node's ws and sockjs-node, printing JSON lines and a table.
bench: $(STAMP) node_modules/.package-lock.json
	$(BIN)/python -m benchmarks

## Steady-rate latency (vs ws, sockjs-node, socket.io), connection and reconnect storms.
bench-perf: $(STAMP) node_modules/.package-lock.json
	$(BIN)/python -m benchmarks --scenarios calibrate,steady,storm,reconnect

system-deps:
	@scripts/system-deps.sh test

clean:
	rm -rf $(VENV) node_modules .pytest_cache
