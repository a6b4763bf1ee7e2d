"""HTTP helpers shared by the blueprints: problem+json and the security headers."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, json

from linksvc import errors
from linksvc.formats import iso_time

#: Problem ``type`` URIs are ``<base URL>/problems#<code>``: a section of a page this service
#: serves (linksvc.web.docs) explaining the code.
PROBLEM_PAGE = "/problems#"

#: Status code of each link failure reason on the API and the pages.
REASON_STATUS: dict[str, int] = {
    "used": 409,
    "expired": 410,
    "revoked": 410,
    "superseded": 410,
    "unknown_link": 404,
}

KIND_STATUS = {
    "invalid": 422,
    "forbidden": 403,
    "not_found": 404,
    "bad_request": 400,
    "too_large": 413,
    "bad_gateway": 502,
    "conflict": 409,
    "gone": 410,
}

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
}


def link_error_status(exc: errors.LinkError) -> int:
    return REASON_STATUS.get(exc.reason, 401)


def problem_type(code: str) -> str:
    """The URI of the section of ``/problems`` that explains ``code``."""
    settings = current_app.config.get("LINKSVC") if current_app else None
    base = settings.base_url if settings is not None else ""
    return f"{base}{PROBLEM_PAGE}{code}"


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem document with our stable ``code``."""
    body = {
        "type": problem_type(code),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    resp = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="linksvc"'
    return resp


def _is_time(name: str) -> bool:
    return name == "at" or name.endswith("_at")


def link_error_problem(exc: errors.LinkError) -> Response:
    # Times (``at`` of a used link, ``expired_at``) are epoch seconds inside linksvc and
    # ISO 8601 in every answer, as every other time of the API is.
    facts = {
        k: iso_time(v) if _is_time(k) and isinstance(v, int) else v
        for k, v in exc.facts.items()
        if isinstance(v, (int, str)) and k not in ("purpose",)
    }
    return problem(
        link_error_status(exc),
        exc.reason,
        exc.detail,
        jti=exc.jti if exc.reason in REASON_STATUS else None,
        **facts,
    )


#: Every response's security headers; a response that set one itself keeps its own (a page
#: with its own Content-Security-Policy, a download with its own Cache-Control).
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
)
_SECURITY_HEADERS = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)


def security_headers(resp: Response, request_id: str | None = None) -> Response:
    """Add the security headers the response lacks, and ``X-Request-Id``, in one step: one
    pass over the headers already set, one extend (``Headers.setdefault`` per header
    scanned the list seven times)."""
    h = resp.headers
    present = {name.lower() for name, _ in h.items()}
    missing = [(name, value) for low, name, value in _SECURITY_HEADERS if low not in present]
    if request_id is not None:
        missing.append(("X-Request-Id", request_id))
    h.extend(missing)
    return resp
