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

.PHONY: all bootstrap bootstrap-debian demo test lint unit test-pypi test-debian bench clean

all: test

bootstrap:
	sh tools/bootstrap.sh pypi

bootstrap-debian:
	sh tools/bootstrap.sh debian

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
test-debian: bootstrap-debian
	$(VENV_DEBIAN)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) \
		tests/protocol tests/config tests/state tests/controller tests/node tests/media \
		tests/docs tests/bootstrap tests/integration/test_core_loop.py \
		tests/integration/test_bootstrap.py \
		-k "not uniqueness and not failing_hook and not ten_bare and not via_a_cc"
	$(VENV_DEBIAN)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) \
		tests/integration/test_etcd_ha.py -k "thirty or kill_9"

test: lint test-pypi test-debian

bench: bootstrap
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) $(VENV_DEBIAN) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
