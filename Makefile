# The two commands that matter: `make run` and `make test`. Both install what
# they need into .venv first, so a machine with only Python 3.11+ is enough.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint install screenshots alertmanager promtool chromium wrk clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/incident dev

test: $(STAMP) alertmanager promtool chromium
	$(BIN)/python -m pytest

# e.g. make bench BENCH_ARGS="--only durability"
bench: $(STAMP) wrk
	$(BIN)/python -m bench $(BENCH_ARGS)

# The README's pictures of the console, taken by the browser tests.
screenshots: $(STAMP) alertmanager chromium
	INCIDENT_TEST_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/browser

lint: $(STAMP)
	$(BIN)/python -m ruff check incident tests bench

# The Alertmanager test drives the real binary; Debian packages it.
alertmanager:
	@command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || \
	  { echo "installing prometheus-alertmanager (Debian package)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null; }

# The example Prometheus rules are checked with promtool; Debian packages it
# with Prometheus (whose service is not started here).
promtool:
	@command -v promtool >/dev/null || \
	  { echo "installing promtool (Debian package prometheus)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The console's browser tests drive Debian's Chromium through Playwright (never
# `playwright install`: its own browser builds are not fetched).
chromium:
	@command -v chromium >/dev/null || \
	  { echo "installing chromium (Debian package)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# The receiver bench drives saturation load with wrk; Debian packages it.
wrk:
	@command -v wrk >/dev/null || \
	  { echo "installing wrk (Debian package)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

clean:
	rm -rf $(VENV) .pytest_cache
