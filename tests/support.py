"""Helpers for tests that need real servers: ports, gunicorn, PostgreSQL, skipping rules."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("LINKSVC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LINKSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing(what: str, why: str) -> None:
    """Skip a test whose real dependency is absent — except in CI, where that is a failure."""
    message = f"{what} is not available ({why})"
    if IN_CI:
        pytest.fail(f"{message}; in CI every real dependency must be present", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_b64() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def base_env(instance: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """LINKSVC_* settings for a hermetic instance in ``instance``."""
    env = {
        "LINKSVC_ENV": "test",
        "LINKSVC_INSTANCE_PATH": str(instance),
        "LINKSVC_DATABASE_URL": database_url or f"sqlite:///{instance / 'linksvc.db'}",
        "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(),
        "LINKSVC_SECRET_KEY": secret_b64(),
    }
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def flask_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full = {**_clean_environ(), **env}
    return subprocess.run(
        [venv_bin("flask"), "--app", "app", *args],
        cwd=ROOT,
        env=full,
        text=True,
        capture_output=True,
        check=check,
        timeout=120,
    )


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}


def pg_available() -> tuple[bool, str]:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextlib.contextmanager
def pg_database(prefix: str = "linksvc_t") -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server; dropped afterwards.
    Where the server is absent: skipped, or a failure in CI (see :func:`missing`)."""
    ok, why = pg_available()
    if not ok:
        missing("PostgreSQL at 127.0.0.1:5432", why)
    with fresh_pg_database(prefix) as url:
        yield url


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """Create a uniquely named database (``prefix_…``) and drop it afterwards."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        # template0 accepts no connections, so concurrent CREATE DATABASE calls never trip
        # over "source database is being accessed by other users".
        conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    server: str = "gunicorn"

    def workers(self) -> set[int]:
        """The worker processes: the master's children."""
        pid = self.proc.pid
        try:
            return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        except FileNotFoundError:
            return set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: The HTTP servers linksvc runs under (serve.py, LINKSVC_SERVER); the server-level tests
#: run over both.
SERVERS = ("gunicorn", "granian")


def start_gunicorn(
    env: Mapping[str, str],
    *,
    workers: int | None = 2,
    port: int | None = None,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
    wsgi: str = "app:app",
    timeout: float = 30.0,
) -> Server:
    """Serve ``wsgi`` under gunicorn with the repository's configuration; wait until it answers."""
    return start_server(
        env,
        server="gunicorn",
        workers=workers,
        port=port,
        log_path=log_path,
        extra_args=extra_args,
        wsgi=wsgi,
        timeout=timeout,
    )


def start_server(
    env: Mapping[str, str],
    *,
    server: str = "gunicorn",
    workers: int | None = 2,
    port: int | None = None,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
    wsgi: str = "app:app",
    timeout: float = 30.0,
) -> Server:
    """Serve ``wsgi`` under ``server`` (gunicorn with gunicorn.conf.py, or granian as serve.py
    runs it) with the repository's configuration; wait until it answers."""
    port = port or free_port()
    full = {**_clean_environ(), **env, "PYTHONUNBUFFERED": "1"}
    workers_args = ("--workers", str(workers)) if workers is not None else ()
    if server == "gunicorn":
        args = [
            venv_bin("gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            *workers_args,
            "--bind",
            f"127.0.0.1:{port}",
            *extra_args,
            wsgi,
        ]
    elif server == "granian":
        full["LINKSVC_SERVER"] = "granian"
        args = [
            sys.executable,
            str(ROOT / "serve.py"),
            *workers_args,
            "--bind",
            f"127.0.0.1:{port}",
            "--app",
            wsgi,
            *extra_args,
        ]
    else:
        raise ValueError(f"unknown server {server!r}")
    logf = open(log_path, "ab")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=full, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{server} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(url, proc, log_path, dict(env), server)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{server} did not come up on {url}:\n{log_path.read_text()[-3000:]}")


def prepare_instance(env: Mapping[str, str], name: str = "acme", *extra: str) -> dict[str, str]:
    """``init-db`` and a client, through the real CLI. Returns the ``--json`` output."""
    import json

    flask_cli(env, "init-db")
    out = flask_cli(
        env,
        "clients",
        "create",
        name,
        "--purposes",
        "magic_link,password_reset,download",
        "--redirect-uri",
        "http://127.0.0.1:5001/callback",
        "--mint-limit",
        "100000 per minute",
        "--subject-limit",
        "100000 per minute",
        "--json",
        *extra,
    )
    return json.loads(out.stdout)


def race(url: str, n: int, payload: dict, headers: dict[str, str]) -> list[int]:
    """Fire ``n`` POSTs at once (released together by a barrier); return the status codes."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(n)
    sessions = [requests.Session() for _ in range(n)]

    def one(i: int) -> int:
        barrier.wait()
        return sessions[i].post(url, json=payload, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def dump_database(url: str) -> str:
    """Every row of every table, as text: for asserting that a secret was never stored."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    parts = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    engine.dispose()
    return "\n".join(parts)


def mint_download(url: str, headers: dict[str, str], subject: str, **download: object) -> dict:
    """Mint a download link over HTTP (``download`` as the API takes it); asserts 201."""
    resp = requests.post(
        f"{url}/api/v1/links",
        json={"purpose": "download", "subject": subject, "download": download},
        headers=headers,
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()
