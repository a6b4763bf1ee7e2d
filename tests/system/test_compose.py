"""The reference deployment itself, brought up by podman-compose from deploy/compose.yaml.

Run for real, from the shipped files: the image (tests/support/images.py builds it), HAProxy and
Prometheus from deploy/haproxy and deploy/prometheus (Debian's packages on the local base
image), two nodes, the relay and the migration job, all started by podman-compose with the
compose file's own settings (read-only, uid 10001, secrets as files, TRUSTED_PROXIES=1).

Substituted, in the test's override tests/compose/host.yaml (podman here has no registry and
only host networking; those podman settings are tests/support/images.py's containers.conf):
PostgreSQL and Redis are the host's servers (the compose file's `db` and `redis` services use
upstream images that cannot be pulled here, so they are not started), each service listens on
its own loopback port instead of its own network namespace, and HAProxy's and Prometheus's
configuration has only those addresses rewritten. Mail goes to an SMTP sink (aiosmtpd).
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from aiosmtpd.controller import Controller

from tests.support.databases import REDIS_URL, pg_database
from tests.support.env import ROOT, free_port, missing, secret_b64
from tests.support.images import (
    IMAGE,
    assert_kill_outcome,
    build_config_image,
    image,
    mint_many,
    penv,
    podman,
    prometheus_sees_both,
    redeem_twice_killing,
    wait_for,
)

__all__ = ["image", "penv"]  # fixtures

pytestmark = pytest.mark.slow

OVERRIDE = ROOT / "tests/compose/host.yaml"
PODMAN = ROOT / "tests/compose/podman-host"  # podman, less podman-compose 1.0.3's --net
REDIRECT = "https://app.example/cb"
# The address the test's client connects to HAProxy from: loopback, but not HAProxy's own
# 127.0.0.1, so the nodes seeing it proves HAProxy passed the client's address on.
CLIENT_ADDR = "127.0.0.2"


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 Message accepted"


@dataclass
class Deployment:
    env: dict[str, str]
    project: str
    lb: str
    prom: str
    pg_url: str
    api_key: str
    mailbox: Mailbox

    def compose(self, *args: str, check: bool = True, timeout: float = 300):
        return compose(self.env, self.project, *args, check=check, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def logs(self, service: str) -> str:
        out = podman(self.env, "logs", self.container(service), check=False)
        return out.stdout + out.stderr


def compose(env: dict[str, str], project: str, *args: str, check: bool = True, timeout=300):
    cmd = ["podman-compose", "--podman-path", str(PODMAN), "-p", project]
    cmd += ["-f", str(ROOT / "deploy/compose.yaml")]
    run = subprocess.run(
        [*cmd, "-f", str(OVERRIDE), *args],
        env=env,
        cwd=ROOT / "deploy",
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def deployment(penv, image, tmp_path_factory) -> Iterator[Deployment]:
    if shutil.which("podman-compose") is None:
        missing("podman-compose", "apt-get install podman-compose")
    build_config_image(penv, "deploy/haproxy", "localhost/linksvc-haproxy:test")
    build_config_image(penv, "deploy/prometheus", "localhost/linksvc-prometheus:test")
    work = tmp_path_factory.mktemp("compose")
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    ports = {k: free_port() for k in ("node1", "node2", "lb", "prom")}
    lb = f"http://127.0.0.1:{ports['lb']}"
    cfg = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    cfg = cfg.replace("bind :8080", f"bind 127.0.0.1:{ports['lb']}")
    for node in ("node1", "node2"):
        cfg = cfg.replace(f"{node}:8000", f"127.0.0.1:{ports[node]}")
    (work / "haproxy.cfg").write_text(cfg)
    prom = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for node in ("node1", "node2"):
        prom = prom.replace(f"{node}:8000", f"127.0.0.1:{ports[node]}")
    prom = prom.replace("scrape_interval: 5s", "scrape_interval: 1s")
    (work / "prometheus.yml").write_text(prom)
    for f in ("haproxy.cfg", "prometheus.yml"):
        (work / f).chmod(0o644)
    project = f"linksvct{os.getpid()}"
    with pg_database("linksvc_compose") as pg_url:
        secrets = work / "secrets"
        secrets.mkdir()
        (secrets / "database_url").write_text(pg_url + "\n")
        (secrets / "kek").write_text(secret_b64() + "\n")
        (secrets / "secret_key").write_text(secret_b64() + "\n")
        (secrets / "db_password").write_text("unused: the host's PostgreSQL\n")
        for f in secrets.iterdir():
            f.chmod(0o644)  # the containers' user is not these files' owner
        env = {
            **penv,
            "LINKSVC_IMAGE": IMAGE,
            "LINKSVC_BASE_URL": lb,
            "LINKSVC_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}",
            "TEST_DIR": str(work),
            "TEST_REDIS_URL": REDIS_URL,
            "TEST_NODE1_PORT": str(ports["node1"]),
            "TEST_NODE2_PORT": str(ports["node2"]),
            "TEST_PROM_PORT": str(ports["prom"]),
        }
        try:
            # podman-compose 1.0 starts services in order but ignores depends_on conditions:
            # the migration job runs to completion first, as docs/deploy.md says.
            compose(env, project, "run", "--rm", "--no-deps", "migrate")
            # (podman-compose 1.0.3's run does not pass the container's exit status on.)
            assert {"alembic_version", "links"} <= _tables(pg_url), "migrate did not run"
            made = compose(
                env, project, "run", "--rm", "--no-deps", "migrate",
                "flask", "clients", "create", "acme", "--redirect-uri", REDIRECT,
                "--mint-limit", "100000 per minute", "--subject-limit", "100000 per minute",
                "--json",
            )  # fmt: skip
            lines = [x for x in made.stdout.splitlines() if x.startswith("{")]
            assert lines, made.stdout[-3000:] + made.stderr[-3000:]
            line = lines[-1]
            api_key = json.loads(line)["api_key"]
            compose(env, project, "up", "-d", "--no-deps", "node1", "node2", "relay")
            compose(env, project, "up", "-d", "--no-deps", "haproxy", "prometheus")
            dep = Deployment(
                env, project, lb, f"http://127.0.0.1:{ports['prom']}", pg_url, api_key, box
            )
            yield dep
        finally:
            # The image declares /var/lib/linksvc a volume: podman-compose 1.0.3's down leaves
            # those anonymous volumes behind, so the containers go first, with their volumes.
            label = f"label=io.podman.compose.project={project}"
            ids = podman(env, "ps", "-aq", "--filter", label, check=False).stdout.split()
            if ids:
                podman(env, "rm", "-f", "-v", "-t", "5", *ids, check=False, timeout=120)
            compose(env, project, "down", "-v", "-t", "5", check=False, timeout=120)
            podman(env, "network", "rm", "-f", f"{project}_default", check=False)
            smtp.stop()


def _tables(database_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def _ready(dep: Deployment) -> None:
    def up() -> bool:
        return requests.get(dep.lb + "/readyz", timeout=5).status_code == 200

    try:
        wait_for(up, "HAProxy in front of the nodes", timeout=90)
    except pytest.fail.Exception:
        raise AssertionError(
            "\n".join(dep.logs(s)[-1500:] for s in ("node1", "node2", "haproxy"))
        ) from None


def test_all_services_run(deployment):
    dep = deployment
    _ready(dep)
    for service in ("node1", "node2", "relay", "haproxy", "prometheus"):
        state = podman(dep.env, "inspect", "-f", "{{.State.Running}}", dep.container(service))
        assert state.stdout.strip() == "true", dep.logs(service)[-2000:]
    # The nodes run as the compose file says: uid 10001, read-only root.
    who = podman(
        dep.env, "exec", dep.container("node1"), "sh", "-c", "id -u; touch /app/x 2>&1; true"
    )
    assert who.stdout.splitlines()[0] == "10001" and "Read-only file system" in who.stdout
    # /metrics is not served through HAProxy; Prometheus scrapes both nodes directly.
    assert requests.get(dep.lb + "/metrics", timeout=5).status_code == 404
    wait_for(lambda: prometheus_sees_both(dep.prom), "Prometheus to scrape both nodes")


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf"', html)
    assert m, "the page has a csrf field"
    return m.group(1) or m.group(2)


def test_sign_in_walked_through_haproxy(deployment):
    dep = deployment
    _ready(dep)
    api = {"Authorization": f"Bearer {dep.api_key}"}
    started = requests.post(
        f"{dep.lb}/api/v1/sign-ins",
        json={"subject": "user-42", "email": "someone@example.com", "ip": "203.0.113.9",
              "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"},
        headers=api,
        timeout=10,
    )  # fmt: skip
    assert started.status_code == 201, started.text
    body = started.json()
    laptop = requests.Session()
    # The waiting page binds this browser to the sign-in.
    wait = laptop.get(f"{dep.lb}/s/{body['id']}", timeout=10)
    assert wait.status_code == 200, wait.text[:300]
    # The mail goes out from a node (or the relay) to the sink; its link points at HAProxy.
    wait_for(
        lambda: any(m["X-Linksvc-Jti"] == body["jti"] for m in dep.mailbox.messages), "the mail"
    )
    mail = next(m for m in dep.mailbox.messages if m["X-Linksvc-Jti"] == body["jti"])
    text = mail.get_body(("plain",)).get_content()
    link = re.search(r"https?://\S+/l/\S+", text).group(0)
    assert link.startswith(dep.lb + "/l/"), link
    page = laptop.get(link, timeout=10)
    assert page.status_code == 200, page.text[:300]
    done = laptop.post(
        link,
        data={"csrf": _csrf(page.text)},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
        timeout=10,
    )
    assert done.status_code == 303, done.text[:300]
    location = done.headers["Location"]
    assert location.startswith(REDIRECT + "?code="), location
    code = location.split("code=", 1)[1]
    exchanged = requests.post(
        f"{dep.lb}/api/v1/codes/exchange", json={"code": code}, headers=api, timeout=10
    )
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["subject"] == "user-42"
    again = requests.post(
        f"{dep.lb}/api/v1/codes/exchange", json={"code": code}, headers=api, timeout=10
    )
    assert again.status_code != 200, again.text  # a code is exchanged once


def _from(addr: str, lb: str, xff: str | None, api_key: str) -> str:
    """Mint through HAProxy from the local address `addr`; return the request id."""
    host, port = lb.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(addr, 0))
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    body = {"purpose": "magic_link", "subject": "addr", "redirect_uri": REDIRECT}
    try:
        conn.request("POST", "/api/v1/links", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201, resp.status
        rid = resp.getheader("X-Request-Id")
        assert rid
        return rid
    finally:
        conn.close()


def _remote_of(dep: Deployment, request_id: str) -> str:
    found: list[str] = []

    def logged() -> bool:
        for service in ("node1", "node2"):
            for line in dep.logs(service).splitlines():
                if f'"request_id":"{request_id}"' in line and line.startswith("{"):
                    found.append(json.loads(line)["remote"])
                    return True
        return False

    wait_for(logged, f"the access-log line of {request_id}", timeout=15)
    return found[0]


def test_nodes_see_the_client_address_haproxy_passes(deployment):
    dep = deployment
    _ready(dep)
    # The client's own address, as HAProxy saw the connection (option forwardfor), is what a
    # node uses (access log, rate-limit keys, event actors) — not HAProxy's 127.0.0.1 ...
    assert _remote_of(dep, _from(CLIENT_ADDR, dep.lb, None, dep.api_key)) == CLIENT_ADDR
    # ... and a client's own X-Forwarded-For is not believed: HAProxy appends the real address
    # after it, and the nodes trust only the last entry (LINKSVC_TRUSTED_PROXIES=1).
    for xff in ("203.0.113.7", "203.0.113.7, 198.51.100.1"):
        assert _remote_of(dep, _from(CLIENT_ADDR, dep.lb, xff, dep.api_key)) == CLIENT_ADDR


def test_node_killed_under_redemption_load(deployment):
    """Runs last in this module: it leaves node1 killed (podman restarts it by its policy)."""
    dep = deployment
    _ready(dep)
    wait_for(lambda: prometheus_sees_both(dep.prom), "Prometheus to scrape both nodes")
    headers = {"Authorization": f"Bearer {dep.api_key}"}
    minted = mint_many(dep.lb, headers, 240)
    node1 = dep.container("node1")
    out = redeem_twice_killing(
        dep.lb, headers, minted, lambda: podman(dep.env, "kill", "--signal", "KILL", node1)
    )
    assert_kill_outcome(out, minted, dep.pg_url)
    took = time.monotonic() - (out.killed_at or 0)
    print(f"{len(out.results)} redemptions, node1 killed, {took:.1f}s from the kill to the end")
