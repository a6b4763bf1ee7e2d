"""The partitioned ledger on PostgreSQL (linksvc/store/partitions.py, migration 0007).

- a link minted into tomorrow's partition (and one past every partition made, caught by the
  default one) verifies and redeems once; the redemption's statements touch one partition;
- purge, beside live mint/redeem/replay traffic over HTTP, drops exactly the day partitions
  past retention and keeps every row of the others, creating the days ahead as it goes;
- migration 0007 carries a ledger of 100,000 links with their history across, and back, on
  PostgreSQL (every row, every state, the event ids) and keeps a ledger on SQLite whole.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from flask import Flask

from linksvc import create_app
from linksvc.config import HARD_MAX_LEEWAY, HARD_MAX_TTL
from linksvc.links import ledger
from linksvc.links.ledger import statements
from linksvc.services import services
from linksvc.store import db, migrate, partitions
from tests.support import ledger_fill
from tests.support.apps import ApiUser, _prepare, make_api_user
from tests.support.env import base_env
from tests.support.servers import prepare_instance, start_gunicorn

DAY = partitions.DAY


@pytest.fixture
def pg_app(tmp_path: Path, pg_url: str) -> Iterator[Flask]:
    engine = db.make_engine(pg_url)
    migrate.upgrade(engine)
    engine.dispose()
    app = create_app(base_env(tmp_path / "instance", pg_url))
    _prepare(app)
    yield app
    services(app).links.engine.dispose()


def _partition_of(engine: sa.Engine, jti: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT tableoid::regclass::text FROM links WHERE jti = :j"), {"j": jti}
        ).scalar_one()


def _explain(conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any]) -> str:
    compiled = stmt.compile(dialect=conn.dialect)
    sql = "EXPLAIN " + compiled.string
    return "\n".join(r[0] for r in conn.exec_driver_sql(sql, {**compiled.params, **params}))


def test_a_link_minted_into_tomorrows_partition_redeems(pg_app: Flask) -> None:
    svc = services(pg_app).links
    api: ApiUser = make_api_user(pg_app)
    tomorrow = partitions.day_of(int(time.time())) + DAY
    svc.clock = lambda: tomorrow - 60  # a minute to midnight: exp falls tomorrow
    link = api.minted(ttl=300)
    assert _partition_of(svc.engine, link["jti"]) == partitions.day_name("links", tomorrow)

    svc.clock = lambda: tomorrow + 10  # redeemed after midnight, in tomorrow's partition
    assert api.verify(link["token"]).status_code == 200
    assert api.redeem(link["token"]).status_code == 200
    replay = api.redeem(link["token"])
    assert replay.status_code == 409 and replay.get_json()["code"] == "used"
    status = api.status(link["jti"]).get_json()  # by jti alone: every partition is probed
    assert status["state"] == "consumed"
    assert [e["event"] for e in status["events"]][:2] == ["minted", "consumed"]

    # The token's exp narrows the redemption to that one partition.
    with svc.engine.connect() as conn:
        rec = ledger.get(conn, link["jti"])
        assert rec is not None and partitions.day_of(rec.exp) == tomorrow
        plan = _explain(
            conn,
            statements.CONSUME.stmt,
            {
                "k_jti": rec.jti,
                "k_exp": rec.exp,
                "k_client": rec.client_id,
                "k_purpose": rec.purpose,
                "k_subject": rec.subject,
                "k_now": tomorrow,
                "k_via": "api",
            },
        )
    scanned = {w for w in plan.split() if partitions.is_partition_name(w)}
    assert scanned == {partitions.day_name("links", tomorrow)}, plan


def test_a_link_past_every_partition_lands_in_default_and_moves_to_its_day(
    pg_app: Flask,
) -> None:
    svc = services(pg_app).links
    api: ApiUser = make_api_user(pg_app)
    far = partitions.day_of(int(time.time())) + 40 * DAY + 3600  # no partition made yet
    svc.clock = lambda: far
    first, second = api.minted(subject="a"), api.minted(subject="b")
    assert _partition_of(svc.engine, first["jti"]) == "links_default"
    assert api.redeem(first["token"]).status_code == 200

    report = ledger.purge(svc.engine, now=far, retention_seconds=7 * DAY)
    assert report["partitions_created"] >= 2 and report["links"] == 0
    day = partitions.day_name("links", partitions.day_of(far))
    assert _partition_of(svc.engine, first["jti"]) == day
    assert _partition_of(svc.engine, second["jti"]) == day
    with svc.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM links_default").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM link_events_default").scalar() == 0
    # Moved with their states: the used one still refuses, the other still redeems once.
    assert api.redeem(first["token"]).get_json()["code"] == "used"
    assert api.redeem(second["token"]).status_code == 200
    assert api.redeem(second["token"]).status_code == 409


def test_the_partitions_command_makes_the_days_ahead_without_purge(pg_app: Flask) -> None:
    engine = services(pg_app).links.engine
    today = partitions.day_of(int(time.time()))
    with engine.begin() as conn:  # a run missed: the last day ahead is not there
        last = partitions.day_name("links", today + partitions.AHEAD_DAYS * DAY)
        conn.exec_driver_sql(f'ALTER TABLE links DETACH PARTITION "{last}"')
        conn.exec_driver_sql(f'DROP TABLE "{last}"')
    runner = pg_app.test_cli_runner()
    with pg_app.app_context():  # what `flask` pushes for every command
        out = runner.invoke(args=["partitions", "--ahead-days", "9"])
        again = runner.invoke(args=["partitions", "--ahead-days", "9"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("created 5 partition(s)"), out.output  # 3 of links, 2 of events
    assert last in out.output
    have = _partitions(engine)
    for table in partitions.KEYS:
        assert {today + i * DAY for i in range(10)} <= set(have[table])
    assert again.output == "created 0 partition(s)\n"


def test_maintenance_waits_briefly_for_its_lock_and_tries_again(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holding the table (a long report, say) makes the maintenance's lock
    wait time out: it lets go — the requests queued behind it go ahead — and tries again."""
    engine = services(pg_app).links.engine
    far = partitions.day_of(int(time.time())) + 60 * DAY
    blocker = engine.connect()
    tx = blocker.begin()
    blocker.exec_driver_sql("SELECT count(*) FROM links")  # holds ACCESS SHARE on links
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if tx.is_active:
            tx.commit()  # the report ends

    monkeypatch.setattr(partitions, "_pause", pause)
    try:
        created = partitions.ensure_ahead(engine, now=far, ahead_days=0)
    finally:
        blocker.close()
    assert created == [partitions.day_name(t, far) for t in partitions.KEYS]
    assert len(pauses) == 1  # one lock timeout, then done


