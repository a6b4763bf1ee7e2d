# linksvc — `make run` serves the whole development journey: linksvc on 127.0.0.1:8000, the
# example application on 127.0.0.1:5001 and the mail outbox page; `make test` runs the suite.
# Both set everything up on a fresh machine: virtual environment, dependencies, database,
# development key and demo client.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
APP_PORT ?= 5001
export FLASK_APP := app

.PHONY: run test lint serve init-db venv venv-test bench clean

# Reinstall whenever a requirements file changes.
$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.test: requirements-test.txt requirements.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

$(VENV)/.examples: examples/requirements.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r examples/requirements.txt
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

init-db: venv
	$(BIN)/flask --app app init-db

# `make run`: linksvc, the example application and the development outbox page
# (http://127.0.0.1:$(PORT)/dev/outbox), supervised by scripts/dev_run.py: one NAME=COMMAND
# line per process (add yours), Ctrl-C stops them all. PORT and APP_PORT choose the ports;
# everything printed and minted follows them.
run: export LINKSVC_ENV ?= development
run: export LINKSVC_BASE_URL ?= http://127.0.0.1:$(PORT)
run: init-db $(VENV)/.examples
	@$(BIN)/flask --app app demo --app-url http://127.0.0.1:$(APP_PORT) --env-file instance/demo.env
	@$(BIN)/python scripts/dev_run.py --env-file instance/demo.env \
	  --ready $(LINKSVC_BASE_URL)/healthz --ready http://127.0.0.1:$(APP_PORT)/ \
	  --banner "\nReady. Open http://127.0.0.1:$(APP_PORT), sign in, then read the mail at $(LINKSVC_BASE_URL)/dev/outbox  (Ctrl-C stops everything)\n" \
	  "linksvc=$(BIN)/gunicorn -c gunicorn.conf.py --workers 2 --bind 127.0.0.1:$(PORT) app:app" \
	  "example=env RELYING_APP_MAIL_DOMAIN=example.com RELYING_APP_OUTBOX_URL=$(LINKSVC_BASE_URL)/dev/outbox $(BIN)/flask --app examples/relying_app run --port $(APP_PORT)"

# The production shape: several workers (LINKSVC_WORKERS, default 2 x cores + 1) on LINKSVC_BIND,
# redacted access log, graceful reload on HUP. See README "Production" and docs/deploy.md.
serve: init-db
	$(BIN)/gunicorn -c gunicorn.conf.py app:app

# s3rver, the real S3-API server of the download tests, from the committed lock file. Without
# npm the S3 tests skip and say why (in CI, where CI=true, they fail instead).
S3RVER := tests/s3rver/node_modules/.bin/s3rver
$(S3RVER): tests/s3rver/package-lock.json
	@if command -v npm >/dev/null; then cd tests/s3rver && npm ci --no-audit --no-fund && touch node_modules/.bin/s3rver; \
	 else echo "npm not found: the S3 download tests will skip"; fi

# ruff (lint and format check) and mypy (strict on linksvc/); configuration in pyproject.toml.
lint: venv-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy linksvc app.py

test: venv-test init-db $(S3RVER)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The side-by-side benchmark (bench/README.md): Flask hello-world vs linksvc on SQLite and
# PostgreSQL under the same gunicorn, plus the in-process floor. Installs wrk if missing.
# `make bench BENCH_ARGS=--quick` checks the bench itself in about two minutes.
bench: venv-test
	$(BIN)/pip install --disable-pip-version-check -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
