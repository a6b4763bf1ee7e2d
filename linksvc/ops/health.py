"""Operational endpoints: liveness, readiness and the public keys."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from linksvc import errors

# Verifiers may cache the JWKS this long; `keys rotate` refuses to activate a next key
# published for less than this plus one refresh, so a cached JWKS knows a key before it signs.
from linksvc.links.keys import JWKS_MAX_AGE
from linksvc.services import services
from linksvc.web.http import problem

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    # "service" tells linksvc's answer from another program's on the same port: `make run`
    # waits for this body, not for any HTTP answer (scripts/dev_run.py --expect).
    return jsonify({"status": "ok", "service": "linksvc"})


@bp.get("/readyz")
def readyz() -> Response:
    if not services().links.ready():
        return problem(503, "database_unavailable", "The database is not answering.")
    return jsonify({"status": "ready"})


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    try:
        body = services().links.keyring.jwks()
    except errors.ServiceUnavailable as exc:
        resp = problem(503, "unavailable", exc.detail)
        resp.headers["Retry-After"] = "5"
        return resp
    resp = jsonify(body)
    resp.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp
