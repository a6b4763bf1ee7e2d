"""The outbox on SQLite and PostgreSQL: leases, order per link, the retry schedule, 410 and
3 days of failure, the link.expired sweep, replay by hand, purge — time always a parameter."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from linksvc.clients import registry as clients
from linksvc.links.ledger import LinkRecord, record_mint
from linksvc.store import db, migrate
from linksvc.webhooks import endpoints as webhooks
from linksvc.webhooks import outbox, ssrf

KEK = b"k" * 32
T0 = 1_800_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'o.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    eng = db.make_engine(url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


def setup_client(engine: Engine, n_endpoints: int = 1) -> tuple[str, list[str]]:
    with db.write(engine) as conn:
        c, _ = clients.create(conn, f"c{time.monotonic_ns()}", purposes=["magic_link"], now=T0)
        ids = [
            webhooks.add(
                conn,
                KEK,
                c.id,
                "http://127.0.0.1:9/hook",
                events=None,
                rules=ssrf.Policy(allow_loopback=True),
                now=T0,
            )[0].id
            for _ in range(n_endpoints)
        ]
    return c.id, ids


def emit(engine: Engine, client_id: str, jti: str, event: str = "link.minted", now: int = T0):
    with db.write(engine) as conn:
        outbox.emit(conn, outbox.Event(event, client_id, jti, "magic_link", "s", at=now))


def finish(engine: Engine, c: outbox.Claimed, status: int | None, now: int) -> outbox.Outcome:
    return outbox.finish(
        engine,
        c,
        status=status,
        error=None if status else "x",
        duration_ms=1,
        now=now,
        rand=lambda: 0.5,
    )


def test_retry_schedule_with_jitter() -> None:
    assert [outbox.retry_delay(n, lambda: 0.5) for n in range(1, 9)] == [
        5, 300, 1800, 7200, 18000, 36000, 36000, None,
    ]  # fmt: skip
    assert outbox.retry_delay(2, lambda: 0.0) == 270 and outbox.retry_delay(2, lambda: 1.0) == 330
    assert sum(outbox.RETRY_DELAYS) / 86400 > 1.1  # "about a day and a half" of retries


def test_a_lease_keeps_a_row_from_a_second_relay_until_it_ends(engine: Engine) -> None:
    client_id, _ = setup_client(engine)
    emit(engine, client_id, "j1")
    [c] = outbox.claim(engine, now=T0, limit=10, lease_seconds=30)
    assert c.attempts == 1
    assert outbox.claim(engine, now=T0 + 29, limit=10, lease_seconds=30) == []
    # The relay died: after the lease, the row is claimed again — same webhook-id.
    [again] = outbox.claim(engine, now=T0 + 30, limit=10, lease_seconds=30)
    assert again.msg_id == c.msg_id and again.attempts == 2
    # The first relay's late result is fenced off: the row stays with the second.
    assert finish(engine, c, 200, T0 + 31).state == "stale"
    assert finish(engine, again, 200, T0 + 31).state == "delivered"
    assert outbox.claim(engine, now=T0 + 100, limit=10, lease_seconds=30) == []


def test_events_of_one_link_go_in_order(engine: Engine) -> None:
    client_id, _ = setup_client(engine)
    emit(engine, client_id, "j1", "link.minted")
    emit(engine, client_id, "j1", "link.consumed")
    emit(engine, client_id, "j2", "link.minted")
    got = outbox.claim(engine, now=T0, limit=10, lease_seconds=30)
    assert [(c.jti, c.event_type) for c in got] == [("j1", "link.minted"), ("j2", "link.minted")]
    # The first fails: the second event of j1 waits for its retry, not just for its lease.
    assert finish(engine, got[0], 500, T0).state == "retry"
    assert outbox.claim(engine, now=T0 + 1, limit=10, lease_seconds=30) == []
    [retry] = outbox.claim(engine, now=T0 + 5, limit=10, lease_seconds=30)
    assert retry.event_type == "link.minted" and retry.attempts == 2
    finish(engine, retry, 204, T0 + 5)
    [nxt] = outbox.claim(engine, now=T0 + 5, limit=10, lease_seconds=30)
    assert nxt.event_type == "link.consumed"


def test_given_up_after_eight_attempts_and_replayed_by_hand(engine: Engine) -> None:
    client_id, _ = setup_client(engine)
    emit(engine, client_id, "j1")
    now = T0
    for attempt in range(1, 9):
        [c] = outbox.claim(engine, now=now, limit=1, lease_seconds=30)
        assert c.attempts == attempt
        out = finish(engine, c, 503, now)
        now = out.next_attempt_at or now
    assert out.state == "failed"
    assert outbox.claim(engine, now=now + 10**6, limit=1, lease_seconds=30) == []
    with db.write(engine) as conn:
        assert outbox.replay(conn, client_id, now=now, failed=True) == 1
    [c] = outbox.claim(engine, now=now, limit=1, lease_seconds=30)
    assert c.attempts == 1
    with db.read(engine) as conn:
        [d] = outbox.deliveries(conn, client_id)
        assert len(outbox.attempts(conn, d.id)) == 8  # every attempt is kept


def test_410_disables_the_endpoint(engine: Engine) -> None:
    client_id, [ep] = setup_client(engine)
    emit(engine, client_id, "j1")
    emit(engine, client_id, "j2")
    [c, _] = outbox.claim(engine, now=T0, limit=1 + 1, lease_seconds=30)
    assert finish(engine, c, 410, T0).endpoint_disabled == "gone"
    with db.read(engine) as conn:
        e = webhooks.get(conn, ep)
    assert e.disabled and e.disabled_reason == "gone"
    assert outbox.claim(engine, now=T0 + 10**6, limit=10, lease_seconds=30) == []


def test_three_days_of_failure_disable_the_endpoint(engine: Engine) -> None:
    client_id, [ep] = setup_client(engine)
    now = T0
    for i in range(5):
        emit(engine, client_id, f"j{i}", now=now)
        [c] = outbox.claim(engine, now=now, limit=1, lease_seconds=30)
        out = finish(engine, c, 500, now)
        if now - T0 >= outbox.DISABLE_AFTER_SECONDS:
            assert out.endpoint_disabled == "failing"
            break
        assert out.endpoint_disabled is None
        now += 86400
    with db.read(engine) as conn:
        assert webhooks.get(conn, ep).disabled_reason == "failing"
        assert outbox.stats(conn, now)["endpoints"] == [(True, "failing", 1)]


def test_a_success_resets_the_failure_clock(engine: Engine) -> None:
    client_id, [ep] = setup_client(engine)
    emit(engine, client_id, "j1")
    [c] = outbox.claim(engine, now=T0, limit=1, lease_seconds=30)
    finish(engine, c, 500, T0)
    [c] = outbox.claim(engine, now=T0 + 86400 * 2, limit=1, lease_seconds=30)
    finish(engine, c, 200, T0 + 86400 * 2)
    with db.read(engine) as conn:
        assert webhooks.get(conn, ep).failing_since is None


def _mint(engine: Engine, client_id: str, jti: str, exp: int, sink: outbox.Sink | None) -> None:
    with db.write(engine) as conn:
        record_mint(
            conn,
            LinkRecord(jti, client_id, "magic_link", "s", "kid", exp - 60, exp),
            supersede=False,
            now=exp - 60,
            sink=sink,
        )


def test_expired_links_are_swept_once(engine: Engine) -> None:
    client_id, _ = setup_client(engine)
    _mint(engine, client_id, "old", T0 - 10, None)  # expired before the endpoint existed
    _mint(engine, client_id, "a", T0 + 100, None)
    _mint(engine, client_id, "b", T0 + 200, None)
    with db.write(engine) as conn:
        conn.execute(sa.update(db.links).where(db.links.c.jti == "b").values(state="consumed"))
    now = T0 + 200 + outbox.EXPIRY_MARGIN + 1
    threads = [
        threading.Thread(target=outbox.sweep_expired, args=(engine,), kwargs={"now": now})
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outbox.sweep_expired(engine, now=now + 500)
    with db.read(engine) as conn:
        got = [(d.jti, d.event_type) for d in outbox.deliveries(conn, client_id)]
    assert got == [("a", "link.expired")]


def test_two_relays_never_claim_the_same_row(engine: Engine) -> None:
    """Relays racing for the same rows (threads, each with its own connections): every row
    is claimed exactly once while leases hold."""
    client_id, _ = setup_client(engine, n_endpoints=2)
    with db.write(engine) as conn:
        for i in range(150):
            outbox.emit(conn, outbox.Event("link.minted", client_id, f"j{i}", "p", "s", at=T0))
    claimed: Counter[int] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def relay() -> None:
        barrier.wait()
        while True:
            got = outbox.claim(engine, now=T0, limit=7, lease_seconds=600)
            if not got:
                return
            with lock:
                claimed.update(c.id for c in got)

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 300
    assert set(claimed.values()) == {1}


def test_a_claim_gives_one_endpoint_at_most_its_share(engine: Engine) -> None:
    """A slow endpoint with a backlog holds ``per_endpoint`` leased rows, whoever leased
    them; the rows of other endpoints behind its backlog are claimed at once."""
    slow_client, [slow] = setup_client(engine)
    fast_client, [fast] = setup_client(engine)
    for i in range(10):
        emit(engine, slow_client, f"s{i}")
    emit(engine, fast_client, "f0")
    got = outbox.claim(engine, now=T0, limit=50, lease_seconds=30, per_endpoint=2)
    assert sorted(c.endpoint_id for c in got) == sorted([slow, slow, fast])
    assert {c.lease_until for c in got} == {T0 + 30}
    # Another relay (or the same one) finds no free slot on the slow endpoint...
    assert outbox.claim(engine, now=T0 + 1, limit=50, lease_seconds=30, per_endpoint=2) == []
    # ...until one of its rows is done, or its lease runs out.
    finish(engine, got[0], 200, T0 + 2)
    [nxt] = outbox.claim(engine, now=T0 + 2, limit=50, lease_seconds=30, per_endpoint=2)
    assert nxt.endpoint_id == slow
    again = outbox.claim(engine, now=T0 + 32, limit=50, lease_seconds=30, per_endpoint=2)
    assert sorted(c.endpoint_id for c in again) == sorted([slow, slow, fast])


def test_racing_claims_never_exceed_an_endpoints_share(engine: Engine) -> None:
    """Four relays claim at once, over and over, finishing nothing: however they interleave,
    each endpoint ends with exactly ``per_endpoint`` leased rows."""
    client_id, endpoints = setup_client(engine, n_endpoints=3)
    for i in range(40):
        emit(engine, client_id, f"j{i}")
    claimed: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def relay() -> None:
        barrier.wait()
        for _ in range(5):
            got = outbox.claim(engine, now=T0, limit=3, lease_seconds=600, per_endpoint=2)
            with lock:
                claimed.update(c.endpoint_id for c in got)

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claimed == dict.fromkeys(endpoints, 2)


def test_a_slow_claim_makes_the_relay_refresh_the_outbox_statistics(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog on a table autovacuum has not looked at yet made every claim check every
    due row against every pending one (0.4 s a claim at 1,500 rows: the relay delivered 5
    events a second after a database outage). A slow claim makes the relay ANALYZE the
    outbox, once a minute at most, and the claim's plan no longer scans every pending row per due row."""
    from linksvc.webhooks import relay as relay_mod

    client_id, _ = setup_client(engine)
    with db.write(engine) as conn:
        for i in range(300):
            outbox.emit(
                conn, outbox.Event("link.minted", client_id, f"j{i}", "magic_link", "s", at=T0)
            )
    monkeypatch.setattr(relay_mod, "CLAIM_SLOW", 0.0)  # every claim counts as slow
    r = relay_mod.Relay(engine, KEK, rules=ssrf.Policy(allow_loopback=True), clock=lambda: T0)
    refreshed = []
    monkeypatch.setattr(
        outbox, "refresh_statistics", lambda e: refreshed.append(e) or outbox_refresh(e)
    )
    try:
        r.run_once()
        r.run_once()  # within the minute: not again
    finally:
        r.close()
    assert len(refreshed) == 1
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        analyzed = conn.exec_driver_sql(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'webhook_outbox'"
        ).scalar()
        assert analyzed is not None
        query = outbox._due(T0, 2, scan=100).limit(2)
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
    # Not the quadratic plan: every due row checked against a scan of all pending ones.
    assert "using ix_webhook_outbox_due on webhook_outbox earlier" not in plan, plan


outbox_refresh = outbox.refresh_statistics
