# esxi2ami.migrate — every entry point a developer, CI or a new user needs.
#   make demo    run the whole migration against local simulators (vCenter, AWS VM Import, a Debian guest)
#   make test    everything CI runs: sanity, lint, unit, simulator and integration tests
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export PATH := $(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: deps test sanity lint ruff ansible-lint shellcheck changelog-lint units integration demo demo-fast build docs-check clean

deps:
	@tests/bootstrap.sh

test: deps sanity lint units integration

sanity: deps
	tests/sanity.sh

lint: deps ruff ansible-lint shellcheck changelog-lint

ruff:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ansible-lint:
	@if [ -n "$$(ls -A roles playbooks 2>/dev/null)" ]; then \
	  $(VENV)/bin/ansible-lint --profile production --offline roles playbooks; \
	else echo "ansible-lint: no roles or playbooks yet"; fi

changelog-lint:
	$(VENV)/bin/antsibull-changelog lint

shellcheck:
	git ls-files -co --exclude-standard '*.sh' | xargs -r shellcheck

units: deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest --durations=15 tests/simulators tests/fixtures tests/integration $(PYTEST_ARGS)

build: deps
	$(VENV)/bin/ansible-galaxy collection build --force --output-path .build/dist .

demo: deps
	$(PY) -m tests.demo

demo-fast: deps
	$(PY) -m tests.demo --fast

clean:
	rm -rf .build/sanity .build/dist tests/output
