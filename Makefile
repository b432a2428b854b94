# make run   set everything up and start every process of the Procfile
# make test  set up and run every app's tests with coverage (fails below 90 %)
# make lint  ruff (lint and format) and mypy (every function annotated)
# make audit check requirements.lock against the vulnerability databases (needs network)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APPS   := common auth_app user_app workers tests
RUN_PROCESSES ?= $(shell grep -oE "^[a-z0-9_-]+:" Procfile | tr -d : | grep -vxE "release|web")

.PHONY: run test venv keys migrate preflight lint bench audit clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

keys: $(STAMP)
	$(BIN)/flask --app auth_app keys generate

migrate: $(STAMP)
	$(BIN)/alembic -n auth upgrade head
	$(BIN)/alembic -n user upgrade head

preflight: $(STAMP)
	$(BIN)/python -m common.preflight

# A developer's machine: the public development pepper is allowed only with
# APP_ENV=development (anywhere else PASSWORD_PEPPER must be a secret of its own).
run keys: export APP_ENV = development

# Mail goes to the development sink (the Procfile's mailsink, which prints each
# mail on the console) unless SMTP_URL names a server of the caller's.
ifeq ($(strip $(SMTP_URL)),)
run: export SMTP_URL = smtp://127.0.0.1:1025
else
RUN_PROCESSES := $(filter-out mailsink,$(RUN_PROCESSES))
endif

# The Procfile names bare commands (gunicorn, python): honcho must find the
# virtual environment's, not whatever else is first on PATH.
run: $(STAMP) preflight keys migrate
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start $(RUN_PROCESSES)

# One pytest process over every app's tests; `pytest auth_app` (or any one) runs alone too.
test: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest $(APPS) --cov --cov-report= -q
	$(BIN)/coverage report --fail-under=90

# Slow and noisy, so not part of `make test` (tests/test_bench_smoke.py is).
# wrk comes from Debian's packages; installed here when missing and root.
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y wrk; } || \
		{ echo "bench needs wrk: sudo apt-get install -y wrk"; exit 1; }
	$(BIN)/python -m bench

# The exact versions in requirements.lock, not whatever the venv holds; not
# part of `make test`, as it needs PyPI's or OSV's vulnerability service.
# --strict: a package that could not be checked fails the audit instead of
# being skipped, so an unreachable database never reads as "no vulnerabilities".
audit: $(STAMP)
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .coverage .coverage.*
