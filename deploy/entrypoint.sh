#!/bin/sh
# linksvc's container entrypoint (Containerfile). Commands:
#   serve [options]           the HTTP service (default; serve.py: gunicorn, or granian with
#                             LINKSVC_SERVER=granian); never changes the schema
#   migrate                   bring the database to the current schema and create the signing
#                             keys (`flask --app app init-db`); a one-off job before serving
#   relay                     the webhook relay (`flask --app app webhooks run`)
#   flask ARGS…               the command line (`flask --app app ARGS…`)
#   healthcheck               exit 0 when this node's /healthz answers (HEALTHCHECK)
set -eu
cd /app
command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
  serve) exec python3 /app/serve.py "$@" ;;
  migrate) exec flask --app app init-db "$@" ;;
  relay) exec flask --app app webhooks run "$@" ;;
  flask) exec flask --app app "$@" ;;
  healthcheck)
    exec python3 - <<'PY'
import json, os, sys, urllib.request
port = os.environ.get("LINKSVC_BIND", "0.0.0.0:8000").rsplit(":", 1)[-1]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        sys.exit(0 if json.load(r).get("service") == "linksvc" else 1)
except Exception as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
PY
    ;;
  -*) exec python3 /app/serve.py "$command" "$@" ;;
  *)
    echo "linksvc: unknown command '$command' (serve, migrate, relay, flask …, healthcheck)" >&2
    exit 64
    ;;
esac