ROUNDS = 4
LINKS_PER_ROUND = 120
REDEEMERS = 4


def test_purge_moving_rows_out_of_default_races_redemptions_without_a_failure(
    pg_app: Flask,
) -> None:
    """Links sit in the default partition (purge not run for weeks, or a clock jump); purge
    then creates their day, moving them, while threads redeem them over the API. Every
    valid link answers 200 exactly once — none 503 (the deadlock of issue 24), none
    wrongly ``used`` or unknown — and every one ends consumed in its day's partition."""
    svc = services(pg_app).links
    api: ApiUser = make_api_user(pg_app)
    today = partitions.day_of(int(time.time()))
    outcomes: collections.Counter[int] = collections.Counter()
    purge_errors: list[BaseException] = []
    for r in range(ROUNDS):
        far = today + (40 + 10 * r) * DAY + 3600  # a day with no partition yet
        svc.clock = lambda far=far: far
        links = [api.minted(subject=f"r{r}-{i}") for i in range(LINKS_PER_ROUND)]
        assert {_partition_of(svc.engine, link["jti"]) for link in links} == {"links_default"}
        start = threading.Barrier(REDEEMERS + 1)

        def redeem(share: list[dict[str, Any]]) -> None:
            user = ApiUser(pg_app.test_client(), api.client, api.api_key)
            start.wait()
            for link in share:
                outcomes[user.redeem(link["token"]).status_code] += 1

        threads = [
            threading.Thread(target=redeem, args=(links[i::REDEEMERS],)) for i in range(REDEEMERS)
        ]
        for t in threads:
            t.start()
        start.wait()
        try:
            ledger.purge(svc.engine, now=far, retention_seconds=7 * DAY)
        except BaseException as exc:  # reported below, once the threads are done
            purge_errors.append(exc)
        for t in threads:
            t.join(timeout=120)
        assert not purge_errors, purge_errors
        assert dict(outcomes) == {200: LINKS_PER_ROUND * (r + 1)}, (r, outcomes)
        # Each exactly once: a second redemption is refused, the row consumed in its day.
        for link in links[:10]:
            assert api.redeem(link["token"]).status_code == 409
        day = partitions.day_name("links", partitions.day_of(far))
        with svc.engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT tableoid::regclass::text, state, count(*) FROM links "
                    "WHERE jti = ANY(:j) GROUP BY 1, 2"
                ),
                {"j": [link["jti"] for link in links]},
            ).all()
        assert found == [(day, "consumed", LINKS_PER_ROUND)], found


