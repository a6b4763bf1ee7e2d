"""linksvc as it runs in production: gunicorn masters sharing one PostgreSQL.

- two nodes (two gunicorn masters on two ports) share the ledger: minted on one, redeemed on the
  other, and a race split across both has exactly one winner;
- the database goes away during a redemption load (a TCP proxy between linksvc and PostgreSQL
  is cut, so the machine's shared server keeps running): redemptions answer 503 problem+json
  within seconds, nothing is reported redeemed that is not recorded, /readyz fails, and the same
  processes serve again once the database is back;
- workers are SIGKILLed during a redemption load: no link is redeemed twice and the service
  keeps serving;
- the access log holds no token, whatever path or query string carried it;
- a HUP reloads the workers without failing a request.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.support.env import base_env, free_port
from tests.support.servers import SERVERS, Server, prepare_instance, start_gunicorn, start_server

pytestmark = pytest.mark.slow

PG_HOST, PG_PORT = "127.0.0.1", 5432


# -- helpers ------------------------------------------------------------------------------


def _workers(server: Server) -> set[int]:
    pid = server.proc.pid
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _mint(
    server: Server, headers: dict[str, str], n: int, subject: str = "user"
) -> list[dict[str, Any]]:
    def one(i: int) -> dict[str, Any]:
        r = requests.post(
            f"{server.url}/api/v1/links",
            json={"purpose": "magic_link", "subject": f"{subject}-{i}"},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return r.json()

    with ThreadPoolExecutor(max_workers=min(n, 4)) as pool:
        return list(pool.map(one, range(n)))


def _ledger(url: str) -> tuple[dict[str, str], collections.Counter[str]]:
    """Each link's state and how many times each was recorded consumed (its row, plus any
    stored `consumed` event: an API redemption stores none), read straight from PostgreSQL."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(sa.text("SELECT jti, state FROM links")).all())
            consumed = collections.Counter(
                jti for jti, state in states.items() if state == "consumed"
            ) + collections.Counter(
                conn.execute(
                    sa.text("SELECT jti FROM link_events WHERE event = 'consumed'")
                ).scalars()
            )
    finally:
        engine.dispose()
    return states, consumed


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    env = base_env(tmp_path / "instance", pg_url)
    creds = prepare_instance(env)
    yield env, {"Authorization": f"Bearer {creds['api_key']}"}


# -- 1. two nodes, one database -------------------------------------------------------------


def test_two_nodes_share_one_postgresql(tmp_path: Path, pg_env) -> None:
    env, headers = pg_env
    # Two nodes: separate masters, separate instance directories, the same database and the
    # same key-encryption key (from the environment, as a secret store would hand it out).
    nodes = []
    for name in ("a", "b"):
        node_env = {**env, "LINKSVC_INSTANCE_PATH": str(tmp_path / f"node-{name}")}
        nodes.append(start_gunicorn(node_env, workers=2, log_path=tmp_path / f"{name}.log"))
    a, b = nodes
    try:
        link = _mint(a, headers, 1)[0]
        body = {"token": link["token"], "purpose": "magic_link"}
        assert (
            requests.post(
                f"{b.url}/api/v1/links/verify", json=body, headers=headers, timeout=10
            ).status_code
            == 200
        )
        assert (
            requests.post(
                f"{b.url}/api/v1/links/redeem", json=body, headers=headers, timeout=10
            ).status_code
            == 200
        )
        replay = requests.post(
            f"{a.url}/api/v1/links/redeem", json=body, headers=headers, timeout=10
        )
        assert replay.status_code == 409 and replay.json()["code"] == "used"
        assert (
            requests.get(f"{a.url}/.well-known/jwks.json", timeout=10).json()
            == requests.get(f"{b.url}/.well-known/jwks.json", timeout=10).json()
        )

        racers = 32
        for round_ in range(3):
            minted_on = nodes[round_ % 2]
            link = _mint(minted_on, headers, 1, subject=f"race{round_}")[0]
            body = {"token": link["token"], "purpose": "magic_link"}
            barrier = threading.Barrier(racers)
            sessions = [requests.Session() for _ in range(racers)]

            def one(i: int) -> tuple[str, int]:
                node = nodes[i % 2]  # half the racers at each node
                barrier.wait()
                r = sessions[i].post(
                    f"{node.url}/api/v1/links/redeem", json=body, headers=headers, timeout=30
                )
                return node.url, r.status_code

            with ThreadPoolExecutor(max_workers=racers) as pool:
                results = list(pool.map(one, range(racers)))
            codes = collections.Counter(code for _, code in results)
            assert codes == {200: 1, 409: racers - 1}, codes
            assert {url for url, _ in results} == {a.url, b.url}
            state = requests.get(
                f"{b.url}/api/v1/links/{link['jti']}", headers=headers, timeout=10
            ).json()
            assert [e["event"] for e in state["events"]].count("consumed") == 1
    finally:
        for node in nodes:
            node.stop()
    _, consumed = _ledger(env["LINKSVC_DATABASE_URL"])
    assert max(consumed.values()) == 1 and sum(consumed.values()) == 4
    for node in nodes:
        assert "Traceback" not in node.log()


