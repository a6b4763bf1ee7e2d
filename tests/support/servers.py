"""Real servers for tests: linksvc (or any WSGI app) under gunicorn or granian, an instance
prepared through the real CLI, and requests fired at a live server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .env import ROOT, _clean_environ, flask_cli, free_port, venv_bin


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
                _kill_group(self.proc)


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
    root: Path = ROOT,
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
        root=root,
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
    root: Path = ROOT,
) -> Server:
    """Serve ``wsgi`` under ``server`` (gunicorn with gunicorn.conf.py, or granian as serve.py
    runs it) with the repository's configuration; wait until it answers. ``root``: the
    checkout whose configuration and code are served (another one: ``bench.compare``)."""
    port = port or free_port()
    full = {**_clean_environ(), **env, "PYTHONUNBUFFERED": "1"}
    workers_args = ("--workers", str(workers)) if workers is not None else ()
    if server == "gunicorn":
        args = [
            venv_bin("gunicorn"),
            "-c",
            str(root / "gunicorn.conf.py"),
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
            str(root / "serve.py"),
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
        args, cwd=root, env=full, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
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
    _kill_group(proc)
    raise RuntimeError(f"{server} did not come up on {url}:\n{log_path.read_text()[-3000:]}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and its workers: the master leads a session of its own
    (``start_new_session``), and a master killed alone leaves its workers running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
