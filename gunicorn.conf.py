"""gunicorn settings for linksvc: `gunicorn -c gunicorn.conf.py app:app`.

Link paths (/l/<token>, /d/<token>, /dl/<grant>) carry bearer credentials, so the access log
replaces them before anything is written. Override any setting on the command line.
"""

import os
import re

from gunicorn.glogging import Logger

bind = os.environ.get("LINKSVC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("LINKSVC_WORKERS", "2"))
worker_class = "sync"
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 0
accesslog = "-"
errorlog = "-"
access_log_format = '{"remote":"%(h)s","request":"%(r)s","status":%(s)s,"bytes":"%(b)s","ms":%(M)s,"request_id":"%({x-request-id}o)s"}'

_SECRET_PATH = re.compile(r"/(l|d|dl)/[^\s?\"/]+")
_TOKENISH = re.compile(r"(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|lsk_[A-Za-z0-9_-]{8,})")


def _redact(text: str) -> str:
    return _TOKENISH.sub("[redacted]", _SECRET_PATH.sub(r"/\1/[redacted]", text))


class RedactingLogger(Logger):
    """Access and error logs with link tokens and API keys removed from every line."""

    def atoms(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "{raw_uri}e", "f"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = _redact(atoms[key])
        return atoms

    def error(self, msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().error(_redact(str(msg)), *args, **kwargs)

    def warning(self, msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().warning(_redact(str(msg)), *args, **kwargs)

    def info(self, msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().info(_redact(str(msg)), *args, **kwargs)

    def exception(self, msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().exception(_redact(str(msg)), *args, **kwargs)


logger_class = RedactingLogger
