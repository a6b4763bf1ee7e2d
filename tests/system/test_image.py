"""The container image (Containerfile, deploy/entrypoint.sh), built and run for real.

On this machine there is no image registry: the base the Containerfile starts FROM is built
from Debian's packages (mmdebstrap --variant=minbase bookworm, then podman import) and kept
in podman's store between runs, so only the first run pays for it; podman's layer cache keeps
the dependency stage while requirements.txt is unchanged. How podman runs here (runc, explicit
ulimits, host networking) is tests/support/images.py's own containers.conf, not the image's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.databases import pg_database
from tests.support.env import ROOT, free_port, missing, secret_b64
from tests.support.images import (
    Container,
    assert_kill_outcome,
    create_client,
    image,
    mint_many,
    penv,
    podman,
    prometheus_sees_both,
    redeem_twice_killing,
    start_process,
    wait_for,
)

__all__ = ["image", "penv"]  # fixtures shared with tests/system/test_compose.py

pytestmark = pytest.mark.slow

UID = 10001
GRACE = 30  # podman stop -t; gunicorn's graceful_timeout is 20 s


def run_args(settings: dict[str, str], volume: Path | None, secrets_dir: Path) -> list[str]:
    args = ["--read-only", "--user", str(UID), "-v", f"{secrets_dir}:/run/secrets:ro"]
    if volume is not None:
        args += ["-v", f"{volume}:/var/lib/linksvc"]
    for key, value in settings.items():
        args += ["-e", f"{key}={value}"]
    return args


@pytest.fixture
def deployment(penv, image, tmp_path):
    """Start containers of the image; every one is removed afterwards."""
    names: list[str] = []
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "kek").write_text(secret_b64() + "\n")
    (secrets_dir / "secret").write_text(secret_b64() + "\n")
    for f in secrets_dir.iterdir():
        f.chmod(0o644)  # the container's user is not this file's owner

    def settings(database_url: str, port: int) -> dict[str, str]:
        return {
            "LINKSVC_ENV": "production",
            "LINKSVC_BASE_URL": f"http://127.0.0.1:{port}",
            "LINKSVC_DATABASE_URL": database_url,
            "LINKSVC_KEY_ENCRYPTION_KEY_FILE": "/run/secrets/kek",
            "LINKSVC_SECRET_KEY_FILE": "/run/secrets/secret",
            "LINKSVC_BIND": f"127.0.0.1:{port}",
            "LINKSVC_WORKERS": "2",
        }

    def one_off(database_url: str, volume: Path | None, *command: str, check: bool = True) -> str:
        out = podman(
            penv,
            "run",
            "--rm",
            *run_args(settings(database_url, 1), volume, secrets_dir),
            image,
            *command,
            check=False,
        )
        assert out.returncode == 0 or not check, out.stdout + out.stderr
        return out.stdout

    def serve(database_url: str, volume: Path | None, **extra: str) -> Container:
        port = free_port()
        name = f"linksvc-test-{os.getpid()}-{port}"
        podman(
            penv,
            "run",
            "-d",
            "--name",
            name,
            *run_args({**settings(database_url, port), **extra}, volume, secrets_dir),
            image,
        )
        names.append(name)
        return Container(penv, name, port)

    yield one_off, serve
    for name in names:
        podman(penv, "rm", "-f", "-v", "-t", "0", name, check=False)  # and its volume


def _mint_and_redeem(url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    minted = requests.post(
        f"{url}/api/v1/links",
        json={"purpose": "magic_link", "subject": "u1", "redirect_uri": "https://app.example/cb"},
        headers=headers,
        timeout=10,
    )
    assert minted.status_code == 201, minted.text
    body = {"token": minted.json()["token"], "purpose": "magic_link"}
    first = requests.post(f"{url}/api/v1/links/redeem", json=body, headers=headers, timeout=10)
    assert first.status_code == 200 and first.json()["subject"] == "u1", first.text
    again = requests.post(f"{url}/api/v1/links/redeem", json=body, headers=headers, timeout=10)
    assert again.status_code == 409 and again.json()["code"] == "used"


def test_image_metadata(penv, image):
    info = json.loads(podman(penv, "image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    # podman shows it beside Config; it is there only with `--format docker`.
    assert info["Healthcheck"]["Test"] == ["CMD", "/app/entrypoint.sh", "healthcheck"]
    assert config.get("StopSignal") == "SIGTERM"
    labels = config["Labels"]
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.version"] == __import__("linksvc").__version__
    assert "org.opencontainers.image.source" in labels
    # Nothing of the build's CA bundle or of pip stays in the image.
    listing = podman(
        penv, "run", "--rm", "--entrypoint", "sh", image, "-c",
        "ls /run/secrets 2>/dev/null; ls /opt/venv/bin; python3 --version",
    ).stdout  # fmt: skip
    assert "cacert" not in listing and "pip" not in listing.split()
    assert "Python 3.11" in listing


def test_sqlite_read_only_non_root(deployment, tmp_path, penv):
    one_off, serve = deployment
    volume = tmp_path / "data"
    volume.mkdir()
    os.chown(volume, UID, UID)
    url = "sqlite:////var/lib/linksvc/linksvc.db"
    one_off(url, volume, "migrate")
    client = create_client(one_off, url, volume)
    node = serve(url, volume)
    node.wait_ready("/readyz")
    _mint_and_redeem(node.url, client["api_key"])
    who = podman(penv, "exec", node.name, "sh", "-c", "id -u; touch /app/x 2>&1; echo")
    assert who.stdout.splitlines()[0] == str(UID)
    assert "Read-only file system" in who.stdout
    # The declared health probe passes on a running node.
    assert podman(penv, "healthcheck", "run", node.name, check=False).returncode == 0
    assert {p.name for p in volume.iterdir()} >= {"linksvc.db"}


def _tables(database_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database("linksvc_img") as url:
        yield url


def test_postgresql_only_migrate_changes_the_schema(deployment, pg_url):
    one_off, serve = deployment
    # Serving never migrates: on an empty database a node refuses to start (status 4, one line
    # saying why) and leaves the schema alone; so do the command line's read-only commands.
    node = serve(pg_url, None)
    waited = podman(node.env, "wait", node.name, timeout=60)
    assert waited.stdout.strip() == "4", node.logs()[-2000:]
    assert "cannot start" in node.logs() and "Traceback" not in node.logs()
    assert _tables(pg_url) == set()
    one_off(pg_url, None, "flask", "keys", "list", check=False)
    assert _tables(pg_url) == set()
    one_off(pg_url, None, "migrate")
    assert "alembic_version" in _tables(pg_url) and "links" in _tables(pg_url)


def test_postgresql_serves_read_only_and_stops_gracefully(deployment, pg_url, penv):
    one_off, serve = deployment
    one_off(pg_url, None, "migrate")
    client = create_client(one_off, pg_url, None)
    node = serve(pg_url, None)  # no volume at all: nothing is written inside the container
    node.wait_ready("/readyz")
    _mint_and_redeem(node.url, client["api_key"])

    # SIGTERM under load: every request the node accepted is answered in full; after it
    # stops listening, new connections are refused (never reset half-way, never a 5xx).
    headers = {"Authorization": f"Bearer {client['api_key']}"}
    answered: list[int] = []
    refused: list[str] = []
    broken: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.post(
                        f"{node.url}/api/v1/links",
                        json={"purpose": "magic_link", "subject": "u2",
                              "redirect_uri": "https://app.example/cb"},
                        headers=headers,
                        timeout=30,
                    )  # fmt: skip
                    answered.append(r.status_code)
                except requests.ConnectionError as exc:
                    text = str(exc)
                    if "Connection refused" in text:
                        refused.append(text)
                        time.sleep(0.05)
                    else:
                        broken.append(text)
                    if len(refused) > 20:
                        return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = len(answered)
    started = time.monotonic()
    podman(penv, "kill", "--signal", "TERM", node.name)
    waited = podman(penv, "wait", node.name, timeout=GRACE + 10)
    took = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert before >= 40, node.logs()[-2000:]
    assert took < GRACE, f"took {took:.1f}s to stop"
    assert waited.stdout.strip() == "0", node.logs()[-2000:]
    assert set(answered) == {201}, answered
    # A keep-alive connection closed by the stopping node is the one outcome that is not
    # "refused": its request was never read (requests does not retry a POST), so nothing lost.
    # Nothing minted without an answer: the ledger holds exactly the answered mints (+1 above).
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        (count,) = conn.execute("SELECT count(*) FROM links WHERE subject = 'u2'").fetchone()
    assert count == len(answered), (count, len(answered), broken[:3])


# -- the reference deployment's balancer and Prometheus, with the shipped configuration ------
# deploy/compose.yaml's HAProxy and Prometheus configuration, run by Debian's haproxy and
# prometheus on this machine in front of two containers of the image (host networking: the
# configuration's node addresses are rewritten to their loopback ports, nothing else).


@pytest.fixture
def balanced(deployment, pg_url, tmp_path, penv):
    from tests.support.databases import REDIS_URL

    for tool in ("haproxy", "prometheus"):
        if shutil.which(tool) is None:
            missing(tool, f"apt-get install {tool}")
    one_off, serve = deployment
    one_off(pg_url, None, "migrate")
    client = create_client(one_off, pg_url, None)
    lb_port, prom_port = free_port(), free_port()
    lb = f"http://127.0.0.1:{lb_port}"
    extra = {
        "LINKSVC_BASE_URL": lb,
        "LINKSVC_TRUSTED_PROXIES": "1",
        "LINKSVC_RATELIMIT_STORAGE_URL": REDIS_URL,
    }
    nodes = [serve(pg_url, None, **extra) for _ in range(2)]
    for node in nodes:
        node.wait_ready("/readyz")
    cfg = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    cfg = cfg.replace("bind :8080", f"bind 127.0.0.1:{lb_port}")
    for i, node in enumerate(nodes, 1):
        cfg = cfg.replace(f"server node{i} node{i}:8000", f"server node{i} {node.url[7:]}")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    prom = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    prom = prom.replace('["node1:8000", "node2:8000"]', str([n.url[7:] for n in nodes]))
    prom = prom.replace("scrape_interval: 5s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(prom)
    procs = [
        start_process(
            ["haproxy", "-W", "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "haproxy.log"
        ),
        start_process(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
        ),
    ]
    try:
        yield lb, f"http://127.0.0.1:{prom_port}", nodes, client, tmp_path
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_balancer_node_killed_under_redemption_load(balanced, pg_url, penv):
    lb, prom, nodes, client, _logs = balanced
    headers = {"Authorization": f"Bearer {client['api_key']}"}
    wait_for(lambda: requests.get(lb + "/readyz", timeout=5).status_code == 200, "HAProxy")

    # Prometheus scrapes both nodes (each directly, as the shipped configuration says).
    wait_for(lambda: prometheus_sees_both(prom), "Prometheus to scrape both nodes")

    # Links minted through HAProxy (a client's own X-Forwarded-For is kept before HAProxy's
    # entry, which is the one the nodes trust with LINKSVC_TRUSTED_PROXIES=1).
    minted = mint_many(lb, {**headers, "X-Forwarded-For": "203.0.113.7"}, 240)
    # Each link is redeemed twice, by different threads; node1 is killed a third of the way.
    out = redeem_twice_killing(
        lb, headers, minted, lambda: podman(penv, "kill", "--signal", "KILL", nodes[0].name)
    )
    assert_kill_outcome(out, minted, pg_url)
