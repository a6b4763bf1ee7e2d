"""Purge: only rows past ``exp`` plus retention go, in bounded batches, beside live traffic;
a purged link's token still fails as ``expired`` (the token is checked before the ledger),
and every row that answers a replay with ``used`` stays."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from linksvc.links import codes, ledger
from linksvc.services import services
from linksvc.store import db, partitions
from tests.support.env import ROOT, _clean_environ, base_env, venv_bin
from tests.support.servers import prepare_instance, start_gunicorn

DAY = 86400


def _rows(app, table: sa.Table) -> int:
    with services(app).links.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def _states(app) -> dict[str, str]:
    with services(app).links.engine.connect() as conn:
        return dict(conn.execute(sa.select(db.links.c.jti, db.links.c.state)).all())


def test_purge_removes_only_what_is_past_retention(app, api):
    svc = services(app).links
    retention = app.config["LINKSVC"].retention_days * DAY
    t0 = 1_900_000_000
    svc.clock = lambda: t0
    old = {name: api.minted(subject=f"old-{name}") for name in ("issued", "consumed", "revoked")}
    assert api.redeem(old["consumed"]["token"]).status_code == 200
    assert (
        api.http.delete(f"/api/v1/links/{old['revoked']['jti']}", headers=api.headers).status_code
        == 200
    )
    svc.clock = lambda: t0 + 20
    boundary = api.minted(subject="boundary")  # exp = t0 + 320: inside retention at `now` below

    now = t0 + 300 + retention + 10  # old links' exp is 10 s past the cutoff
    svc.clock = lambda: now - 10
    live = {name: api.minted(subject=f"live-{name}") for name in ("issued", "consumed", "revoked")}
    assert api.redeem(live["consumed"]["token"]).status_code == 200
    assert (
        api.http.delete(f"/api/v1/links/{live['revoked']['jti']}", headers=api.headers).status_code
        == 200
    )
    with db.write(svc.engine) as conn:
        conn.execute(
            sa.insert(db.codes),
            [
                {
                    "code_hash": "a" * 64,
                    "jti": "x",
                    "client_id": api.client.id,
                    "created_at": t0,
                    "expires_at": t0 + 60,
                },
                {
                    "code_hash": "b" * 64,
                    "jti": "y",
                    "client_id": api.client.id,
                    "created_at": now,
                    "expires_at": now + 60,
                },
            ],
        )
        # An event left behind by a link purged earlier (a replay attempt noted mid-purge).
        ledger.add_event(conn, "orphan", "rejected", t0 - 2 * DAY, reason="expired")
    events_before = _rows(app, db.link_events)

    removed = ledger.purge(svc.engine, now=now, retention_seconds=retention)
    removed_codes, _ = codes.purge(svc.engine, expired_before=now - retention)

    states = _states(app)
    assert removed["links"] == 3 and removed_codes == 1
    assert not {link["jti"] for link in old.values()} & states.keys()
    assert states[boundary["jti"]] == "issued"
    assert {states[live[n]["jti"]] for n in live} == {"issued", "consumed", "revoked"}
    assert _rows(app, db.link_events) == events_before - removed["events"]
    with svc.engine.connect() as conn:
        left = set(conn.execute(sa.select(db.link_events.c.jti)).scalars())
        # Kept links keep their stored events (minted and an API consumption are derived from
        # the row, not stored; the revocation is stored).
        assert left == {live["revoked"]["jti"]}
        assert conn.execute(sa.select(db.codes.c.code_hash)).scalars().all() == ["b" * 64]

    svc.clock = lambda: now
    # A purged link is refused as expired, never as unknown, and never redeemed.
    for link in old.values():
        resp = api.redeem(link["token"])
        assert resp.status_code == 410 and resp.get_json()["code"] == "expired"
    # The rows that stop replays are still there and still do.
    assert api.redeem(live["consumed"]["token"]).get_json()["code"] == "used"
    assert api.redeem(live["revoked"]["token"]).get_json()["code"] == "revoked"
    assert api.redeem(live["issued"]["token"]).status_code == 200


def test_purge_works_in_bounded_batches(app, api):
    svc = services(app).links
    t0 = 1_900_000_000
    svc.clock = lambda: t0
    for i in range(23):
        api.minted(subject=f"u{i}")
    now = t0 + 300 + 8 * DAY
    first = ledger.purge(
        svc.engine, now=now, retention_seconds=7 * DAY, batch_size=5, max_batches=2
    )
    assert first["links"] == 10
    assert len(_states(app)) == 13
    rest = ledger.purge(svc.engine, now=now, retention_seconds=7 * DAY, batch_size=5)
    assert rest["links"] == 13 and _states(app) == {}
    assert _rows(app, db.link_events) == 0


def test_purge_refuses_a_retention_that_could_reach_live_links(app, runner):
    svc = services(app).links
    with pytest.raises(ValueError):
        ledger.purge(svc.engine, now=int(time.time()), retention_seconds=60)
    with app.app_context():
        result = runner.invoke(args=["purge", "--retention-days", "0"])
    assert result.exit_code != 0 and "retention-days" in result.output


def test_purge_command_reports_what_it_removed(app, api, runner):
    svc = services(app).links
    svc.clock = lambda: int(time.time()) - 9 * DAY
    old = api.minted()
    # A stored event to purge with it (a mint alone stores none: the row says it).
    assert api.http.delete(f"/api/v1/links/{old['jti']}", headers=api.headers).status_code == 200
    svc.clock = time.time
    api.minted()
    with app.app_context():
        result = runner.invoke(args=["purge", "--json"])
        text = runner.invoke(args=["purge"]).output
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "links": 1,
        "events": 1,
        "codes": 0,
        "batches": 4,
        "idempotency_keys": 0,
        "partitions_dropped": 0,
        "partitions_created": 0,
        "sign_ins": 0,
        "retention_days": 7,
    }
    assert text.startswith("purged 0 link(s), 0 event(s), 0 code(s) older than 7 day(s)")


def _seed_expired(engine: sa.Engine, client_id: str, n: int, exp: int) -> list[str]:
    jtis = [f"seed{exp}x{i:06d}" for i in range(n)]
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(db.links),
            [
                {
                    "jti": j,
                    "client_id": client_id,
                    "purpose": "magic_link",
                    "subject": "old",
                    "kid": "k",
                    "iat": exp - 300,
                    "exp": exp,
                    "state": "consumed" if i % 2 else "issued",
                }
                for i, j in enumerate(jtis)
            ],
        )
        conn.execute(
            sa.insert(db.link_events),
            [{"jti": j, "at": exp - 300, "event": "minted"} for j in jtis],
        )
    return jtis


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_purge_under_load(tmp_path: Path, request: pytest.FixtureRequest, backend: str):
    """`flask purge` in small batches while clients mint, redeem and replay over HTTP: the
    traffic sees no error, purge removes exactly the rows past retention, and every live row
    — issued or consumed — is still there."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    env = base_env(tmp_path / "instance", url)
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    engine = db.make_engine(env["LINKSVC_DATABASE_URL"])
    now = int(time.time())
    cutoff = now - 7 * DAY
    # Past retention by a whole day (the day before the cutoff's), so that PostgreSQL's
    # partitioned ledger, which drops whole days, removes the same rows as SQLite's batches.
    old_exp = partitions.day_of(cutoff) - DAY - 3600
    if backend == "postgresql":
        with db.write(engine) as conn:  # the partitions made back then, days ahead included
            partitions.ensure(conn, now=old_exp - 300)
    old = _seed_expired(engine, creds["client_id"], 3000, old_exp)
    recent = _seed_expired(engine, creds["client_id"], 50, cutoff + 3600)
    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    outcomes: Counter[tuple[str, int]] = Counter()
    minted: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        s = requests.Session()
        i = 0
        while not stop.is_set():
            link = s.post(
                f"{server.url}/api/v1/links",
                json={"purpose": "magic_link", "subject": f"w{worker}-{i}"},
                headers=headers,
                timeout=30,
            )
            outcomes["mint", link.status_code] += 1
            if link.status_code != 201:
                continue
            body = {"token": link.json()["token"], "purpose": "magic_link"}
            minted.append(link.json()["jti"])
            outcomes[
                "redeem",
                s.post(
                    f"{server.url}/api/v1/links/redeem", json=body, headers=headers, timeout=30
                ).status_code,
            ] += 1
            outcomes[
                "replay",
                s.post(
                    f"{server.url}/api/v1/links/redeem", json=body, headers=headers, timeout=30
                ).status_code,
            ] += 1
            i += 1

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        started = time.monotonic()
        purge = subprocess.run(
            [venv_bin("flask"), "--app", "app", "purge", "--batch-size", "100", "--json"],
            cwd=ROOT,
            env={**_clean_environ(), **env},
            text=True,
            capture_output=True,
            timeout=120,
        )
        purge_seconds = time.monotonic() - started
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.stop()
    assert purge.returncode == 0, purge.stderr
    report = json.loads(purge.stdout)
    assert report["links"] == len(old) and report["events"] == len(old), report
    if backend == "postgresql":  # whole days: the old links' and their events'
        assert report["partitions_dropped"] >= 2 and report["batches"] <= 2, report
    assert set(outcomes) == {("mint", 201), ("redeem", 200), ("replay", 409)}, outcomes
    assert outcomes["redeem", 200] > 0
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(db.links.c.jti, db.links.c.state)).all())
    engine.dispose()
    assert not set(old) & states.keys()
    assert set(recent) <= states.keys()
    assert all(states[j] == "consumed" for j in minted), "a live link lost its row or its state"
    print(
        f"\n{backend}: purged {report['links']} links in {purge_seconds:.1f}s beside {sum(outcomes.values())} "
        f"requests ({dict(outcomes)})"
    )
