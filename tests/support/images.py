"""What the image tests (tests/system/test_image.py) and the reference deployment's test
(tests/system/test_compose.py) share: podman as this machine allows it, the base image built from
Debian's packages, the image itself, and the redemption load that kills a node behind HAProxy.

How podman runs here (runc, explicit ulimits, host networking) is this module's own
containers.conf, never the image's or the compose file's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from .env import ROOT, missing

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/linksvc:test"
UID = 10001
# Podman as this sandbox allows it; an operator's podman or docker needs none of it.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]
netns = "host"
[engine]
runtime = "runc"
"""


def _podman_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120):
    return subprocess.run(
        ["podman", *args], env=env, text=True, capture_output=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="module")
def penv(tmp_path_factory) -> dict[str, str]:
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            missing(tool, f"apt-get install {tool}")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = _podman_env(conf)
    probe = podman(env, "info", check=False)
    if probe.returncode != 0:
        missing("podman", probe.stderr.strip().splitlines()[-1] if probe.stderr else "no info")
    return env


def ensure_base(env: dict[str, str], work: Path) -> None:
    """The FROM image, from Debian's packages, once per machine (podman's store keeps it)."""
    if podman(env, "image", "exists", BASE, check=False).returncode == 0:
        return
    tar = work / "bookworm.tar"
    # The documentation, man pages and translations of the base's packages stay out.
    excludes = [
        f"--dpkgopt=path-exclude={p}"
        for p in (
            "/usr/share/doc/*",
            "/usr/share/man/*",
            "/usr/share/locale/*",
            "/usr/share/info/*",
        )
    ]
    run = subprocess.run(
        ["mmdebstrap", "--variant=minbase", *excludes, "bookworm", str(tar)],
        text=True,
        capture_output=True,
        timeout=900,
    )
    if run.returncode != 0:
        missing("a bookworm base image", f"mmdebstrap failed: {run.stderr.strip()[-300:]}")
    podman(env, "import", "--change", 'CMD ["bash"]', str(tar), BASE, timeout=300)
    tar.unlink()


@pytest.fixture(scope="module")
def image(penv, tmp_path_factory) -> str:
    ensure_base(penv, tmp_path_factory.mktemp("base"))
    build = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "image",
            f"IMAGE={IMAGE}",
            "IMAGE_BUILD_OPTS=--pull=never --isolation chroot --network host",
        ],
        cwd=ROOT,
        env=penv,
        text=True,
        capture_output=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


class Container:
    def __init__(self, env: dict[str, str], name: str, port: int) -> None:
        self.env, self.name, self.url = env, name, f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        out = podman(self.env, "logs", self.name, check=False)
        return out.stdout + out.stderr

    def wait_ready(self, path: str = "/healthz", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + path, timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or workers still booting
                pass
            state = podman(self.env, "inspect", "-f", "{{.State.Running}}", self.name, check=False)
            if state.stdout.strip() == "false":
                break
            time.sleep(0.3)
        pytest.fail(f"container {self.name} not ready:\n{self.logs()[-3000:]}")


def create_client(one_off, database_url: str, volume: Path | None) -> dict:
    out = one_off(
        database_url,
        volume,
        "flask",
        "clients",
        "create",
        "acme",
        "--redirect-uri",
        "https://app.example/cb",
        "--mint-limit",
        "100000 per minute",
        "--subject-limit",
        "100000 per minute",
        "--json",
    )
    return json.loads(out.strip().splitlines()[-1])


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def build_config_image(env: dict[str, str], context: str, tag: str) -> str:
    """deploy/haproxy or deploy/prometheus, from Debian's packages on the local base."""
    build = subprocess.run(
        ["podman", "build", "--format", "docker", "--pull=never", "--isolation", "chroot",
         "--network", "host", "-t", tag, str(ROOT / context)],
        env=env, text=True, capture_output=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return tag


def mint_many(lb: str, headers: dict[str, str], n: int) -> list[dict]:
    minted = []
    for i in range(n):
        r = requests.post(
            f"{lb}/api/v1/links",
            json={"purpose": "magic_link", "subject": f"s{i % 20}",
                  "redirect_uri": "https://app.example/cb"},
            headers=headers,
            timeout=30,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        minted.append(r.json())
    return minted


@dataclass
class KillOutcome:
    attempts: int
    threads: int
    killed_at: float | None = None
    results: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def errors(self) -> list[tuple[int, float]]:
        """(status, seconds after the kill) of every answer neither 200 nor 409."""
        assert self.killed_at is not None
        return [(s, at - self.killed_at) for _, s, at in self.results if s not in (200, 409)]


def redeem_twice_killing(
    lb: str, headers: dict[str, str], minted: list[dict], kill: Callable[[], None], threads: int = 4
) -> KillOutcome:
    """Each link redeemed twice through HAProxy by different threads; `kill` runs a third of
    the way through."""
    attempts = [m["token"] for m in minted] * 2
    random.Random(7).shuffle(attempts)
    out = KillOutcome(attempts=len(attempts), threads=threads)
    lock = threading.Lock()
    queue = iter(attempts)

    def worker() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    token = next(queue, None)
                    done = len(out.results)
                    kill_now = done == len(attempts) // 3 and out.killed_at is None
                    if kill_now:
                        out.killed_at = time.monotonic()
                if token is None:
                    return
                if kill_now:
                    kill()
                try:
                    r = s.post(
                        f"{lb}/api/v1/links/redeem",
                        json={"token": token, "purpose": "magic_link"},
                        headers=headers,
                        timeout=30,
                    )
                    status = r.status_code
                except requests.RequestException:  # closed unanswered, or cut mid-answer
                    status = 0
                with lock:
                    out.results.append((token, status, time.monotonic()))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    return out


def assert_kill_outcome(out: KillOutcome, minted: list[dict], pg_url: str) -> None:
    import psycopg

    assert out.killed_at is not None, "the node was never killed"
    assert len(out.results) == out.attempts
    by_token: dict[str, list[int]] = {}
    for token, status, _ in out.results:
        by_token.setdefault(token, []).append(status)
    twice = [t for t, codes in by_token.items() if codes.count(200) > 1]
    assert not twice, f"{len(twice)} links answered 200 twice"
    errors = out.errors
    # Errors only while HAProxy notices: the redemptions the node held when it died (POST is
    # never resent), answered 502 or, on a kept-alive connection, closed unanswered the way
    # the node closed it (0 here) within a moment of the kill; none afterwards.
    print(f"errors after the kill (status, seconds after): {len(errors)} {errors}")
    assert all(status in (0, 502, 503, 504) for status, _ in errors), errors
    # At most one per client thread (what was in flight at the kill), all at once: a request
    # that found the node gone went to the other (retry on conn-failure, redispatch) instead
    # of failing until the health check took it out (without them: 503s two seconds later).
    assert len(errors) <= out.threads and all(0 <= after < 1.5 for _, after in errors), errors
    jtis = {m["token"]: m["jti"] for m in minted}
    won = {jtis[t] for t, codes in by_token.items() if 200 in codes}
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        consumed = {
            r[0] for r in conn.execute("SELECT jti FROM links WHERE state = 'consumed'").fetchall()
        }
    assert won <= consumed  # every 200 is durable
    assert len(won) >= len(minted) - len(errors)


def prometheus_sees_both(prom: str) -> bool:
    r = requests.get(prom + "/api/v1/query", params={"query": "up"}, timeout=5).json()
    return sorted(x["value"][1] for x in r["data"]["result"]) == ["1", "1"]
