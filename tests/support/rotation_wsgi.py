"""``app:app`` with each response naming the worker process that served it.

For tests/links/test_rotation.py, which must show that *every* gunicorn worker picks up a key
rotation: the header tells the test which worker minted which link.
"""

import os

from app import app as linksvc_app


def app(environ, start_response):  # type: ignore[no-untyped-def]
    def start(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return linksvc_app(environ, start)
