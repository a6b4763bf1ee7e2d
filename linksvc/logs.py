"""Structured JSON logs. Records carry ``jti``, client and outcome — never a token or key."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed in ``extra`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Belt and braces: a compact JWS or an API key that slips into a message is masked.
_SECRET_RE = re.compile(
    r"(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|lsk_[A-Za-z0-9_-]{8,})"
)


def redact(text: str) -> str:
    return _SECRET_RE.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and every ``extra`` field
    that is not None (strings redacted). Built in one ``json.dumps``; the time prefix is
    formatted once per second."""

    _second = -1
    _prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._prefix = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        out: dict[str, Any] = {
            "ts": f"{self._prefix}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if value is not None and key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(out, default=str)


def info(logger: logging.Logger, msg: str, **fields: Any) -> None:
    """``logger.info(msg, extra=fields)`` for the hot path: the record is made directly,
    without the caller lookup (a walk up the stack) that nothing here prints."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(
            logger.makeRecord(logger.name, logging.INFO, "", 0, msg, (), None, None, fields)
        )


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the app's ``g.request_id``, echoed as ``X-Request-Id``) to
    every record logged while a request is being handled, so an operator can join a log
    line to the access log and to the caller's own logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Flask only here, so that the Flask-free modules can log through this one.
        from flask import g, has_request_context

        if getattr(record, "request_id", None) is None and has_request_context():
            record.request_id = g.get("request_id")
        return True


def configure(level: str = "info") -> None:
    """Send linksvc's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("linksvc")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_linksvc", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        handler._linksvc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
