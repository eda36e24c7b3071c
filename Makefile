# The README's two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Reinstall only when pyproject.toml changes: a second `make test` installs nothing.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
FMNIST := /usr/share/datasets/fashion-mnist
# The docs site `make docs` and `make test` build (ignored by git), with --strict and without -q:
# -q hides the warnings (a broken link, a page missing from nav) that --strict fails on.
SITE   := .site

.PHONY: demo test bench bench-accuracy lint docs data install peers clean

demo: install data  ## SimCLR on Fashion-MNIST: train, evaluate, register, print a summary
	$(VENV)/bin/raysl demo

test: install peers data  ## the docs build (strict) and the whole suite (lint, unit, Ray integration, end to end)
	$(VENV)/bin/mkdocs build --strict --site-dir $(SITE)
	$(VENV)/bin/ruff check raysl tests pipelines benchmarks
	$(VENV)/bin/mypy
	RAYSL_TEST_STRICT=1 $(PY) -m pytest

bench: install data  ## raysl vs lightly, a plain PyTorch loop and the compute ceiling (~25 min)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(PY) benchmarks/throughput.py

bench-accuracy: install data  ## raysl vs lightly: SimCLR accuracy at an equal 10-minute budget (~27 min)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(PY) benchmarks/accuracy.py

lint: install  ## ruff and mypy (strict) only
	$(VENV)/bin/ruff check raysl tests pipelines benchmarks
	$(VENV)/bin/mypy

docs: install  ## the documentation site (docs/, mkdocs.yml) into .site/, strict: a broken link fails
	$(VENV)/bin/mkdocs build --strict --site-dir $(SITE)
	@echo "Built $(SITE)/index.html. To serve it while editing: $(VENV)/bin/mkdocs serve -a 127.0.0.1:8000"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing raysl and its pinned dependencies into $(VENV) (first time: ~3 minutes)..."
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

# The peer library the benchmarks measure raysl against, so that `make test` runs its code too
# (tests/benchmarks). --no-deps: lightly's hydra-core pins antlr4 4.9, older than moto's; the
# parts the benchmarks use (losses, heads, transforms, schedules) need only lightning-utilities
# beside raysl's own dependencies. `make bench` installs the bench extra whole.
PEERS  := lightly==1.6.0 lightning-utilities==0.15.3
PEERS_STAMP := $(VENV)/.peers-$(shell echo "$(PEERS)" | cksum | cut -d' ' -f1)

peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(PEERS)
	@rm -f $(VENV)/.peers-* && touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package. Without it (no root, no apt), the
# demo says so and uses generated images, and `make test` stops at its start (RAYSL_TEST_STRICT):
# `.venv/bin/python -m pytest` runs the rest with the tests that need the real files skipped.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."; \
	    ( $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
	      || ( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	           apt-get install -y -qq dataset-fashion-mnist ) ) >/dev/null 2>&1 \
	    || echo "Could not install dataset-fashion-mnist: the demo will use generated images."; \
	  else \
	    echo "No apt-get here: the demo will use generated images instead of Fashion-MNIST."; \
	  fi; \
	fi

clean:
	rm -rf ray_results mlartifacts mlflow.db .pytest_cache .mypy_cache .ruff_cache