# -- 2. the database goes away and comes back ---------------------------------------------


class PgProxy:
    """A TCP proxy in front of PostgreSQL that the test can cut and restore.

    ``refuse``: every connection is dropped at once and new ones are closed on arrival (the
    server restarting). ``hang``: open connections are dropped and new ones are accepted but
    never answered (a server that stopped responding) — only timeouts get a client out.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "up"
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        return database_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{self.port}")

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                conn.close()
                continue
            if self.mode == "hang":
                with self._lock:
                    self._socks.add(conn)
                continue
            try:
                upstream = socket.create_connection((PG_HOST, PG_PORT), timeout=3)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._socks |= {conn, upstream}
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket cut() just closed
            pass
        finally:
            self._drop(a, b)

    def _drop(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._socks.discard(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self, mode: str) -> None:
        self.mode = mode
        with self._lock:
            socks = list(self._socks)
        self._drop(*socks)

    def restore(self) -> None:
        self.mode = "up"
        with self._lock:
            socks = list(self._socks)
        self._drop(*socks)  # the silent ones held in "hang"

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut("refuse")


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_database_outage_answers_503_and_recovers_without_restart(
    tmp_path: Path, pg_env, mode: str
) -> None:
    env, headers = pg_env
    proxy = PgProxy()
    connect_timeout = 2
    server = start_gunicorn(
        {
            **env,
            "LINKSVC_DATABASE_URL": proxy.url(env["LINKSVC_DATABASE_URL"]),
            "LINKSVC_DB_CONNECT_TIMEOUT": str(connect_timeout),
        },
        workers=3,
        log_path=tmp_path / "server.log",
    )
    workers_before = _workers(server)
    links = _mint(server, headers, 150)
    # A link whose redemption met the outage goes back in the queue, as a client would retry
    # it, so the load cannot run dry before the database returns.
    queue = collections.deque(links)
    lock = threading.Lock()
    results: list[
        tuple[float, float, str, int, str, str]
    ] = []  # start, end, jti, status, type, code
    stop = threading.Event()

    def load() -> None:
        s = requests.Session()
        while not stop.is_set():
            with lock:
                link = queue.popleft() if queue else None
            if link is None:
                return
            statuses = []
            for _ in range(2):  # the redemption, then a replay
                start = time.monotonic()
                try:
                    r = s.post(
                        f"{server.url}/api/v1/links/redeem",
                        json={"token": link["token"], "purpose": "magic_link"},
                        headers=headers,
                        timeout=30,
                    )
                except requests.RequestException as exc:  # fails the status assertion below
                    results.append(
                        (start, time.monotonic(), link["jti"], 0, type(exc).__name__, "")
                    )
                    continue
                body = (
                    r.json() if r.headers.get("Content-Type", "").startswith("application/") else {}
                )
                results.append(
                    (
                        start,
                        time.monotonic(),
                        link["jti"],
                        r.status_code,
                        r.headers.get("Content-Type", ""),
                        body.get("code", ""),
                    )
                )
                statuses.append(r.status_code)
            if statuses and statuses[0] == 503:
                with lock:
                    queue.append(link)
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(1)
        cut_at = time.monotonic()
        proxy.cut(mode)
        time.sleep(0.5)
        ready = requests.get(f"{server.url}/readyz", timeout=30)
        ready_seconds = time.monotonic() - cut_at - 0.5
        # The other ways in fail just as cleanly: a mint, and a user clicking a link.
        mint = requests.post(
            f"{server.url}/api/v1/links",
            json={"purpose": "magic_link", "subject": "u"},
            headers=headers,
            timeout=30,
        )
        page = requests.get(f"{server.url}/l/{links[-1]['token']}", timeout=30)
        time.sleep(4)
        restored_at = time.monotonic()
        proxy.restore()
        recovery = _wait_for(
            lambda: requests.get(f"{server.url}/readyz", timeout=30).status_code == 200,
            20,
            "/readyz to pass again",
        )
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        fresh = _mint(server, headers, 1, subject="after")[0]
        after = requests.post(
            f"{server.url}/api/v1/links/redeem",
            json={"token": fresh["token"], "purpose": "magic_link"},
            headers=headers,
            timeout=10,
        )
        workers_after = _workers(server)
        master_alive = server.proc.poll() is None
    finally:
        stop.set()
        server.stop()
        proxy.close()

    assert ready.status_code == 503 and ready.headers["Content-Type"] == "application/problem+json"
    assert mint.status_code == 503 and mint.headers["Content-Type"] == "application/problem+json"
    assert page.status_code == 503 and page.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in page.text and links[-1]["token"] not in page.text
    assert after.status_code == 200
    # The same processes: no worker was killed by a timeout or restarted.
    assert master_alive and workers_after == workers_before

    during = [r for r in results if cut_at + 0.2 < r[0] and r[1] < restored_at]
    after_load = [r for r in results if r[0] > restored_at + recovery]
    assert during and after_load, (len(during), len(after_load))
    assert {(r[3], r[4], r[5]) for r in during} == {
        (503, "application/problem+json", "unavailable")
    }
    assert {r[3] for r in after_load} <= {200, 409} and 200 in {r[3] for r in after_load}
    assert {r[3] for r in results} <= {200, 409, 503}
    slowest = max(r[1] - r[0] for r in during)
    assert slowest < 3 * connect_timeout + 2, f"a 503 took {slowest:.1f}s"

    # Nothing reported redeemed without being recorded, and nothing redeemed twice.
    states, consumed = _ledger(env["LINKSVC_DATABASE_URL"])
    wins = collections.Counter(r[2] for r in results if r[3] == 200)
    assert max(wins.values()) == 1
    for jti in wins:
        assert states[jti] == "consumed" and consumed[jti] == 1, jti
    assert max(consumed.values()) == 1
    print(
        f"\n{mode}: {len(during)} redemptions during the outage, all 503, slowest {slowest:.2f}s; "
        f"/readyz failed in {ready_seconds:.2f}s; recovered {recovery:.2f}s after the database returned"
    )


# -- 3. SIGKILL a worker under load --------------------------------------------------------


@pytest.mark.parametrize(
    "server_name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                strict=False,
                reason="granian resets the connections in a killed worker's own accept queue "
                "(net.ipv4.tcp_migrate_req=0 here; docs/deploy.md): a client mid-request sees a reset",
            )
            if name == "granian"
            else [],
        )
        for name in SERVERS
    ],
)
def test_sigkill_workers_during_redemptions(tmp_path: Path, pg_env, server_name: str) -> None:
    env, headers = pg_env
    server = start_server(env, server=server_name, workers=3, log_path=tmp_path / "server.log")
    links = _mint(server, headers, 200)
    # Every link is asked for twice at about the same time, by two different client threads.
    queue = [link for link in links for _ in range(2)]
    lock = threading.Lock()
    results: list[tuple[str, int | str]] = []
    stop = threading.Event()

    def load() -> None:
        s = requests.Session()
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                link = queue.pop(0)
            try:
                r = s.post(
                    f"{server.url}/api/v1/links/redeem",
                    json={"token": link["token"], "purpose": "magic_link"},
                    headers=headers,
                    timeout=30,
                )
                results.append((link["jti"], r.status_code))
            except requests.RequestException:
                results.append((link["jti"], "reset"))  # its worker died mid-request
                s = requests.Session()

    threads = [threading.Thread(target=load) for _ in range(6)]
    killed = []
    try:
        original = _workers(server)
        for t in threads:
            t.start()
        rng = random.Random(6)
        for _ in range(4):
            time.sleep(0.4)
            victim = rng.choice(sorted(_workers(server)))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        for t in threads:
            t.join(timeout=120)
        _wait_for(
            lambda: len(_workers(server)) == 3, 30, "the master to replace the killed workers"
        )
        fresh = _mint(server, headers, 1, subject="after")[0]
        after = requests.post(
            f"{server.url}/api/v1/links/redeem",
            json={"token": fresh["token"], "purpose": "magic_link"},
            headers=headers,
            timeout=10,
        )
        workers_now = _workers(server)
    finally:
        stop.set()
        server.stop()

    assert after.status_code == 200
    assert not set(killed) & workers_now and original != workers_now
    codes = collections.Counter(code for _, code in results)
    assert set(codes) <= {200, 409, "reset"}, codes
    assert codes["reset"] >= 1, (
        "no request was in flight when a worker was killed; the test proved nothing"
    )
    wins = collections.Counter(jti for jti, code in results if code == 200)
    assert wins and max(wins.values()) == 1
    states, consumed = _ledger(env["LINKSVC_DATABASE_URL"])
    assert max(consumed.values()) == 1, "a link was consumed twice"
    for jti in wins:
        assert states[jti] == "consumed" and consumed[jti] == 1
    # A consumed link nobody heard about is the one case allowed: the worker died after COMMIT.
    unheard = {j for j, s in states.items() if s == "consumed"} - set(wins) - {fresh["jti"]}
    reset_jtis = {jti for jti, code in results if code == "reset"}
    assert unheard <= reset_jtis
    print(
        f"\nSIGKILLed {len(killed)} workers: {dict(codes)}; {len(unheard)} consumed with the answer lost"
    )


# -- access log and reload -----------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def sqlite_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("sqlite-node")
    env = base_env(tmp / "instance")
    creds = prepare_instance(env)
    server = start_server(env, server=request.param, workers=2, log_path=tmp / "server.log")
    try:
        yield server, creds
    finally:
        server.stop()


def test_access_log_holds_no_token(sqlite_server) -> None:
    server, creds = sqlite_server
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    secrets = [creds["api_key"]]
    try:
        link = _mint(server, headers, 1)[0]
        token = link["token"]
        secrets.append(token)
        secrets.append("grant-" + "x" * 40)
        enc = token.replace(".", "%2E")
        paths = [
            f"/l/{token}",
            f"/d/{token}",
            f"/dl/{secrets[-1]}",
            f"/dl/{secrets[-1]}/file.pdf",
            f"/nothing?token={token}",
            f"/l/{token}?utm=1",
            f"/L/{token}",
            f"/x/{enc}",
            f"/api/v1/links?api_key={creds['api_key']}",
            f"//l/{token}",
            f"/l/{enc}",
        ]
        for path in paths:
            requests.get(server.url + path, timeout=10, allow_redirects=False)
            requests.head(server.url + path, timeout=10, allow_redirects=False)
        requests.post(
            f"{server.url}/l/{token}", data={"csrf": "x"}, timeout=10, allow_redirects=False
        )
        # A request line gunicorn itself rejects goes to the error log; it is redacted there too.
        with socket.create_connection(
            ("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5
        ) as s:
            s.sendall(f"GET /l/{token} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode())
            s.recv(1024)
        # A quote in a request line must not break the JSON of the access line.
        with socket.create_connection(
            ("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5
        ) as s:
            s.sendall(
                f'GET /quote"d?token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'.encode()
            )
            s.recv(1024)
    finally:
        time.sleep(0.5)  # the access log line is written after the response
    log = server.log()
    assert "/l/[redacted]" in log and "/dl/[redacted]" in log and "token=[redacted]" in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"remote"')]
    assert len(access) >= 2 * len(paths) and any('quote"d' in a["request"] for a in access)
    for secret in secrets:
        pieces = [secret, *secret.split(".")[1:]] if "." in secret else [secret, secret[6:]]
        for piece in pieces:
            assert piece not in log, f"a secret reached the log: …{piece[-12:]}"


@pytest.mark.parametrize("server_name", SERVERS)
def test_access_log_redacts_paths_as_routing_decodes_them(tmp_path: Path, server_name: str) -> None:
    """Issue 17 item 11: ``GET /%64l/<grant>`` is routed to /dl/ (and served); its access line
    must not hold the grant. The same for /l/ and /d/ spelled with percent-escapes."""
    import http.client

    from tests.support.servers import mint_download

    files = tmp_path / "files"
    (files / "docs").mkdir(parents=True)
    (files / "docs" / "r.pdf").write_bytes(b"%PDF-1.7 " + b"q" * 500)
    env = base_env(tmp_path / "instance", LINKSVC_STORAGE_DIR=str(files))
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    server = start_server(env, server=server_name, workers=1, log_path=tmp_path / "server.log")
    port = int(server.url.rsplit(":", 1)[1])

    def raw_get(path: str) -> int:
        # Sent as written: an HTTP library could normalise the escapes away.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status

    try:
        link = mint_download(server.url, headers, "u", key="docs/r.pdf")
        location = requests.get(
            f"{server.url}/d/{link['token']}", timeout=10, allow_redirects=False
        ).headers["Location"]
        grant = location.rsplit("/dl/", 1)[1]
        assert raw_get(f"/%64l/{grant}") == 200  # routed: the attack is real
        assert raw_get(f"/%64%6C/{grant}") == 200
        page = requests.post(
            f"{server.url}/api/v1/links",
            json={"purpose": "magic_link", "subject": "u"},
            headers=headers,
            timeout=10,
        ).json()["token"]
        enc = page.replace(".", "%2E")
        for path in (f"/%6C/{enc}", f"/%6c/{page}", f"/%64/{enc}", f"/l/{enc}"):
            raw_get(path)
    finally:
        time.sleep(0.5)  # the access line is written after the response
        server.stop()
    log = server.log()
    access = [line for line in log.splitlines() if line.startswith('{"remote"')]
    assert len(access) >= 7 and "/dl/[redacted]" in log and "/l/[redacted]" in log
    for secret in (grant, grant[:20], grant[-20:], *page.split("."), enc):
        assert secret not in log, f"a secret reached the log: …{secret[-12:]}"


def test_hup_reloads_workers_without_dropping_requests(
    sqlite_server, request: pytest.FixtureRequest
) -> None:
    server, creds = sqlite_server
    if server.server == "granian":
        request.applymarker(
            pytest.mark.xfail(
                strict=False,
                reason="granian's reload closes a worker's idle keep-alive connections, and a "
                "request sent on one just then gets no answer (1 in ~1,000 in one CI run): "
                "take a node out of the load balancer before reloading it (docs/deploy.md)",
            )
        )
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    failures: list[str] = []
    done = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(
                    f"{server.url}/api/v1/links",
                    json={"purpose": "magic_link", "subject": "u"},
                    headers=headers,
                    timeout=30,
                )
                done[r.status_code] += 1
                if r.status_code != 201:
                    failures.append(str(r.status_code))
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        before = _workers(server)
        for t in threads:
            t.start()
        time.sleep(1)
        os.kill(server.proc.pid, signal.SIGHUP)
        _wait_for(
            lambda: len(_workers(server)) == 2 and not _workers(server) & before,
            30,
            "new workers to replace the old ones",
        )
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert server.proc.poll() is None
    finally:
        stop.set()
    assert not failures, collections.Counter(failures)
    assert done[201] > 10
