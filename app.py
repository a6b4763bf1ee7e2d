"""WSGI entry point: ``gunicorn app:app`` or ``flask --app app …``."""

import sys

from linksvc import create_app
from linksvc.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # A bad setting stops start-up with a message naming it, not a traceback.
    print(f"linksvc: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
