# Herald: `make run` for the demo, `make test` for the suite. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: deps venv up down status clean run test test-unit bench dlq-replay

deps:
	@scripts/deps.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Herald needs Python 3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

up: deps venv
	@$(PY) scripts/stack.py up

down:
	@if [ -x $(PY) ]; then $(PY) scripts/stack.py down; fi

status: venv
	@$(PY) scripts/stack.py status

clean: down
	rm -rf .local

run: deps venv
	@$(PY) scripts/run.py

test: up
	@$(PY) -m pytest -q tests

test-unit: venv
	@$(PY) -m pytest -q tests/unit

bench: up
	@$(PY) bench/ingest.py --profiles 1000000

# Dead-lettered sends back through their outbox (ARGS="--campaign 42" or "--dry-run").
dlq-replay: venv
	@$(PY) scripts/dlq_replay.py $(ARGS)
