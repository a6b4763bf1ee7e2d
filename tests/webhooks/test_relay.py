"""The relay for real: gunicorn serving linksvc, `flask webhooks run` as its own process, and
an HTTP receiver that verifies every delivery with the `standardwebhooks` package. Every
event type arrives once, signed, in order per link; both signatures during a rotation; and
the faults — a relay SIGKILLed mid-delivery, a receiver down and back, PostgreSQL stopped and
started under load, two relays on one PostgreSQL — lose nothing and invent nothing."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from linksvc.store import db
from linksvc.webhooks import outbox
from tests.support.env import ROOT, _clean_environ, base_env, flask_cli, venv_bin
from tests.support.pg_cluster import throwaway_cluster
from tests.support.servers import Server, prepare_instance, start_gunicorn
from tests.support.webhook_receiver import Received, Receiver

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) test"}


class Stack:
    """linksvc under gunicorn, a client with an endpoint at ``receiver``, relays on demand."""

    def __init__(self, tmp_path: Path, database_url: str | None = None, **extra: str) -> None:
        instance = tmp_path / "instance"
        instance.mkdir(exist_ok=True)
        self.tmp = tmp_path
        self.env = base_env(instance, database_url, **extra)
        made = prepare_instance(self.env)
        self.client_id, self.api_key = made["client_id"], made["api_key"]
        self.headers = {"Authorization": f"Bearer {self.api_key}"}
        self.receiver = Receiver()
        out = flask_cli(self.env, "webhooks", "add", self.client_id, self.receiver.url, "--json")
        self.endpoint = json.loads(out.stdout)
        self.receiver.secrets = [self.endpoint["secret"]]
        self.server: Server | None = None
        self.relays: list[subprocess.Popen[bytes]] = []

    def serve(self) -> str:
        self.server = start_gunicorn(self.env, log_path=self.tmp / "gunicorn.log")
        return self.server.url

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def relay(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"relay{len(self.relays)}.log", "ab")
        proc = subprocess.Popen(
            [venv_bin("flask"), "--app", "app", "webhooks", "run", "--poll", "0.1", *args],
            cwd=ROOT,
            env={**_clean_environ(), **self.env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.relays.append(proc)
        return proc

    def relay_logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("relay*.log")))

    def mint(self, purpose: str = "magic_link", subject: str = "user-42", **fields: Any) -> dict:
        resp = requests.post(
            f"{self.url}/api/v1/links",
            json={"purpose": purpose, "subject": subject, **fields},
            headers=self.headers,
            timeout=15,
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def close(self) -> None:
        for p in self.relays:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.server is not None:
            self.server.stop()
        self.receiver.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    s.serve()
    yield s
    s.close()


def first_arrivals(received: list[Received]) -> list[Received]:
    seen: set[str] = set()
    out = []
    for r in received:
        if r.msg_id not in seen:
            seen.add(r.msg_id)
            out.append(r)
    return out


def by_link(received: list[Received]) -> dict[str | None, list[str]]:
    seq: dict[str | None, list[str]] = collections.defaultdict(list)
    for r in first_arrivals(received):
        seq[r.jti].append(r.type)
    return seq


def sign_in_through_the_page(stack: Stack, link: dict) -> str:
    browser = requests.Session()
    browser.headers.update(UA)
    url = f"{stack.url}/l/{link['token']}"  # the minted URL names the configured base URL
    page = browser.get(url, timeout=10)
    assert page.status_code == 200, page.text
    csrf = CSRF_RE.search(page.text)
    assert csrf
    done = browser.post(url, data={"csrf": csrf.group(1)}, allow_redirects=False, timeout=10)
    assert done.status_code == 303, done.text
    return done.headers["Location"].split("code=", 1)[1]


def test_every_event_arrives_once_signed_and_in_order(stack: Stack) -> None:
    stack.relay()
    # A sign-in link sent by mail, opened, pressed, its code exchanged, then replayed.
    link = stack.mint(email="alice@example.com")
    code = sign_in_through_the_page(stack, link)
    resp = requests.post(
        f"{stack.url}/api/v1/codes/exchange", json={"code": code}, headers=stack.headers, timeout=10
    )
    assert resp.status_code == 200, resp.text
    replay = requests.post(
        f"{stack.url}/api/v1/links/redeem",
        json={"token": link["token"], "purpose": "magic_link"},
        headers=stack.headers,
        timeout=10,
    )
    assert replay.status_code == 409
    # A reset superseded by a second one, which is then revoked.
    first = stack.mint("password_reset", subject="user-7")
    second = stack.mint("password_reset", subject="user-7")
    assert (
        requests.delete(
            f"{stack.url}/api/v1/links/{second['jti']}", headers=stack.headers, timeout=10
        ).status_code
        == 200
    )
    # A link left unused: the relay's sweep reports it once it can no longer change. Time
    # as a parameter: its lifetime (and the sweep's mark) are moved back in the ledger.
    unused = stack.mint(ttl=10)
    engine = db.make_engine(stack.env["LINKSVC_DATABASE_URL"])
    try:
        with db.write(engine) as conn:
            conn.execute(
                sa.update(db.webhook_clients).values(
                    swept_until=db.webhook_clients.c.swept_until - 300
                )
            )
            conn.execute(
                sa.update(db.links)
                .where(db.links.c.jti == unused["jti"])
                .values(exp=db.links.c.exp - 200, iat=db.links.c.iat - 200)
            )
    finally:
        engine.dispose()

    expected = {
        link["jti"]: ["link.minted", "link.sent", "link.viewed", "link.consumed", "code.exchanged", "link.replayed"],
        first["jti"]: ["link.minted", "link.superseded"],
        second["jti"]: ["link.minted", "link.revoked"],
        unused["jti"]: ["link.minted", "link.expired"],
    }  # fmt: skip
    total = sum(len(v) for v in expected.values())
    stack.receiver.wait_for(lambda got: len({r.msg_id for r in got}) >= total)
    time.sleep(1.0)  # anything sent twice would arrive now
    got = stack.receiver.snapshot()
    assert len(got) == total, [(r.type, r.msg_id) for r in got]  # each once
    assert all(all(r.verified.values()) and r.verified for r in got)
    assert dict(by_link(got)) == expected
    assert {r.type for r in got} == set(outbox.EVENT_TYPES)
    for r in got:
        assert link["token"] not in r.raw.decode() and "alice@example.com" not in r.raw.decode()
        assert r.body["data"]["client_id"] == stack.client_id
    viewed = next(r for r in got if r.type == "link.viewed")
    assert viewed.body["data"]["suspected_scanner"] is False


def test_both_signatures_during_a_rotation(stack: Stack) -> None:
    old = stack.endpoint["secret"]
    out = flask_cli(stack.env, "webhooks", "rotate-secret", stack.endpoint["endpoint_id"], "--json")
    new = json.loads(out.stdout)["secret"]
    stack.receiver.secrets = [old, new]
    stack.relay()
    stack.mint()
    stack.receiver.wait_for(lambda got: len(got) >= 1)
    [r] = stack.receiver.snapshot()
    assert r.verified == {old: True, new: True}
    assert len(r.signature.split(" ")) == 2 and all(
        s.startswith("v1,") for s in r.signature.split(" ")
    )
    # A receiver that only knows some other secret verifies nothing: the check can fail.
    assert not _verifies(r, "whsec_" + "A" * 43 + "=")


def _verifies(r: Received, secret: str) -> bool:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        Webhook(secret).verify(
            r.raw,
            {
                "webhook-id": r.msg_id,
                "webhook-timestamp": r.timestamp,
                "webhook-signature": r.signature,
            },
        )
        return True
    except WebhookVerificationError:
        return False


def test_relay_killed_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    stack = Stack(tmp_path, LINKSVC_WEBHOOK_TIMEOUT="2")
    try:
        stack.serve()
        stack.receiver.delay = 4  # the first delivery hangs at the receiver...
        relay = stack.relay("--lease", "5")
        link = stack.mint()
        stack.receiver.wait_for(lambda got: len(got) >= 1)
        relay.send_signal(signal.SIGKILL)  # ...and the relay dies while it waits
        relay.wait()
        stack.receiver.delay = 0
        stack.relay("--lease", "5")
        stack.receiver.wait_for(lambda got: len(got) >= 2, timeout=30)
        got = stack.receiver.snapshot()
        assert {r.msg_id for r in got} == {got[0].msg_id}  # the same webhook-id again
        assert got[1].jti == link["jti"] and got[1].type == "link.minted"
        assert all(all(r.verified.values()) for r in got)
        out = flask_cli(stack.env, "webhooks", "deliveries", stack.client_id, "--json")
        [d] = json.loads(out.stdout)
        deadline = time.monotonic() + 10
        while d["state"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.2)
            out = flask_cli(stack.env, "webhooks", "deliveries", stack.client_id, "--json")
            [d] = json.loads(out.stdout)
        assert d["state"] == "delivered" and d["msg_id"] == got[0].msg_id
    finally:
        stack.close()


def test_receiver_down_then_back(stack: Stack) -> None:
    port = stack.receiver.port
    secret = stack.endpoint["secret"]
    stack.receiver.stop()
    stack.relay()
    minted = [stack.mint(subject=f"user-{i}")["jti"] for i in range(5)]
    # Wait until the relay has failed on each at least once (connection refused).
    engine = db.make_engine(stack.env["LINKSVC_DATABASE_URL"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                failed = conn.execute(
                    sa.select(sa.func.count()).select_from(db.webhook_attempts)
                ).scalar_one()
            if failed >= 5:
                break
            time.sleep(0.2)
        assert failed >= 5
    finally:
        engine.dispose()
    stack.receiver = Receiver([secret], port=port)  # back, at the same address
    stack.receiver.wait_for(lambda got: len({r.msg_id for r in got}) >= 5, timeout=30)
    got = stack.receiver.snapshot()
    assert sorted(r.jti for r in first_arrivals(got)) == sorted(minted)
    assert all(all(r.verified.values()) for r in got)
    out = flask_cli(stack.env, "webhooks", "deliveries", stack.client_id, "--attempts", "--json")
    assert all(len(d["tries"]) >= 2 for d in json.loads(out.stdout))


def test_two_relays_on_one_postgresql_never_both_deliver(tmp_path: Path, pg_url: str) -> None:
    stack = Stack(tmp_path, pg_url)
    try:
        stack.receiver.delay = 0.01
        relays = [stack.relay("--concurrency", "4", "--batch", "5") for _ in range(2)]
        deadline = time.monotonic() + 30
        while stack.relay_logs().count("webhook relay started") < len(relays):
            assert time.monotonic() < deadline, stack.relay_logs()
            time.sleep(0.1)
        # A burst: 200 events committed at once, for both relays to race over.
        engine = db.make_engine(pg_url)
        try:
            with db.write(engine) as conn:
                for i in range(200):
                    outbox.emit(
                        conn,
                        outbox.Event(
                            "link.minted", stack.client_id, f"j{i}", "magic_link", f"u{i}",
                            at=int(time.time()),
                        ),
                    )  # fmt: skip
        finally:
            engine.dispose()
        stack.receiver.wait_for(lambda got: len({r.msg_id for r in got}) >= 200, timeout=90)
        time.sleep(1.0)
        counts = collections.Counter(r.msg_id for r in stack.receiver.snapshot())
        assert len(counts) == 200 and set(counts.values()) == {1}, counts.most_common(3)
        per_relay = [
            p.read_text().count('"webhook delivered"') for p in sorted(tmp_path.glob("relay*.log"))
        ]
        assert sum(per_relay) == 200 and all(n > 0 for n in per_relay), per_relay
    finally:
        stack.close()


def _outbox_rows(url: str, jtis: set[str]) -> list[tuple[object, ...]]:
    """What the database holds of the events of ``jtis`` (for a failure's message)."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    db.webhook_outbox.c.jti,
                    db.webhook_outbox.c.state,
                    db.webhook_outbox.c.attempts,
                    db.webhook_outbox.c.next_attempt_at,
                    db.webhook_outbox.c.lease_until,
                    db.webhook_outbox.c.last_status,
                    db.webhook_outbox.c.last_error,
                ).where(db.webhook_outbox.c.jti.in_(sorted(jtis)))
            ).all()
    finally:
        engine.dispose()
    return [(*r[1:],) for r in rows][:5] or [("no outbox row for any", len(jtis))]


