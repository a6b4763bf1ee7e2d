"""Key rotation against real multi-worker gunicorn servers.

- An outside verifier that knows only the JWKS URL (scripts/verify_with_jwks.py, PyJWT's
  PyJWKClient) verifies links signed with ES256, EdDSA and RS256 keys made by the CLI.
- Two rotations while mint-and-redeem load runs on three workers: no redemption fails, whether the link
  was minted before, between or after the rotations, and every worker picks up each
  rotation within LINKSVC_KEY_REFRESH_SECONDS without a restart.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from linksvc import config
from linksvc.links import keys
from linksvc.store import db
from tests.support.databases import pg_database
from tests.support.env import ROOT, base_env, flask_cli, free_port
from tests.support.servers import prepare_instance, start_gunicorn

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "verify_with_jwks.py"
REFRESH = 1
PICKUP_BOUND = 10.0  # the bound; the measured pickup is reported below it


def _header(token: str) -> dict:
    seg = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def _rotate(env: dict[str, str], *args: str) -> str:
    """Rotate through the real CLI; returns the new active kid."""
    # --force: these tests are about linksvc's own workers, so they do not wait out the
    # JWKS cache lifetime that protects outside verifiers (tests/links/test_keys.py covers that).
    out = flask_cli(env, "keys", "rotate", "--force", *args).stdout
    return out.split("active ", 1)[1].split(";", 1)[0].strip()


def _verify_outside(
    jwks_url: str, token: str, issuer: str, audience: str
) -> subprocess.CompletedProcess[str]:
    # Run as the manual (docs/keys.md) shows it, as a command (it is executable), with this venv's python3.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        [
            str(SCRIPT),
            jwks_url,
            "--issuer",
            issuer,
            "--audience",
            audience,
            "--purpose",
            "magic_link",
        ],
        input=token,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PATH": path},
    )


def _instance(
    tmp_path: Path, database_url: str | None = None
) -> tuple[dict[str, str], dict[str, str], int]:
    port = free_port()
    env = base_env(
        tmp_path / "instance",
        database_url,
        LINKSVC_KEY_REFRESH_SECONDS=str(REFRESH),
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
    )
    return env, prepare_instance(env), port


def test_outside_verifier_with_only_the_jwks_url_accepts_every_algorithm(tmp_path):
    env, client, port = _instance(tmp_path)
    server = start_gunicorn(env, workers=2, port=port, log_path=tmp_path / "gunicorn.log")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {client['api_key']}"
    jwks_url = f"{server.url}/.well-known/jwks.json"

    def mint() -> dict:
        resp = api.post(
            server.url + "/api/v1/links",
            json={"purpose": "magic_link", "subject": "user-42"},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    try:
        minted: dict[str, dict] = {}
        for alg in ("ES256", "EdDSA", "RS256"):
            if alg != "ES256":  # init-db made an ES256 key
                flask_cli(env, "keys", "generate", "--alg", alg)
                kid = _rotate(env)
                deadline = time.monotonic() + PICKUP_BOUND
                while _header(link := mint()["token"])["kid"] != kid:
                    assert time.monotonic() < deadline, (
                        f"workers still sign with an old key after {PICKUP_BOUND} s"
                    )
            minted[alg] = link = mint()
            assert _header(link["token"])["alg"] == alg

            done = _verify_outside(jwks_url, link["url"], server.url, client["client_id"])
            assert done.returncode == 0, done.stderr
            claims = json.loads(done.stdout)
            assert (
                claims["jti"] == link["jti"]
                and claims["aud"] == client["client_id"]
                and claims["pur"] == "magic_link"
            )
            assert link["token"] not in done.stdout + done.stderr

        # Links signed by the retired keys still verify outside (their keys stay published).
        for alg, link in minted.items():
            assert (
                _verify_outside(jwks_url, link["token"], server.url, client["client_id"]).returncode
                == 0
            ), alg

        # The outside verifier refuses what it must: another audience, a changed claim.
        es = minted["ES256"]["token"]
        assert _verify_outside(jwks_url, es, server.url, "cl_someone_else").returncode == 1
        h, c, s = es.split(".")
        body = json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)))
        body["sub"] = "admin"
        tampered = (
            f"{h}.{base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip('=')}.{s}"
        )
        assert _verify_outside(jwks_url, tampered, server.url, client["client_id"]).returncode == 1

        # Emergency revocation of the (retired) EdDSA key: it leaves the JWKS within the
        # refresh bound, outside verifiers refuse its links, and linksvc says unknown_key.
        ed_kid = _header(minted["EdDSA"]["token"])["kid"]
        flask_cli(env, "keys", "revoke", ed_kid, "--yes")
        deadline = time.monotonic() + PICKUP_BOUND
        while any(k["kid"] == ed_kid for k in requests.get(jwks_url, timeout=10).json()["keys"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        refused = _verify_outside(
            jwks_url, minted["EdDSA"]["token"], server.url, client["client_id"]
        )
        assert refused.returncode == 1 and "rejected" in refused.stderr
        time.sleep(REFRESH + 0.2)  # every worker, not only the one that served the JWKS
        for _ in range(4):
            resp = api.post(
                server.url + "/api/v1/links/redeem",
                json={"token": minted["EdDSA"]["token"], "purpose": "magic_link"},
                timeout=30,
            )
            assert resp.status_code == 401 and resp.json()["code"] == "unknown_key"
        for alg in ("ES256", "RS256"):
            resp = api.post(
                server.url + "/api/v1/links/redeem",
                json={"token": minted[alg]["token"], "purpose": "magic_link"},
                timeout=30,
            )
            assert resp.status_code == 200, (alg, resp.text)
    finally:
        server.stop()


# -- rotation under load -------------------------------------------------------------------


@dataclass
class Minted:
    start: float
    end: float
    kid: str
    pid: int
    token: str
    jti: str


class Load:
    """Threads that mint links and redeem each a few requests later, recording everything."""

    def __init__(self, url: str, api_key: str, threads: int = 4, lag: int = 6) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.lag = lag
        self.minted: list[Minted] = []
        self.redeemed: list[Minted] = []
        self.failures: list[tuple[str, int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def mint(self, subject: str) -> Minted | None:
        start = time.monotonic()
        resp = requests.post(
            self.url + "/api/v1/links",
            json={"purpose": "magic_link", "subject": subject},
            headers=self.headers,
            timeout=60,
        )
        if resp.status_code != 201:
            with self._lock:
                self.failures.append(("mint", resp.status_code, resp.text[:300]))
            return None
        body = resp.json()
        m = Minted(
            start,
            time.monotonic(),
            _header(body["token"])["kid"],
            int(resp.headers["X-Worker-Pid"]),
            body["token"],
            body["jti"],
        )
        with self._lock:
            self.minted.append(m)
        return m

    def redeem(self, m: Minted) -> bool:
        resp = requests.post(
            self.url + "/api/v1/links/redeem",
            json={"token": m.token, "purpose": "magic_link"},
            headers=self.headers,
            timeout=60,
        )
        with self._lock:
            if resp.status_code == 200 and resp.json()["jti"] == m.jti:
                self.redeemed.append(m)
                return True
            self.failures.append((f"redeem {m.kid}", resp.status_code, resp.text[:300]))
            return False

    def _run(self, i: int) -> None:
        pending: collections.deque[Minted] = collections.deque()
        n = 0
        while not self._stop.is_set():
            n += 1
            m = self.mint(f"load-{i}-{n}")
            if m is not None:
                pending.append(m)
            if len(pending) > self.lag:
                self.redeem(pending.popleft())
        while pending:
            self.redeem(pending.popleft())

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def pids_since(self, t: float, kid: str) -> dict[int, float]:
        """For each worker, when it first answered a mint (started after ``t``) with ``kid``."""
        first: dict[int, float] = {}
        with self._lock:
            for m in self.minted:
                if m.start >= t and m.kid == kid:
                    first[m.pid] = min(first.get(m.pid, m.end), m.end)
        return first


def _children(pid: int) -> set[int]:
    found = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(p.name))
    return found


def _wait(predicate, what: str, bound: float) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {bound} s"
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    if request.param == "sqlite":
        yield None
    else:
        with pg_database() as url:
            yield url


def test_two_rotations_under_load_fail_no_redemption(tmp_path, database_url):
    env, client, port = _instance(tmp_path, database_url)
    server = start_gunicorn(
        env,
        workers=3,
        port=port,
        log_path=tmp_path / "gunicorn.log",
        wsgi="tests.support.rotation_wsgi:app",
    )
    load = Load(server.url, client["api_key"])
    settings = config.load(env)
    engine = db.make_engine(settings.database_url)
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == 3
        before = [load.mint(f"before-{i}") for i in range(20)]
        assert None not in before, load.failures
        k0 = before[0].kid
        load.start()
        _wait(lambda: set(load.pids_since(0, k0)) == workers, "traffic reaching every worker", 30)

        kids, pickup, between = [k0], [], []
        for r in range(2):
            time.sleep(1.0)
            # In-process, so that ``rotated`` is the commit itself (the CLI's own start-up
            # takes seconds on a loaded machine; the CLI is exercised in the test above).
            with db.write(engine) as conn:
                _, kid, _ = keys.rotate(
                    conn, settings.key_encryption_key, int(time.time()), min_age=0
                )
            rotated = time.monotonic()
            assert kid not in kids
            _wait(
                lambda: set(load.pids_since(rotated, kid)) >= workers,
                f"every worker signing with {kid}",
                PICKUP_BOUND,
            )
            pickup.append(max(load.pids_since(rotated, kid).values()) - rotated)
            # No worker signs with an older key once one refresh has passed since the rotation.
            late = [
                m for m in list(load.minted) if m.start >= rotated + REFRESH + 0.5 and m.kid != kid
            ]
            assert not late, f"{len(late)} links signed with an old key after the refresh bound"
            kids.append(kid)
            if r == 0:
                between = [load.mint(f"between-{i}") for i in range(20)]
        after = [load.mint(f"after-{i}") for i in range(20)]
        time.sleep(1.0)
        load.stop()

        assert {m.kid for m in before} == {kids[0]} and {m.kid for m in between} == {kids[1]}
        assert {m.kid for m in after} == {kids[2]}
        # The links minted before and between are redeemed only now, after both rotations.
        for m in before + between + after:
            load.redeem(m)
        assert load.failures == [], load.failures[:5]
        redeemed_by_kid = collections.Counter(m.kid for m in load.redeemed)
        assert all(redeemed_by_kid[k] >= 20 for k in kids), redeemed_by_kid
        assert len(load.redeemed) == len(load.minted)
        print(
            f"\n[{(database_url and 'postgresql') or 'sqlite'}] {len(load.minted)} links minted and redeemed "
            f"across 2 rotations, 0 failures; every worker signing with the new key "
            f"{', '.join(f'{p:.2f}' for p in pickup)} s after each rotation's commit (bound {PICKUP_BOUND} s, "
            f"refresh {REFRESH} s); by kid {dict(redeemed_by_kid)}"
        )
    finally:
        load.stop()
        server.stop()
        engine.dispose()
