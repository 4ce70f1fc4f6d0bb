# One entry point for people and CI. Everything runs from a project virtualenv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODE   ?= non_restrictive
CONSUMER_MODE ?= pull
# make up A_PORT=4000 B_PORT=4001 NATS_PORT=5222 (empty: 3000/3001, 3100/3101 restrictive; 4222)
A_PORT ?=
B_PORT ?=
NATS_PORT ?=
# State, logs and the env files (<app>.env) of make up / make demo.
DEVSTACK_DIR ?= .devstack
DEVSTACK = $(PY) -m services.devstack --mode $(MODE) --consumer-mode $(CONSUMER_MODE) \
	--workdir $(DEVSTACK_DIR) $(if $(A_PORT),--a-port $(A_PORT)) \
	$(if $(B_PORT),--b-port $(B_PORT)) $(if $(NATS_PORT),--nats-port $(NATS_PORT))

.PHONY: install up demo test test-faults lint format docs bench bench-peers clean deploy-tools browser-tools

install: $(VENV)/.installed

## The library as an editable install (only `bridge` is distributed); the checkout's own
## packages (services/, provisioner/, benchmarks/) run from the source tree: a .pth file
## puts the checkout on this virtualenv's path, whatever the working directory.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[services,console,dev]'
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "jetstream_bridge_checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

## Start NATS, PostgreSQL, migrate, run System A and System B (Ctrl-C stops all).
## Databases: DATABASE_URL_A + DATABASE_URL_B, else its own jsb_system_a / jsb_system_b.
up: install
	@$(DEVSTACK)

## up + scripts/test_sync.sh + down
demo: install
	@$(DEVSTACK) --run scripts/test_sync.sh

## promtool (Debian's prometheus package) for the checks of deploy/: installed if missing.
deploy-tools:
	@scripts/install_promtool.sh

## Debian's chromium for the console's browser tests (Playwright drives it; no browser
## download): installed if missing, else a message saying what to do.
browser-tools:
	@scripts/install_chromium.sh

## The docs site (mkdocs.yml) into build/site; --strict: a broken link or docstring
## cross-reference fails it (make test runs the same build: tests/docs).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## The whole suite (the docs site's strict build included); brings up the servers it needs itself.
test: install deploy-tools browser-tools
	$(PY) -m pytest -q -m "not faults or smoke" tests examples/inventory/tests

test-faults: install
	$(PY) -m pytest -q -m faults tests

lint: install
	$(VENV)/bin/ruff check src services provisioner tests benchmarks migrations examples docs/hooks scripts
	$(VENV)/bin/mypy --strict src provisioner services

format: install
	$(VENV)/bin/ruff format src services provisioner tests benchmarks migrations examples

## Every figure of docs/BENCHMARKS.md (`bench <name> <value> <unit>` lines); long (50 min on a busy machine).
bench: install
	$(PY) -m benchmarks

## Peer outbox libraries side by side, in their own venv (never the project's).
PEERS_VENV ?= .bench-peers/venv

bench-peers: install $(PEERS_VENV)/.installed
	$(PY) -m benchmarks.peers --python $(PEERS_VENV)/bin/python

$(PEERS_VENV)/.installed: benchmarks/peers/requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -r benchmarks/peers/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .devstack .bench-peers