def test_postgresql_stopped_and_started_under_load(tmp_path: Path) -> None:
    """Mints go on while the database is stopped and started again: every mint that was
    answered 201 has its event delivered, and no event arrives for a link not in the ledger."""
    with throwaway_cluster() as cluster:
        stack = Stack(tmp_path, cluster.url, LINKSVC_DB_CONNECT_TIMEOUT="1")
        try:
            stack.serve()
            stack.relay()
            minted: list[str] = []
            failed = collections.Counter()
            stop = threading.Event()

            def load() -> None:
                s = requests.Session()
                s.headers.update(stack.headers)
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        resp = s.post(
                            f"{stack.url}/api/v1/links",
                            json={"purpose": "magic_link", "subject": f"u{i}"},
                            timeout=15,
                        )
                    except requests.RequestException as exc:
                        failed[type(exc).__name__] += 1
                        continue
                    if resp.status_code == 201:
                        minted.append(resp.json()["jti"])
                    else:
                        failed[resp.status_code] += 1
                        time.sleep(0.05)

            worker = threading.Thread(target=load)
            worker.start()
            time.sleep(2)
            before = len(minted)
            cluster.stop("fast")
            time.sleep(3)
            cluster.start()
            time.sleep(3)
            stop.set()
            worker.join()
            assert before > 0 and len(minted) > before, (before, len(minted), failed)
            assert failed, "the outage was not seen by the load"
            try:
                stack.receiver.wait_for(lambda got: {r.jti for r in got} >= set(minted), timeout=60)
            except AssertionError as exc:
                missing = set(minted) - {r.jti for r in stack.receiver.snapshot()}
                raise AssertionError(
                    f"{len(missing)} of {len(minted)} minted links had no event: "
                    f"{_outbox_rows(cluster.url, missing)}; {exc}"
                ) from None
            time.sleep(1.0)
            got = stack.receiver.snapshot()
            assert all(all(r.verified.values()) for r in got)
            engine = db.make_engine(cluster.url)
            try:
                with engine.connect() as conn:
                    in_ledger = set(conn.execute(sa.select(db.links.c.jti)).scalars())
            finally:
                engine.dispose()
            # Nothing invented: every event is of a link the ledger has, and of no other.
            assert {r.jti for r in got} <= in_ledger
            assert {r.jti for r in got} == in_ledger  # a 503 mint left neither row nor event
            assert len({r.msg_id for r in got}) == len(in_ledger)
        finally:
            stack.close()


