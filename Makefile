# campus-edge: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
DEB_PACKAGES := mosquitto mosquitto-clients socat victoria-metrics mbpoll chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: help venv deps dev demo test lint typecheck unit bench docs mutate clean

help:
	@echo "make demo   virtual school + daemon + local broker with a live status view (Ctrl-C stops)"
	@echo "make test   lint, type check and the whole test suite"
	@echo "make venv   .venv with the project installed (runtime requirements only)"
	@echo "make bench  benchmarks (JSON under bench/results/)"
	@echo "make mutate mutation testing of the rule modules (slow, not in CI; docs/mutation.md)"

# Debian packages the tests and the demo use; installed only when missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  $(SUDO) systemctl disable --now mosquitto victoria-metrics >/dev/null 2>&1 || true; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .

$(STAMP): $(BIN)/python requirements.txt requirements-ems.txt requirements-dev.txt setup.py
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

dev: deps $(STAMP)

demo: dev
	$(BIN)/campus-edge demo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: dev
	$(BIN)/python -m pytest -q

test: dev lint typecheck unit

docs: $(STAMP)
	$(BIN)/python -m drivers.modbus.docs > docs/devices.md

bench: dev
	mkdir -p bench/results
	$(BIN)/python bench/run_all.py

# Mutation testing, outside `make test` and CI (docs/mutation.md). MUTANTS narrows the run, e.g.
# make mutate MUTANTS='drivers.modbus.profile*'; MUTATE_JOBS is mutmut's worker count.
MUTATE_JOBS ?= 1
MUTANTS ?=
mutate: $(STAMP) requirements-mutate.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-mutate.txt
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
