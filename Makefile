# Two commands a new user needs: `make demo` and `make test`.
# Both build their own virtual environment (.venv) and JavaScript dependencies (node_modules).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

## Run the gateway with the demos on 127.0.0.1:8080 (memory broker, no services needed).
demo: $(STAMP) node_modules/.package-lock.json
	$(BIN)/sockway serve --config demos/sockway.toml

## Run the whole test suite.
test: $(STAMP) node_modules/.package-lock.json system-deps
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

## Benchmarks against Node's ws and sockjs-node, printing JSON lines and a table.
bench: $(STAMP) node_modules/.package-lock.json
	$(BIN)/python -m benchmarks

system-deps:
	@scripts/system-deps.sh

clean:
	rm -rf $(VENV) node_modules .pytest_cache
