# The two commands of the README's Quickstart, and the pieces they stand on.
VENV   ?= .venv
PYTHON ?= python3
DATA   ?= ./bulwark-data
LISTEN ?= 127.0.0.1:8080
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=
FUZZ_EXAMPLES ?= 10000

.PHONY: serve cluster test lint typecheck unit system-deps clean bench chaos fuzz

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

## Start a standalone node on the embedded store (creates the venv on first use).
serve: $(VENV)/.installed
	@scripts/system-deps.sh git
	$(VENV)/bin/bulwark serve --data-dir $(DATA) --listen $(LISTEN)

## Start a 3-node cluster on this machine: etcd members, nodes and HAProxy (Ctrl-C stops it).
cluster: $(VENV)/.installed
	@scripts/system-deps.sh git etcd-server haproxy
	$(VENV)/bin/bulwark cluster dev --nodes 3 --dir ./bulwark-cluster

## Run the whole suite: lint, types, then every test (installs what it needs).
test: $(VENV)/.installed
	@scripts/system-deps.sh git haproxy etcd-server iproute2 prometheus chromium chromium-driver openssh-client
	$(VENV)/bin/ruff check src tests bench chaos
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## Run the fast tier: every test not marked `system` (no etcd, HAProxy, browser, promtool, `bulwark serve`,
## cluster, HA pair or network namespace; of outside programs it needs only git and ssh-keygen).
unit: $(VENV)/.installed
	@scripts/system-deps.sh git openssh-client
	$(VENV)/bin/pytest -m "not system" -q $(PYTEST_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	@touch $@

## Benchmark against the reference Git HTTP server (nginx + fcgiwrap + git http-backend) and Bulwark's
## own modes; writes bench/results/. BENCH_ARGS=--small for a quick run.
bench: $(VENV)/.bench-installed
	@scripts/system-deps.sh git nginx fcgiwrap cgit etcd-server haproxy rsync openssh-client openssh-server
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

## A seeded fault-injection campaign under git load, with the checker's verdict; writes chaos/results/.
## CHAOS_ARGS="--rounds N --seed S --mode cluster|ha|standalone" (default: cluster, 50 rounds, seed 1).
chaos: $(VENV)/.bench-installed
	@scripts/system-deps.sh git etcd-server haproxy iproute2
	$(VENV)/bin/python -m chaos $(CHAOS_ARGS)

## Longer property-based fuzzing of the git and API routes of a real node (the suite runs 150
## examples of each); FUZZ_EXAMPLES=N sets how many.
fuzz: $(VENV)/.installed
	@scripts/system-deps.sh git
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_fuzz_git.py tests/test_fuzz_api.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench chaos

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
