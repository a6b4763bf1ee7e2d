"""The access log's redaction, and the access log itself for servers that have none of ours.

Link paths (/l/<token>, /d/<token>, /dl/<grant>) carry bearer credentials, so every access
and error line is redacted before it is written: link paths (as routing decodes them),
anything shaped like a link token or an API key, and the values of query parameters.

This module imports only the standard library: ``gunicorn.conf.py`` and ``serve.py`` load
it by its path in the server's master process, which must not hold linksvc's modules (or a
graceful reload would not load new code). Under gunicorn its logger writes the access line
(``access_log_format``); under granian, whose access log knows neither the response's
length nor its headers, :class:`AccessLog` writes the same JSON line from inside the worker.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

# The whole rest of the path: the link routes take <path:token>, so '/l/a/b' is token 'a/b'.
_SECRET_PATH = re.compile(r"/(l|d|dl)/[^\s?#\"]+", re.IGNORECASE)
# A compact JWS (dots possibly percent-encoded) or an API key, wherever it appears.
_TOKENISH = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}(?:\.|%2[eE])[A-Za-z0-9_-]{4,}(?:\.|%2[eE])[A-Za-z0-9_-]*"
    r"|lsk_[A-Za-z0-9_-]{8,}"
)
# Query values: linksvc takes no secrets in query strings, but a caller may put one there.
_QUERY_VALUE = re.compile(r"([?&][^=&\s\"#?]*=)[^&\s\"#]+")
_PATH = re.compile(r"/[^\s\"?#]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _redact_path(path: str) -> str:
    """A path as routing sees it: percent-decoded first (``/%64l/<grant>`` is routed to
    ``/dl/``), so a secret path segment is found whatever encoding carried it."""
    if "%" not in path:
        return _SECRET_PATH.sub(lambda m: f"/{m.group(1)}/[redacted]", path)
    decoded = unquote(path, errors="replace")
    if not _SECRET_PATH.search(decoded):
        return path
    return _SECRET_PATH.sub(lambda m: f"/{m.group(1)}/[redacted]", decoded)


def redact(text: str) -> str:
    """``text`` without link paths, token- or key-shaped strings and query values."""
    text = _PATH.sub(lambda m: _redact_path(m.group()), text)
    text = _QUERY_VALUE.sub(r"\1[redacted]", text)
    return _TOKENISH.sub("[redacted]", text)


def json_safe(value: str) -> str:
    """Escape backslashes and control characters so that a value inside a JSON access line
    stays valid JSON whatever a client sent (double quotes are the caller's)."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", value.replace("\\", "\\\\"))


def _field(value: str) -> str:
    return json_safe(redact(value)).replace('"', '\\"')


class AccessLog:
    """WSGI middleware writing gunicorn.conf.py's access line, one JSON object a request::

        {"remote":"…","request":"GET /l/[redacted] HTTP/1.1","status":200,"bytes":"512",
         "ms":3,"request_id":"…"}

    ``remote`` is the peer (the proxy, behind one); the client's own address is what
    linksvc reads through its trusted proxies (``LINKSVC_TRUSTED_PROXIES``). The line is
    written when the response's body has been handed to the server, as gunicorn does."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], write: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.write = write or _stdout_line

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        remote = environ.get("REMOTE_ADDR") or "-"
        answer: list[Any] = []

        def recording_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            answer[:] = [status, headers]
            return start_response(status, headers, exc_info)

        body = self.app(environ, recording_start_response)
        if isinstance(body, list):  # the usual answer: no wrapping, the server's fast path
            self._log(environ, remote, answer, sum(map(len, body)), started)
            return body
        return _Logged(body, lambda sent: self._log(environ, remote, answer, sent, started))

    def _log(
        self, environ: dict[str, Any], remote: str, answer: list[Any], sent: int, started: float
    ) -> None:
        status, headers = answer if answer else ("500", [])
        request_id = next((v for k, v in headers if k.lower() == "x-request-id"), "-")
        query = environ.get("QUERY_STRING")
        target = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        request = (
            f"{environ.get('REQUEST_METHOD', '-')} {target} {environ.get('SERVER_PROTOCOL', '-')}"
        )
        ms = int((time.perf_counter() - started) * 1000)
        self.write(
            f'{{"remote":"{_field(remote)}","request":"{_field(request)}",'
            f'"status":{int(str(status)[:3])},"bytes":"{sent if sent else "-"}","ms":{ms},'
            f'"request_id":"{_field(request_id)}"}}'
        )


class _Logged:
    """A streamed body (files, downloads) counted as it goes; logged when the server closes it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self.body, self.done, self.sent = body, done, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close_body(self.body)
        finally:
            self.done(self.sent)


def close_body(body: Iterable[bytes]) -> None:
    """Close a wrapped response body, as a WSGI server would have (PEP 3333): a wrapper's
    ``close`` must call the one of the body it wraps, if it has one."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


_ACCESS = logging.getLogger("linksvc.access")


def _stdout_line(line: str) -> None:
    if not _ACCESS.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _ACCESS.addHandler(handler)
        _ACCESS.setLevel(logging.INFO)
        _ACCESS.propagate = False
    _ACCESS.info(line)


class RedactFilter(logging.Filter):
    """Formats a record's message, redacts it, and redacts a traceback's text too: for the
    server's own error log, which may quote a request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        import traceback

        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            )
        return True
