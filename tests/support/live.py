"""A live linksvc for the Python client's tests: gunicorn serving ``tests.support.clock_wsgi``
(the real app with a clock the test can move), a client application registered through
the real CLI, and helpers that act as the end user's browser."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from .env import base_env, flask_cli, free_port
from .servers import Server, prepare_instance, start_gunicorn


@dataclass
class Live:
    server: Server
    env: dict[str, str]
    instance: Path
    client_id: str
    api_key: str

    @property
    def url(self) -> str:
        return self.server.url

    def shift_clock(self, seconds: float) -> None:
        """Move the service's clock (every worker reads it on each request)."""
        (self.instance / "clock_offset").write_text(str(seconds))

    def new_client(self, name: str, *extra: str) -> tuple[str, str]:
        creds = prepare_instance(self.env, name, *extra)
        return creds["client_id"], creds["api_key"]

    def cli(self, *args: str) -> str:
        return flask_cli(self.env, *args).stdout


@contextlib.contextmanager
def live_linksvc(
    tmp: Path, database_url: str | None = None, workers: int = 2, **settings: str
) -> Iterator[Live]:
    instance = tmp / "instance"
    port = free_port()
    env = base_env(
        instance,
        database_url,
        LINKSVC_KEY_REFRESH_SECONDS="1",
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
        **settings,
    )
    creds = prepare_instance(env)
    server = start_gunicorn(
        env,
        workers=workers,
        port=port,
        log_path=tmp / "server.log",
        wsgi="tests.support.clock_wsgi:app",
    )
    try:
        yield Live(server, env, instance, creds["client_id"], creds["api_key"])
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def press(url: str) -> str:
    """Open a sign-in or reset link and press its button like a browser; return the
    one-time code linksvc hands to the redirect URI."""
    browser = requests.Session()
    page = browser.get(url, timeout=10)
    assert page.status_code == 200, page.text[:300]
    m = re.search(r'name="csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf"', page.text)
    assert m, "the confirmation page has a csrf field"
    resp = browser.post(
        url,
        data={"csrf": m.group(1) or m.group(2)},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 303, resp.text[:300]
    code = re.search(r"[?&]code=([^&]+)", resp.headers["Location"])
    assert code, resp.headers["Location"]
    return code.group(1)
