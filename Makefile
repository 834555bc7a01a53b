# outbox: `make run` starts the service, `make test` runs every check and test.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint typecheck format pytest faults bench screenshots tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## run: worker, API + page and Flower from the Procfile (embedded Redis unless OUTBOX_REDIS_URL is set)
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

## test: lint, type check and the whole test suite
test: check pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

pytest: $(STAMP) tools
	$(BIN)/python -m pytest

# docker-compose validates docker-compose.yml offline; chromium runs the page's browser tests
# (Playwright drives Debian's build, never one of its own). Debian's packages, installed if missing.
tools:
	@command -v docker-compose >/dev/null || { \
	  echo "installing Debian's docker-compose (to validate docker-compose.yml)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	@test -x /usr/lib/chromium/chromium || { \
	  echo "installing Debian's chromium (for the browser tests in tests/browser)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@test -x /usr/sbin/exim4 || { \
	  echo "installing Debian's exim4-daemon-light (the SMTP peer of tests/test_exim.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq exim4-daemon-light >/dev/null; }

## screenshots: the browser tests, refreshing the README's screenshots in docs/screenshots
screenshots: $(STAMP) tools
	OUTBOX_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest tests/browser

## faults: every fault scenario with outbox's default timings; the rows of docs/reliability.md
faults: $(STAMP)
	rm -f faults-report.md
	OUTBOX_FAULTS=full OUTBOX_FAULTS_REPORT=faults-report.md $(BIN)/python -m pytest tests/faults -s --timeout 900 -m ""
	@cat faults-report.md

## bench: throughput, latency and memory against the naive design and the protocol limit
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'  # the peer baseline's packages
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
