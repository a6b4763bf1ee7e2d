# linksvc — `make run` serves the whole development journey: linksvc on 127.0.0.1:8000, the
# example application on 127.0.0.1:5001 and the mail outbox page; `make test` runs the suite.
# Both set everything up on a fresh machine: virtual environment, dependencies, database,
# development key and demo client.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
APP_PORT ?= 5001
# Where `flask --app app demo` writes the demo client's key: the instance folder linksvc uses.
INSTANCE := $(or $(LINKSVC_INSTANCE_PATH),instance)
export FLASK_APP := app

.PHONY: run test lint serve init-db venv venv-test bench clean system-deps i18n catalogs image docs

# Reinstall whenever a requirements file changes.
$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.test: requirements-test.txt requirements.txt clients/python/pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-test.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e ./clients/python
	touch $@

$(VENV)/.examples: examples/requirements.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r examples/requirements.txt
	touch $@

venv: $(VENV)/.runtime catalogs
venv-test: $(VENV)/.test catalogs

# The end-user text in 12 languages (linksvc/i18n/catalogs.py, linksvc/i18n/translations/GLOSSARY.md).
# The .po files are committed; their compiled .mo are made here, on setup (and again when a
# .po changes), never committed. `make i18n` extracts messages.pot from the code and the
# templates (babel.cfg), merges it into every catalog (new languages start empty) and
# compiles them; `make lint` then says which catalog is incomplete.
TRANSLATIONS := linksvc/i18n/translations
LOCALES := en de fr es it pt_BR nl pl tr ja zh_Hans ar
CATALOG_MO := $(patsubst %.po,%.mo,$(wildcard $(TRANSLATIONS)/*/LC_MESSAGES/messages.po))

$(TRANSLATIONS)/%/LC_MESSAGES/messages.mo: $(TRANSLATIONS)/%/LC_MESSAGES/messages.po $(VENV)/.runtime
	@$(BIN)/pybabel -q compile -l $* -i $< -o $@

catalogs: $(CATALOG_MO)

i18n: $(VENV)/.runtime
	$(BIN)/pybabel -q extract -F babel.cfg -k N_ -k ngettext:1,2 --no-location --sort-output \
	  --project linksvc --copyright-holder linksvc -o $(TRANSLATIONS)/messages.pot .
	@for loc in $(LOCALES); do \
	  if [ -f $(TRANSLATIONS)/$$loc/LC_MESSAGES/messages.po ]; then \
	    $(BIN)/pybabel -q update --no-wrap -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) -l $$loc --ignore-obsolete; \
	  else \
	    $(BIN)/pybabel -q init --no-wrap -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) -l $$loc; \
	  fi; \
	done
	$(BIN)/python scripts/check_catalogs.py --fill-source en
	$(MAKE) --no-print-directory catalogs

init-db: venv
	$(BIN)/flask --app app init-db

# `make run`: linksvc, the example application and the development outbox page
# (http://127.0.0.1:$(PORT)/dev/outbox), supervised by scripts/dev_run.py: one NAME=COMMAND
# line per process (add yours), Ctrl-C stops them all. PORT and APP_PORT choose the ports;
# everything printed and minted follows them.
run: export LINKSVC_ENV ?= development
run: export LINKSVC_BASE_URL ?= http://127.0.0.1:$(PORT)
# A port already taken stops it before anything starts, with a line saying how to choose
# another; "Ready" needs linksvc's own /healthz answer and the example application's page.
run: init-db $(VENV)/.examples
	@$(BIN)/flask --app app demo --app-url http://127.0.0.1:$(APP_PORT) --env-file $(INSTANCE)/demo.env
	@$(BIN)/python scripts/dev_run.py --env-file $(INSTANCE)/demo.env \
	  --port $(PORT) "make run PORT={free}" --port $(APP_PORT) "make run APP_PORT={free}" \
	  --ready $(LINKSVC_BASE_URL)/healthz --expect '"service":"linksvc"' \
	  --ready http://127.0.0.1:$(APP_PORT)/ --expect 'a relying application of linksvc' \
	  --banner "\nReady. Open http://127.0.0.1:$(APP_PORT), sign in, then read the mail at $(LINKSVC_BASE_URL)/dev/outbox  (Ctrl-C stops everything)\n" \
	  "linksvc=$(BIN)/python serve.py --bind 127.0.0.1:$(PORT)" \
	  "example=env RELYING_APP_BRANDING=1 RELYING_APP_MAIL_DOMAIN=example.com RELYING_APP_OUTBOX_URL=$(LINKSVC_BASE_URL)/dev/outbox $(BIN)/flask --app examples/relying_app run --port $(APP_PORT)" \
	  "webhooks=$(BIN)/flask --app app webhooks run"

# The production shape: sync workers, 2 x cores + 1 on PostgreSQL and cores + 1 on SQLite
# (LINKSVC_WORKERS, LINKSVC_THREADS; why: bench/README.md "Serving model") on LINKSVC_BIND,
# redacted access log, graceful reload on HUP. See docs/production.md and docs/deploy.md.
# serve.py runs gunicorn (gunicorn.conf.py), or granian with LINKSVC_SERVER=granian (both
# here and in `make run`; docs/deploy.md "Choosing the HTTP server").
# Webhooks need the relay beside it (as its own service, on one node or several):
#   .venv/bin/flask --app app webhooks run
serve: init-db
	$(BIN)/python serve.py

# The container image (Containerfile; docs/deploy.md, "The image"). `--format docker` keeps
# the HEALTHCHECK. The CA bundle pip trusts (PIP_CERT, else SSL_CERT_FILE, else the system's)
# is a build secret: mounted for the pip step only, never in a layer. Add podman options
# with IMAGE_BUILD_OPTS (the tests pass --pull=never --isolation chroot --network host).
IMAGE ?= linksvc:latest
IMAGE_VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' linksvc/__init__.py)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_SOURCE ?= $(or $(shell git remote get-url origin 2>/dev/null),unknown)
CA_BUNDLE ?= $(or $(PIP_CERT),$(SSL_CERT_FILE),/etc/ssl/certs/ca-certificates.crt)
image:
	podman build --format docker $(IMAGE_BUILD_OPTS) \
	  --secret id=cacert,src=$(CA_BUNDLE) \
	  --build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(IMAGE_REVISION) \
	  --build-arg SOURCE=$(IMAGE_SOURCE) -t $(IMAGE) -f Containerfile .

# s3rver, the real S3-API server of the download tests, from the committed lock file. Without
# npm the S3 tests skip and say why (in CI, where CI=true, they fail instead).
S3RVER := tests/s3rver/node_modules/.bin/s3rver
$(S3RVER): tests/s3rver/package-lock.json | system-deps
	@if command -v npm >/dev/null; then cd tests/s3rver && npm ci --no-audit --no-fund && touch node_modules/.bin/s3rver; \
	 else echo "npm not found: the S3 download tests will skip"; fi

# ruff (lint and format check) and mypy (strict on linksvc/); configuration in pyproject.toml.
# The manual is built --strict: a broken link, anchor or include fails.
lint: venv-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy linksvc app.py clients/python/src/linksvc_client
	$(BIN)/python scripts/check_catalogs.py
	@d=$$(mktemp -d) && $(MKDOCS) build --strict --quiet --site-dir $$d; s=$$?; rm -rf $$d; exit $$s

# The manual (mkdocs.yml, docs/): MkDocs with the Material theme, built into site/ offline
# (no font or plugin fetches anything). The API reference and the table of settings are
# generated from the code at each build (scripts/mkdocs_hooks.py).
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs: venv-test
	$(MKDOCS) build --strict

# What the tests need from the system: Debian's Chromium (the browser tests; Playwright drives
# it and never downloads one), fonts for its Arabic and CJK pages, and npm (s3rver). Installed with apt-get when we are root and
# they are missing; otherwise `make test` says which tests will skip, and pytest's summary
# lists each skipped test with its reason (in CI they fail instead).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q
CHROMIUM ?= /usr/bin/chromium
system-deps:
	@missing=""; [ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	 fc-list :lang=ja 2>/dev/null | grep -q . || missing="$$missing fonts-ipafont-gothic fonts-wqy-microhei"; \
	 fc-list :lang=ar family 2>/dev/null | grep -qi arabic || missing="$$missing fonts-noto-ui-core"; \
	 command -v npm >/dev/null || missing="$$missing npm"; \
	 if [ -z "$$missing" ]; then exit 0; fi; \
	 if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	   echo "make test: installing$$missing with apt-get"; \
	   (apt-get update -q && $(APT_INSTALL) $$missing) || echo "make test: apt-get could not install$$missing"; \
	 fi; \
	 [ -x $(CHROMIUM) ] || echo "make test: SKIPPING the browser tests: no Chromium at $(CHROMIUM) (as root: apt-get install chromium)"; \
	 command -v npm >/dev/null || echo "make test: SKIPPING the S3 tests: no npm for s3rver (as root: apt-get install npm)"

test: venv-test init-db system-deps $(S3RVER)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The side-by-side benchmark (bench/README.md): Flask hello-world vs linksvc on SQLite and
# PostgreSQL under the same gunicorn, plus the in-process floor; then every target under both
# servers (bench/servers.py). Installs wrk if missing.
# `make bench BENCH_ARGS=--quick` checks the bench itself in about two minutes.
bench: venv-test
	$(BIN)/pip install --disable-pip-version-check -q -r bench/requirements.txt
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.servers $(BENCH_ARGS)   # gunicorn and granian side by side (issue 27)
	$(BIN)/python -m bench.webhooks   # what an outbox row costs on mint and redeem (in-process)

clean:
	rm -rf $(VENV) .pytest_cache site
