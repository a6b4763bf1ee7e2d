"""The server contract under both HTTP servers (serve.py, LINKSVC_SERVER): slow clients, idle
keep-alive connections and a graceful stop, each with and without a buffering proxy (HAProxy,
as deploy/compose.yaml runs it) in front.

A slow client must not take linksvc from everyone else: a slowloris client (headers a byte
at a time), a body trickled byte by byte, hundreds of idle keep-alive connections. gunicorn's
sync workers read a request whole in the worker, so without a proxy a handful of slow
clients hold every worker: those cases are expected to fail (strict xfail), which is why
docs/deploy.md puts gunicorn behind a buffering proxy. granian reads requests in its Rust
runtime and must hold them all, proxy or not.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.env import ROOT, base_env, free_port
from tests.support.servers import SERVERS, Server, prepare_instance, start_server

pytestmark = pytest.mark.slow

#: How long a request of a well-behaved client may take while the slow ones are connected.
PROMPT = 3.0


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    tmp = tmp_path_factory.mktemp("servers")
    env = base_env(tmp / "instance")
    creds = prepare_instance(env)
    return env, {"Authorization": f"Bearer {creds['api_key']}"}


@contextlib.contextmanager
def served(
    instance: tuple[dict[str, str], dict[str, str]], server_name: str, tmp_path: Path
) -> Iterator[Server]:
    env, _ = instance
    server = start_server(env, server=server_name, workers=2, log_path=tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def haproxy(target: str, tmp_path: Path) -> Iterator[str]:
    """HAProxy in front of ``target`` as deploy/haproxy/haproxy.cfg runs it, buffering each
    request whole (headers and body) before it reaches the server, reusing its idle
    connections to the server for any client."""
    if shutil.which("haproxy") is None:
        from tests.support.env import missing

        missing("haproxy", "apt-get install haproxy")
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 3s\n  timeout http-request 10s\n"
        "  timeout client 30s\n  timeout server 30s\n  timeout http-keep-alive 5s\n"
        "  option http-buffer-request\n"
        f"frontend links\n  bind 127.0.0.1:{port}\n  option forwardfor\n  default_backend nodes\n"
        f"backend nodes\n  http-reuse always\n  server node1 {target.removeprefix('http://')}\n"
    )
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "haproxy.log", "ab"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp_path / "haproxy.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def front(
    instance: tuple[dict[str, str], dict[str, str]],
    server_name: str,
    proxied: bool,
    tmp_path: Path,
) -> Iterator[str]:
    with served(instance, server_name, tmp_path) as server:
        if proxied:
            with haproxy(server.url, tmp_path) as url:
                yield url
        else:
            yield server.url


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _prompt_answers(url: str, headers: dict[str, str], n: int = 6) -> list[float]:
    """Mint up to ``n`` links on fresh connections; each one's seconds (inf when it failed),
    up to the first that was not prompt."""
    took = []
    for i in range(n):
        started = time.monotonic()
        try:
            r = requests.post(
                f"{url}/api/v1/links",
                json={"purpose": "magic_link", "subject": f"prompt-{i}"},
                headers={**headers, "Connection": "close"},
                timeout=PROMPT * 3,
            )
            took.append(time.monotonic() - started if r.status_code == 201 else float("inf"))
        except requests.RequestException:
            took.append(float("inf"))
        if took[-1] >= PROMPT:
            break  # one is enough to fail on (and keeps the xfail cases short)
    return took


def _slow_clients(url: str, n: int, payloads: list[bytes], interval: float) -> threading.Event:
    """``n`` connections, each sending its payload one byte every ``interval`` seconds until
    the returned event is set (or the server closes it)."""
    stop = threading.Event()
    ready = threading.Barrier(n + 1)

    def one(payload: bytes) -> None:
        try:
            s = socket.create_connection(_address(url), timeout=5)
        except OSError:
            ready.wait()
            return
        with s:
            ready.wait()
            try:
                for byte in payload:
                    if stop.wait(interval):
                        return
                    s.sendall(bytes([byte]))
                stop.wait()
            except OSError:
                return  # closed by the server (its header timeout): the client's problem

    for i in range(n):
        threading.Thread(target=one, args=(payloads[i % len(payloads)],), daemon=True).start()
    ready.wait()
    return stop


def _cases(gunicorn_needs_the_proxy: bool) -> list[object]:
    """Each server, direct and behind HAProxy; gunicorn direct a strict xfail where its sync
    workers are known to be held by slow clients (it must keep failing: else drop the mark)."""
    xfail = pytest.mark.xfail(
        strict=True, reason="gunicorn's sync workers need a buffering proxy (docs/deploy.md)"
    )
    return [
        pytest.param(
            server,
            proxied,
            id=f"{server}-{'proxied' if proxied else 'direct'}",
            marks=[xfail]
            if gunicorn_needs_the_proxy and server == "gunicorn" and not proxied
            else [],
        )
        for server in SERVERS
        for proxied in (False, True)
    ]


@pytest.mark.parametrize(("server_name", "proxied"), _cases(True))
def test_slowloris_clients_do_not_starve_the_others(
    instance, server_name: str, proxied: bool, tmp_path: Path
) -> None:
    _, headers = instance
    with front(instance, server_name, proxied, tmp_path) as url:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200
        stop = _slow_clients(url, 50, [request], interval=0.2)
        try:
            time.sleep(1)
            took = _prompt_answers(url, headers)
        finally:
            stop.set()
    assert max(took) < PROMPT, took


@pytest.mark.parametrize(("server_name", "proxied"), _cases(True))
def test_bodies_trickled_byte_by_byte_do_not_starve_the_others(
    instance, server_name: str, proxied: bool, tmp_path: Path
) -> None:
    _, headers = instance
    body = json.dumps({"purpose": "magic_link", "subject": "trickle" + " " * 400}).encode()
    head = (
        "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with front(instance, server_name, proxied, tmp_path) as url:
        # The headers at once, the body a byte at a time: the request reaches the app.
        stop = threading.Event()
        socks = []
        for _ in range(20):
            s = socket.create_connection(_address(url), timeout=5)
            s.sendall(head)
            socks.append(s)

        def trickle() -> None:
            for byte in body:
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(bytes([byte]))
                if stop.wait(0.2):
                    return

        threading.Thread(target=trickle, daemon=True).start()
        try:
            time.sleep(1)
            took = _prompt_answers(url, headers)
        finally:
            stop.set()
            for s in socks:
                s.close()
    assert max(took) < PROMPT, took


@pytest.mark.parametrize(
    ("server_name", "proxied"),
    # gunicorn direct is left out: its sync workers took 303 s to answer the 300 connections
    # (measured once), far over CI's budget; in production they sit behind the proxy.
    [c for c in _cases(False) if c.id != "gunicorn-direct"],  # type: ignore[attr-defined]
)
def test_many_idle_keep_alive_connections_do_not_starve_the_others(
    instance, server_name: str, proxied: bool, tmp_path: Path
) -> None:
    """300 connections that each made one request and keep the connection open, idle (a
    proxy's or a client library's pool): granian counts its backpressure in connections."""
    _, headers = instance
    with front(instance, server_name, proxied, tmp_path) as url:
        idle = []
        try:
            for _ in range(300):
                s = socket.create_connection(_address(url), timeout=10)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                idle.append(s)
            started = time.monotonic()
            for s in idle:
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            all_answered = time.monotonic() - started
            took = _prompt_answers(url, headers)
        finally:
            for s in idle:
                s.close()
    # Past a worker's backpressure (connections), the rest waited for idle ones to time out.
    assert all_answered < PROMPT, all_answered
    assert max(took) < PROMPT, took


_GUNICORN_STOP = pytest.mark.xfail(
    strict=False,  # a race: a stop with an empty backlog answers everything
    reason="gunicorn resets the connections still in its listen backlog when it stops (and "
    "HAProxy passes a POST's reset on): take a node out of the load balancer first",
)


# Measured: in about 1 stop in 3, one request that a keep-alive client sent on its idle
# connection just as granian closed it gets no answer (RemoteDisconnected); behind HAProxy
# once in the runs here, on a loaded machine (HAProxy passes the close on).
_GRANIAN_STOP = pytest.mark.xfail(
    strict=False,
    reason="granian may close an idle keep-alive connection as a request arrives on it",
)


@pytest.mark.parametrize(
    ("server_name", "proxied"),
    [
        pytest.param(server, proxied, id=f"{server}-{'proxied' if proxied else 'direct'}",
                     marks=[_GUNICORN_STOP] if server == "gunicorn" else [_GRANIAN_STOP])
        for server in SERVERS
        for proxied in (False, True)
    ],
)  # fmt: skip
def test_graceful_stop_answers_every_accepted_request(
    instance, server_name: str, proxied: bool, tmp_path: Path
) -> None:
    """TERM under a load of keep-alive clients: every request sent is answered in full, or
    refused before it was sent (connection refused: never reset half-way, never a 5xx); the
    server is gone within its graceful timeout."""
    _, headers = instance
    env, _ = instance
    server = start_server(env, server=server_name, workers=2, log_path=tmp_path / "server.log")
    answered: collections.Counter[int] = collections.Counter()
    broken: list[str] = []
    stop = threading.Event()
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(haproxy(server.url, tmp_path)) if proxied else server.url

            def load() -> None:
                with requests.Session() as s:
                    while not stop.is_set():
                        try:
                            r = s.post(
                                f"{url}/api/v1/links",
                                json={"purpose": "magic_link", "subject": "stop"},
                                headers=headers,
                                timeout=30,
                            )
                            answered[r.status_code] += 1
                            if proxied and r.status_code == 503:
                                return  # HAProxy's own answer once the node has gone
                        except requests.ConnectionError as exc:
                            if "Connection refused" in str(exc):
                                return
                            broken.append(str(exc)[:200])
                            return

            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while sum(answered.values()) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)
            server.proc.wait(timeout=30)
            took = time.monotonic() - started
            stop.set()
            for t in threads:
                t.join(timeout=30)
    finally:
        stop.set()
        server.stop()
    codes = dict(answered)
    if proxied:
        codes.pop(503, None)  # from HAProxy, after the node stopped listening
    assert set(codes) == {201}, answered
    assert not broken, broken
    assert took < 20, took
    print(f"\n{server_name} {'proxied' if proxied else 'direct'}: {dict(answered)}, {took:.2f}s")


def test_serve_refuses_an_unknown_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    out = subprocess.run(
        [sys.executable, "serve.py"],
        cwd=ROOT,
        env={**env, "LINKSVC_SERVER": "uwsgi"},
        text=True,
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 4
    assert "LINKSVC_SERVER: must be one of gunicorn, granian, not 'uwsgi'" in out.stderr