def _partitions(engine: sa.Engine) -> dict[str, dict[int, str]]:
    with engine.connect() as conn:
        return {t: partitions.days(conn, t) for t in partitions.KEYS}


def _day_counts(engine: sa.Engine, table: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.exec_driver_sql(
                f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1"
            ).all()
        )


@pytest.mark.slow
def test_purge_drops_exactly_the_days_past_retention_beside_traffic(
    tmp_path: Path, pg_url: str
) -> None:
    env = base_env(tmp_path / "instance", pg_url)
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    engine = db.make_engine(pg_url)
    now = int(time.time())
    today = partitions.day_of(now)
    first_day = today - 12 * DAY
    # Twelve days of history as the service would have left it: partitions made as it went,
    # 300 links a day (with their events) expiring across each day.
    with db.write(engine) as conn:
        for d in range(-1, 12):  # the day before too: the first links' events fall in it
            partitions.ensure(conn, now=first_day + d * DAY)
    ledger_fill.fill(pg_url, 12 * 300, client_id=creds["client_id"], start=first_day, span=12 * DAY)
    links_before = _day_counts(engine, "links")
    events_before = _day_counts(engine, "link_events")

    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    outcomes: collections.Counter[tuple[str, int]] = collections.Counter()
    minted: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        s = requests.Session()
        i = 0
        while not stop.is_set():
            r = s.post(
                f"{server.url}/api/v1/links",
                json={"purpose": "magic_link", "subject": f"w{worker}-{i}"},
                headers=headers,
                timeout=30,
            )
            outcomes["mint", r.status_code] += 1
            i += 1
            if r.status_code != 201:
                continue
            minted.append(r.json()["jti"])
            body = {"token": r.json()["token"], "purpose": "magic_link"}
            for kind in ("redeem", "replay"):
                code = s.post(
                    f"{server.url}/api/v1/links/redeem", json=body, headers=headers, timeout=30
                ).status_code
                outcomes[kind, code] += 1

    reports = []
    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1)
        # Three daily runs, one after another beside the traffic: each drops one more day.
        for run in range(3):
            reports.append(ledger.purge(engine, now=now + run * DAY, retention_seconds=7 * DAY))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.stop()
    assert "Traceback" not in server.log()
    assert set(outcomes) == {("mint", 201), ("redeem", 200), ("replay", 409)}, outcomes

    # Exactly the whole days past the last run's cutoff are gone, and nothing else.
    last_now = now + 2 * DAY
    cutoff = last_now - 7 * DAY
    events_cutoff = partitions.day_of(cutoff) - HARD_MAX_TTL - HARD_MAX_LEEWAY
    left = _partitions(engine)
    expect_links = {d for d in range(first_day, today + 10 * DAY, DAY) if d + DAY > cutoff}
    links_days = {d for d in left["links"] if d <= today}
    assert links_days == {d for d in expect_links if d <= today}
    assert min(left["link_events"]) == min(
        d for d in range(first_day, today, DAY) if d + DAY > events_cutoff
    )
    # Partitions ahead: a week past the last run's day.
    assert max(left["links"]) == partitions.day_of(last_now) + partitions.AHEAD_DAYS * DAY

    links_after = _day_counts(engine, "links")
    events_after = _day_counts(engine, "link_events")
    dropped_links = {n for n in links_before if n not in links_after}
    for name, count in links_before.items():  # every row of a kept day is still there
        if name in links_after and name != partitions.day_name("links", today):
            assert links_after[name] == count, name
    assert dropped_links == {
        partitions.day_name("links", d) for d in range(first_day, today, DAY) if d + DAY <= cutoff
    }
    assert sum(r["links"] for r in reports) == sum(links_before[n] for n in dropped_links)
    dropped_events = {n for n in events_before if n not in events_after}
    assert sum(r["events"] for r in reports) == sum(events_before[n] for n in dropped_events)
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(db.links.c.jti, db.links.c.state).where(db.links.c.jti.in_(minted))
            ).all()
        )
    engine.dispose()
    assert len(states) == len(minted) and set(states.values()) == {"consumed"}
    print(f"\npurge runs beside {sum(outcomes.values())} requests: {reports}")


