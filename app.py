"""WSGI entry point: ``gunicorn app:app`` or ``flask --app app …``."""

import sys

import click

from linksvc import create_app
from linksvc.config import ConfigError
from linksvc.links.keys import KeyRingError
from linksvc.services import services

try:
    app = create_app()
except ConfigError as exc:
    # A bad setting stops start-up with a message naming it, not a traceback.
    print(f"linksvc: configuration error: {exc}", file=sys.stderr)
    # 4 is gunicorn's "app failed to load": the master stops instead of respawning workers.
    raise SystemExit(4) from None

# Production serves only with a key it can sign with (gunicorn, `import app`). The flask
# CLI imports this module too, inside a click context, and must work without one so that
# `init-db` and `keys generate` can create it.
if app.config["LINKSVC"].is_production and click.get_current_context(silent=True) is None:
    try:
        services(app).links.keyring.check()
    except KeyRingError as exc:
        print(f"linksvc: cannot start: {exc}", file=sys.stderr)
        # 4 is gunicorn's "app failed to load": the master stops instead of respawning workers.
        raise SystemExit(4) from None
