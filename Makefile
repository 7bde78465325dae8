# autoreg — the two commands of the README, and the pieces they are made of.
#
#   make demo    a live cluster registering itself, in network namespaces
#   make test    lint, type checks, the whole suite (PyPI and Debian 12 libraries)
#
# Both install what they need (Debian packages, virtualenvs) first.

SHELL := /bin/sh
VENV := .venv
VENV_DEBIAN := .venv-debian
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all bootstrap bootstrap-debian demo test lint unit test-pypi test-debian unit-pypi \
	unit-debian netns-pypi netns-debian bench clean

all: test

# SKIP_BOOTSTRAP=1: set up already (`make test` sets up once, then runs jobs side by side,
# which must not run apt at the same time).
bootstrap:
	@[ -n "$(SKIP_BOOTSTRAP)" ] || sh tools/bootstrap.sh pypi

bootstrap-debian:
	@[ -n "$(SKIP_BOOTSTRAP)" ] || sh tools/bootstrap.sh debian

demo: bootstrap
	$(PY) demo/run_demo.py

lint: bootstrap
	$(VENV)/bin/ruff check registration tests bench demo
	$(VENV)/bin/ruff format --check registration tests bench demo
	$(VENV)/bin/mypy --strict registration
	shellcheck -x -P SCRIPTDIR scripts/walrus scripts/cc scripts/sc scripts/nc scripts/lib/autoreg-hook.sh tools/bootstrap.sh .ci/run

# The whole suite on current PyPI releases.
test-pypi: bootstrap
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The same code on the library versions Debian 12 ships (what the .deb runs on):
# everything but the slow scenarios already covered above.
DEBIAN_SUBSET := tests/protocol tests/config tests/state tests/controller tests/node \
	tests/media tests/docs tests/bootstrap tests/integration/test_core_loop.py \
	tests/integration/test_bootstrap.py
DEBIAN_SKIP := not uniqueness and not failing_hook and not ten_bare and not via_a_cc \
	and not systemd_runs and not converged_timeout and not stops_at_once
DEBIAN_HA := tests/integration/test_etcd_ha.py -k "thirty or kill_9"
PY_DEBIAN := $(VENV_DEBIAN)/bin/python -m pytest -p no:cacheprovider

test-debian: bootstrap-debian
	$(PY_DEBIAN) $(PYTEST_ARGS) $(DEBIAN_SUBSET) -k "$(DEBIAN_SKIP)"
	$(PY_DEBIAN) $(PYTEST_ARGS) $(DEBIAN_HA)

# `make test` is the two above plus lint, arranged for time: what needs no network
# namespace (lint, both unit suites) runs side by side, each writing its own output
# (--output-sync); the namespace suites then run one after the other, never at once.
unit-pypi: bootstrap
	$(PY) -m pytest --durations=10 -m "not netns" $(PYTEST_ARGS)

unit-debian: bootstrap-debian
	$(PY_DEBIAN) -m "not netns" $(PYTEST_ARGS) $(DEBIAN_SUBSET) -k "$(DEBIAN_SKIP)"

netns-pypi: bootstrap
	$(PY) -m pytest --durations=15 -m netns $(PYTEST_ARGS)

netns-debian: bootstrap-debian
	$(PY_DEBIAN) -m netns $(PYTEST_ARGS) $(DEBIAN_SUBSET) -k "$(DEBIAN_SKIP)"
	$(PY_DEBIAN) $(PYTEST_ARGS) $(DEBIAN_HA)

test: bootstrap bootstrap-debian
	$(MAKE) --no-print-directory -j3 --output-sync=target SKIP_BOOTSTRAP=1 \
		lint unit-pypi unit-debian
	$(MAKE) --no-print-directory SKIP_BOOTSTRAP=1 netns-pypi netns-debian

bench: bootstrap
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) $(VENV_DEBIAN) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
