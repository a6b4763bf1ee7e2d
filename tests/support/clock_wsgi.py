"""``app:app`` with a clock the tests can move: seconds added to the time are read from
``<instance>/clock_offset`` on every call, so a test against a live gunicorn can let a
link or a code expire without sleeping (PROTOCOL: time is a parameter)."""

import os
import time
from pathlib import Path

from app import app
from linksvc.services import services

_OFFSET = Path(os.environ["LINKSVC_INSTANCE_PATH"]) / "clock_offset"


def _now() -> float:
    try:
        return time.time() + float(_OFFSET.read_text())
    except (OSError, ValueError):
        return time.time()


services(app).links.clock = _now
