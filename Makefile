# Baton — two commands for newcomers: `make run` and `make test`.
# The interpreter .venv is built from: the system's own Python 3.11+ first (built with PGO and LTO), see
# deploy/pick_python.sh; `make PYTHON=/path/to/python3.x install` on a fresh clone (or after rm -rf .venv) overrides.
PYTHON ?= $(shell bash deploy/pick_python.sh || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-faults fuzz bench bench-intake bench-routing bench-feedback bench-scoring lint unit integration e2e install kafka-install browser-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka-install:
	bash deploy/kafka/kafka.sh install

## browser-deps: Debian's Chromium for tests/browser (Playwright never downloads a browser of its own)
browser-deps:
	@test -x /usr/bin/chromium || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium; }; }

## run: Kafka + the four services on this machine (SQLite under var/), Ctrl-C stops everything
run: install kafka-install
	$(PY) deploy/run_local.py

## test: lint, then unit, integration, end-to-end and browser tests against a real Kafka broker and PostgreSQL
test: install kafka-install browser-deps lint
	$(PY) -m pytest -q

## test-faults: every fault scenario 3x SIGKILL + 1x SIGTERM, 2,000 leads each; table + var/reports/faults-*.json
test-faults: install kafka-install
	BATON_FAULTS=full $(PY) -m pytest -q -p no:cacheprovider tests/faults

## fuzz: schemathesis against each service's OpenAPI on the real stack (Kafka + PostgreSQL), valid and invalid data
## with the admin key and none: no 5xx, responses as documented; at least FUZZ_REQUESTS (1,000) requests per service,
## totals per service and var/reports/fuzz-*.json. BATON_FUZZ_SEED=<n> replays a run (the table prints its seed).
FUZZ_REQUESTS ?= 1000
BATON_FUZZ_SEED ?= random
fuzz: install kafka-install
	BATON_FUZZ_REQUESTS=$(FUZZ_REQUESTS) BATON_FUZZ_SEED=$(BATON_FUZZ_SEED) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

## bench: after a warm-up (BENCH_WARMUP_RATE 100/s for BENCH_WARMUP_SECONDS 60: the broker's JVM compiles its hot
## code), speed to lead (202 -> leads.routed) at 50/100/200/500 leads/s through the four services, the maximum
## sustained rate (routed backlog and every consumer group's lag bounded), a backlog routed by 1 and 2 replicas of
## scoring and routing, and the same run's baselines (raw three-hop aiokafka relay, bare FastAPI endpoint); a table,
## var/reports/bench-*.json and a PNG. BENCH_SECONDS (30) per rate, BENCH_SUSTAIN_SECONDS (60) per search step.
bench: install kafka-install
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) bench/speed_to_lead.py

## bench-intake: measurements, not tests (throughput of POST /v1/leads on one worker with PostgreSQL)
bench-intake: install kafka-install
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk
	$(PY) bench/intake_throughput.py

## bench-routing: assignments/s of the routing consumer, leads.scored -> leads.routed latency, fairness spread
bench-routing: install kafka-install
	$(PY) bench/routing_throughput.py

## bench-feedback: p50/p95/p99 of reports over 1,000,000 leads' aggregates in PostgreSQL (BENCH_LEADS=...), the
## aggregates checked against full scans, and events/s of the feedback consumer
bench-feedback: install kafka-install
	$(PY) bench/feedback_reports.py

## bench-scoring: ROC AUC and top-decile lift of Baton's scores vs the rules alone and naive Bayes, on a lead file
## with outcomes: make bench-scoring DATA=leads.csv [BENCH_ARGS='--label-column Converted --positive 1 ...']
bench-scoring: install kafka-install
	@test -n "$(DATA)" || { echo "usage: make bench-scoring DATA=/path/to/leads.csv [BENCH_ARGS='...']"; exit 2; }
	$(PY) bench/scoring_learning.py "$(DATA)" $(BENCH_ARGS)

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
