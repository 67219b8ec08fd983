# Two commands for a fresh machine: `make serve` (the service on the embedded default, with a demo
# compression to watch) and `make test` (the whole test suite). Each sets up .venv itself.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv serve test test-fast bench services browser lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/l2 serve --demo

services:
	bash scripts/ensure_services.sh

browser:  # Debian's chromium for the web UI's browser tests (tests/ui)
	bash scripts/ensure_browser.sh

test: $(STAMP) services browser
	$(PY) -m pytest -q -rs -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not service and not slow"

bench: $(STAMP)
	bash bench/setup_env.sh
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check compression_core api worker store l2_client tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
