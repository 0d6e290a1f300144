# Baton — two commands for newcomers: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-faults lint unit integration e2e install kafka-install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka-install:
	bash deploy/kafka/kafka.sh install

## run: Kafka + the four services on this machine (SQLite under var/), Ctrl-C stops everything
run: install kafka-install
	$(PY) deploy/run_local.py

## test: lint, then unit, integration and end-to-end tests against a real Kafka broker and PostgreSQL
test: install kafka-install lint
	$(PY) -m pytest -q

## test-faults: every fault scenario 3x SIGKILL + 1x SIGTERM, 2,000 leads each; table + var/reports/faults-*.json
test-faults: install kafka-install
	BATON_FAULTS=full $(PY) -m pytest -q -p no:cacheprovider tests/faults

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

unit: install
	$(PY) -m pytest -q tests/unit

integration: install kafka-install
	$(PY) -m pytest -q tests/integration

e2e: install kafka-install
	$(PY) -m pytest -q tests/e2e

clean:
	-KAFKA_CLEAN=1 bash deploy/kafka/kafka.sh stop
	rm -rf var