def test_a_trickling_receiver_holds_only_its_own_share(tmp_path: Path) -> None:
    """A receiver that answers a byte at a time, without end, holds at most its endpoint's
    share of deliveries (LINKSVC_WEBHOOK_ENDPOINT_CONCURRENCY, 2), and while it holds them
    another client's event, minted after, is delivered: the relay does not wait for it."""
    stack = Stack(tmp_path, LINKSVC_WEBHOOK_DEADLINE="60")
    fast = Receiver()
    try:
        stack.serve()
        stack.receiver.trickle = 0.5
        out = flask_cli(
            stack.env, "clients", "create", "other", "--purposes", "magic_link", "--json"
        )
        other = json.loads(out.stdout)
        out = flask_cli(stack.env, "webhooks", "add", other["client_id"], fast.url, "--json")
        fast.secrets = [json.loads(out.stdout)["secret"]]
        stack.relay()  # four delivery threads (the default --concurrency)
        for i in range(4):
            stack.mint(subject=f"user-{i}")
        stack.receiver.wait_log(lambda log: sum(k == "open" for k, _ in log) >= 2)
        resp = requests.post(
            f"{stack.url}/api/v1/links",
            json={"purpose": "magic_link", "subject": "someone-else"},
            headers={"Authorization": f"Bearer {other['api_key']}"},
            timeout=15,
        )
        assert resp.status_code == 201, resp.text
        fast.wait_for(lambda got: len(got) >= 1, timeout=30)
        [r] = fast.snapshot()
        assert r.jti == resp.json()["jti"] and all(r.verified.values()) and r.verified
        assert stack.receiver.held == 2  # still trickling, all the while
        assert stack.receiver.max_held == 2  # never more than its share
    finally:
        fast.stop()
        stack.close()


