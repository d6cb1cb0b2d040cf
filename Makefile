# The two commands of the README: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.PHONY: run test test-auth test-users test-e2e test-browser test-fault fault-outage compose-check topology-check lint-containers lint bench scale-check migrate lock clean keys openapi

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	touch $@

.env:
	$(BIN)/python deploy/write-local-env.py

## make run: both services in the foreground (auth :8001, users :8002); Ctrl-C stops both.
run: $(VENV)/.runtime-installed
	$(BIN)/python deploy/write-local-env.py
	deploy/run-local.sh

## make lint: ruff (pyflakes, pycodestyle, import order) and ruff's formatting on all Python code.
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## make test: the auth suite, the users suite and the end-to-end suite, each on its own database;
## last, the database fault tests (an outage of a throwaway PostgreSQL cluster they make and remove themselves).
test: $(VENV)/.dev-installed
	@$(BIN)/python -m shared.testing
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(PYTEST) auth_service/tests || status=1; \
	$(PYTEST) users_service/tests || status=1; \
	$(PYTEST) tests --ignore=tests/fault || status=1; \
	$(PYTEST) tests/fault || status=1; \
	exit $$status

test-auth: $(VENV)/.dev-installed
	$(PYTEST) auth_service/tests

test-users: $(VENV)/.dev-installed
	$(PYTEST) users_service/tests

test-e2e: $(VENV)/.dev-installed
	$(PYTEST) tests --ignore=tests/fault

## make test-fault: the database fault tests alone (stops and restarts a throwaway PostgreSQL cluster for ~3 s).
test-fault: $(VENV)/.dev-installed
	$(PYTEST) tests/fault

## make fault-outage [ARGS="--outage-seconds 10 --duration 30"]: the full outage script; report on stdout.
fault-outage: $(VENV)/.dev-installed
	$(BIN)/python tests/fault/db_outage.py $(ARGS)

## make test-browser: the browser test alone (installs Debian's chromium and playwright-core if missing); output in results/browser/.
test-browser: $(VENV)/.dev-installed
	bash tests/browser/install.sh
	$(PYTEST) tests/browser

## make topology-check: 2 replicas of each service behind nginx, on PgBouncer (transaction mode, TLS and SCRAM both
## sides) and a TLS PostgreSQL of its own; the end-to-end suite through the proxy, then tests/topology (~2 min).
topology-check: $(VENV)/.dev-installed
	bash deploy/topology-check.sh

## make compose-check: both images built, the compose stack up, the end-to-end suite against it (as root; no registry needed).
compose-check: $(VENV)/.dev-installed
	bash deploy/compose-check.sh

## make lint-containers: hadolint, docker compose config, Kubernetes schemas (offline), shellcheck.
lint-containers:
	bash deploy/lint-check.sh

## make bench: both services and a reference app under wrk, as production runs them; table and JSON under results/ (~5 min).
bench: $(VENV)/.dev-installed
	$(BIN)/python -m tests.perf.bench

## make scale-check [ARGS="--users 1000000 --repeats 30"]: a million users and refresh tokens; page, /users/me and login
## times, table sizes before and after a retention pass (~2 min; a throwaway database; not part of `make test`).
scale-check: $(VENV)/.dev-installed
	$(BIN)/python -m tests.perf.scale_check $(ARGS)

## make openapi: each service's OpenAPI schema into docs/openapi/ (tests/test_openapi_drift.py checks it is current).
openapi: $(VENV)/.runtime-installed
	$(BIN)/python deploy/export-openapi.py

migrate: $(VENV)/.runtime-installed
	$(BIN)/python -m shared.migrate upgrade head

## make lock: re-resolve the pinned versions from pyproject.toml's ranges.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet .
	(echo "# Exact runtime versions; regenerate with 'make lock'."; .lock-venv/bin/pip freeze --exclude ai-backend-services) > requirements.lock
	.lock-venv/bin/pip install --quiet ".[dev]"
	(echo "# Exact test-tool versions on top of requirements.lock; regenerate with 'make lock'."; echo "-r requirements.lock"; \
	 .lock-venv/bin/pip freeze --exclude ai-backend-services | grep -v -x -F -f requirements.lock) > requirements-dev.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) var .pytest_cache

## make keys [ALG=EdDSA|RS256]: a fresh signing key pair under .keys/ (git-ignored).
ALG ?= EdDSA
keys: $(VENV)/.runtime-installed
	$(BIN)/python deploy/make-keys.py $(ALG) .keys
