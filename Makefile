# cv-queue: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install broker-fetch system-deps lint test run e2e bench chaos ci-e2e-optimized screenshots docs clean

# (Re)install when pyproject.toml changes. Every dependency is pinned there.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Kafka jars from Maven Central into ~/.cache/cv-queue (skipped when cached).
broker-fetch: install
	$(BIN)/cv-queue broker fetch

# Debian packages the tests use, installed once on a fresh machine: kcat (an independent Kafka client, the only
# one that can write the non-UTF-8 header names the chaos suite sends), chromium (the browser that Playwright
# drives through the Dagster UI; Playwright's own browser downloads are never used) and postgresql (the server the
# production-instance test stores Dagster's runs and events in; the test starts and stops its own).
SYSTEM_PACKAGES := kcat chromium postgresql
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is missing after installing chromium" >&2; exit 1; }

lint: install
	$(BIN)/ruff check .

# Everything CI runs: install, fetch the broker, lint, then the whole suite against a real Kafka broker
# that the test session starts and stops itself. Two pytest workers, each with its own broker: the tests that run
# Dagster (and share the worker runs' metrics ports) keep to one of them, one at a time (cv_queue_tests/conftest.py).
TEST_WORKERS ?= 3
test: install broker-fetch system-deps lint
	CVQ_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=30

# The two Dagster UI screenshots of docs/05-operations.md (docs/screenshots/), taken by the browser test as it
# drives the UI.
screenshots: install broker-fetch system-deps
	CVQ_CHROMIUM=$(CHROMIUM) CVQ_UI_SCREENSHOTS=docs/screenshots $(BIN)/pytest cv_queue_tests/ui

# The main job: local broker, Dagster UI on http://127.0.0.1:3000, topics, worker fleet, sample jobs.
# LLM=local runs the real LLM evaluator over HTTP against the local OpenAI-protocol server; LLM=provider against
# CVQ_LLM__BASE_URL with CVQ_LLM__API_KEY. The default is a simulated LLM.
LLM ?= simulated
run: install broker-fetch
	$(BIN)/cv-queue dev --llm $(LLM)

# Throughput: the seed's before/after and ours, no-op vs the bare client, DLQ replay; head-of-line and crash-rework
# in both release_outputs modes (at_once, in_order); prints JSON lines and tables.
bench: install broker-fetch
	$(BIN)/cv-queue bench --standard

# The chaos suite alone (also part of `make test`): SIGKILLed workers, a poison mix, memory behind a hung job.
chaos: install broker-fetch system-deps
	$(BIN)/pytest -m chaos -s cv_queue_tests/chaos

# End to end through Dagster: broker, daemon, topic assets, worker fleet, 1,000 jobs with failures, DLQ replay.
e2e: install broker-fetch
	$(BIN)/python -m cv_queue_tests.e2e.runner

# The seed's command. E2E_PARALLEL closed-loop clients; E2E_WORKER_REPLICAS worker runs (1, 2, 4 or 8).
E2E_PARALLEL ?= 8
E2E_WORKER_REPLICAS ?= 4
ci-e2e-optimized: install broker-fetch
	E2E_PARALLEL=$(E2E_PARALLEL) E2E_WORKER_REPLICAS=$(E2E_WORKER_REPLICAS) $(BIN)/python -m cv_queue_tests.e2e.runner

# The generated parts of the docs: the configuration reference (docs/09-configuration.md, from the settings models)
# and the principals' ACL table (docs/06-security.md, from the rules `cv-queue acls apply` applies). No broker needed;
# cv_queue_tests/test_readme.py fails when either is out of date.
docs: install
	$(BIN)/cv-queue config --write docs/09-configuration.md
	$(BIN)/python -m cv_queue_tests.doc_checks --acl-table docs/06-security.md

clean:
	rm -rf $(VENV) .dagster_home .cvq .pytest_cache .ruff_cache