def test_two_relays_a_trickled_attempt_ends_before_its_lease(tmp_path: Path, pg_url: str) -> None:
    """Two relays, one receiver trickling without end: the attempt is cut at its deadline
    (LINKSVC_WEBHOOK_DEADLINE), well inside its lease, so the other relay never takes the
    row while it is being sent — the message is never delivered twice at once. (Before,
    the lease ran out mid-attempt and the second relay sent it again beside the first.)"""
    stack = Stack(tmp_path, pg_url, LINKSVC_WEBHOOK_TIMEOUT="1", LINKSVC_WEBHOOK_DEADLINE="2")
    try:
        stack.receiver.trickle = 0.2
        relays = [stack.relay() for _ in range(2)]
        deadline = time.monotonic() + 30
        while stack.relay_logs().count("webhook relay started") < len(relays):
            assert time.monotonic() < deadline, stack.relay_logs()
            time.sleep(0.1)
        engine = db.make_engine(pg_url)
        try:
            with db.write(engine) as conn:
                outbox.emit(
                    conn,
                    outbox.Event(
                        "link.minted", stack.client_id, "j1", "magic_link", "u1",
                        at=int(time.time()),
                    ),
                )  # fmt: skip
        finally:
            engine.dispose()
        # The first attempt, then its retry (5 s after it failed).
        stack.receiver.wait_log(lambda log: sum(k == "open" for k, _ in log) >= 2, timeout=60)
        with stack.receiver.lock:
            log = list(stack.receiver.log)
        [msg_id] = {m for _, m in log}
        assert log[:3] == [("open", msg_id), ("closed", msg_id), ("open", msg_id)], log
        out = flask_cli(
            stack.env, "webhooks", "deliveries", stack.client_id, "--attempts", "--json"
        )
        [d] = json.loads(out.stdout)
        assert d["tries"][0]["status"] is None and d["tries"][0]["error"] == "deadline"
    finally:
        stack.close()