def _before_0007() -> str:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    rev = script.get_revision("0007")
    assert rev is not None and isinstance(rev.down_revision, str)
    return rev.down_revision


@pytest.mark.slow
def test_migration_carries_a_100k_ledger_across_and_back(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    previous = _before_0007()
    try:
        migrate.upgrade(engine, previous)
        now = int(time.time())
        ledger_fill.fill(pg_url, 100_000, client_id="cl_fill", start=now - 8 * DAY, span=9 * DAY)
        before = ledger_fill.fingerprint(pg_url)
        assert before["links"] == 100_000 and len(before["states"]) == 4
        with engine.connect() as conn:
            next_id = conn.exec_driver_sql("SELECT max(id) FROM link_events").scalar_one() + 1

        started = time.monotonic()
        migrate.upgrade(engine, "0007")
        seconds = time.monotonic() - started
        assert ledger_fill.fingerprint(pg_url) == before
        with engine.connect() as conn:
            assert partitions.is_partitioned(conn, "links")
            assert partitions.is_partitioned(conn, "link_events")
            assert conn.exec_driver_sql("SELECT count(*) FROM links_default").scalar() == 0
            assert len(partitions.days(conn, "links")) >= 10  # nine days of data, a week ahead
        # The history's ids carry on from the same sequence.
        with db.write(engine) as conn:
            ledger.add_event(conn, "after", "rejected", now, reason="expired")
            new_id = conn.exec_driver_sql(
                "SELECT id FROM link_events WHERE jti = 'after'"
            ).scalar_one()
        assert new_id >= next_id
        migrate.upgrade(engine)
        assert migrate.diff(engine) == []

        with db.write(engine) as conn:
            conn.exec_driver_sql("DELETE FROM link_events WHERE jti = 'after'")
        command.downgrade(migrate.alembic_config(engine), previous)
        assert ledger_fill.fingerprint(pg_url) == before
        with engine.connect() as conn:
            assert not partitions.is_partitioned(conn, "links")
        migrate.upgrade(engine)
        assert ledger_fill.fingerprint(pg_url) == before
        print(f"\nmigration 0007 on 100,000 links and {before['events']:,} events: {seconds:.1f}s")
    finally:
        engine.dispose()


def test_migration_keeps_an_sqlite_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'linksvc.db'}"
    engine = db.make_engine(url)
    previous = _before_0007()
    try:
        migrate.upgrade(engine, previous)
        rows = [
            {
                "jti": ledger_fill.jti_of(i),
                "client_id": "cl",
                "purpose": "magic_link",
                "subject": f"u{i}",
                "kid": "k",
                "iat": 1000 + i,
                "exp": 1300 + i,
                "state": ledger_fill.STATES[i % len(ledger_fill.STATES)],
            }
            for i in range(2000)
        ]
        with db.write(engine) as conn:
            conn.execute(sa.insert(db.links), rows)
        read = sa.select(db.links.c.jti, db.links.c.exp, db.links.c.state).order_by("jti")
        with engine.connect() as conn:
            before = conn.execute(read).all()
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(read).all() == before
            pk = sa.inspect(engine).get_pk_constraint("links")["constrained_columns"]
        assert pk == ["jti", "exp"]
        command.downgrade(migrate.alembic_config(engine), previous)
        with engine.connect() as conn:
            assert conn.execute(read).all() == before
        assert sa.inspect(engine).get_pk_constraint("links")["constrained_columns"] == ["jti"]
    finally:
        engine.dispose()
