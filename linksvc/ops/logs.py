"""Structured JSON logs. Records carry ``jti``, client and outcome — never a token or key."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

# Attributes every LogRecord has; anything else was passed in ``extra`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Belt and braces: a compact JWS or an API key that slips into a message is masked.
_SECRET_RE = re.compile(
    r"(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|lsk_[A-Za-z0-9_-]{8,})"
)


def redact(text: str) -> str:
    # Both shapes start with a fixed prefix: a substring test spares the regex almost always.
    if "eyJ" not in text and "lsk_" not in text:
        return text
    return _SECRET_RE.sub("[redacted]", text)


#: One encoder for every line: ``json.dumps`` with an argument builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class _Clock:
    """The ``ts`` of a line, its ``strftime`` part formatted once per second."""

    second = -1
    prefix = ""

    def stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self.second:
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        return f"{self.prefix}.{int(msecs):03d}Z"


def _line(
    stamp: str, level: str, name: str, msg: str, fields: Mapping[str, Any], exc_type: Any = None
) -> str:
    """The JSON object of one record: time, level, logger, message, and every field that is
    not None (strings redacted)."""
    out: dict[str, Any] = {"ts": stamp, "level": level, "logger": name, "msg": redact(msg)}
    for key, value in fields.items():
        if value is not None:
            out[key] = redact(value) if isinstance(value, str) else value
    if exc_type is not None:
        out["exc_type"] = exc_type
    return _ENCODER.encode(out)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (:func:`_line`); the ``extra`` fields are the record's
    attributes that every LogRecord does not have."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        extra = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        exc = record.exc_info[0] if record.exc_info else None
        return _line(
            self._clock.stamp(record.created, record.msecs),
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            extra,
            exc.__name__ if exc is not None else None,
        )


class JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """linksvc's handler: JSON lines (:class:`JsonFormatter`) with the request id."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
        self.addFilter(RequestIdFilter())
        self._clock = _Clock()

    def write_info(self, name: str, msg: str, fields: dict[str, Any]) -> None:
        """The line :meth:`emit` would write for an INFO record of ``fields``, without the
        record: no LogRecord, filter or formatter calls on the hot path."""
        if "request_id" not in fields:
            fields["request_id"] = _request_id()
        now = time.time()
        line = _line(self._clock.stamp(now, (now - int(now)) * 1000), "info", name, msg, fields)
        with self.lock:  # type: ignore[union-attr]
            try:
                stream = self.stream
                stream.write(line + self.terminator)
                # stderr is line-buffered (Python 3.9+): the newline has flushed it already.
                if not getattr(stream, "line_buffering", False):
                    stream.flush()
            except Exception:
                self.handleError(logging.LogRecord(name, logging.INFO, "", 0, msg, None, None))


def _only_handler(logger: logging.Logger) -> JsonHandler | None:
    """The one handler a record of ``logger`` would reach, if that is linksvc's own (as
    :func:`configure` leaves it): the first handlers up the hierarchy, with nothing above."""
    if logger.filters:
        return None
    found: logging.Logger | None = logger
    while found is not None and not found.handlers and found.propagate:
        found = found.parent
    if found is None or found.propagate or len(found.handlers) != 1:
        return None
    handler = found.handlers[0]
    if type(handler) is not JsonHandler or handler.level > logging.INFO:
        return None
    return handler if len(handler.filters) == 1 else None


def info(logger: logging.Logger, msg: str, **fields: Any) -> None:
    """``logger.info(msg, extra=fields)`` for the hot path. When the record would reach
    linksvc's own handler alone, the line is written straight through it; otherwise (a
    test's or an operator's handler beside it) a record goes through logging as usual, made
    without the caller lookup (a walk up the stack) that nothing here prints."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_handler(logger)
    if handler is not None:
        handler.write_info(logger.name, msg, fields)
        return
    logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, msg, (), None, None, fields))


#: The request id of the request this thread (or task) is handling, set by the app's first
#: hook (linksvc.create_app) and cleared at its teardown; None outside a request.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "linksvc_request_id", default=None
)


def _request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (:data:`REQUEST_ID`, echoed as ``X-Request-Id``) to
    every record logged while a request is being handled, so an operator can join a log
    line to the access log and to the caller's own logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id()
        return True


def configure(level: str = "info") -> None:
    """Send linksvc's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("linksvc")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_linksvc", False) for h in logger.handlers):
        handler = JsonHandler(sys.stderr)
        handler._linksvc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
