"""Rate limits: per client and per (client, subject, purpose) on minting, per IP on the pages,
in memory and in the machine's real Redis (two app instances sharing one limit)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from flask import Flask

from linksvc import create_app
from linksvc.services import services
from tests.support.apps import _prepare, make_api_user
from tests.support.databases import REDIS_URL
from tests.support.env import free_port, missing


def unique_prefix(app: Flask) -> str:
    prefix = f"linksvc-test-{secrets.token_hex(6)}"
    services(app).ratelimit.prefix = prefix
    return prefix


def assert_limited_problem(resp, window: int) -> dict:
    assert resp.status_code == 429
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["code"] == "rate_limited"
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= window
    assert body["retry_after"] == retry
    return body


def comparable(resp) -> tuple:
    """Everything a caller can see in an answer, minus the per-request id."""
    headers = sorted(
        (k, v) for k, v in resp.headers.items() if k not in ("X-Request-Id", "Retry-After")
    )
    return resp.status_code, headers, resp.get_data()


# -- in memory ------------------------------------------------------------------------


def test_client_mint_limit_is_per_client(app):
    unique_prefix(app)
    small = make_api_user(app, "small", mint_limit="3 per minute")
    big = make_api_user(app, "big")
    for i in range(3):
        assert small.mint(subject=f"u{i}").status_code == 201
    assert_limited_problem(small.mint(subject="u9"), 60)
    # Another client is not throttled by this one's traffic.
    assert big.mint(subject="u9").status_code == 201


def test_subject_limit_default_five_per_fifteen_minutes(app):
    unique_prefix(app)
    api = make_api_user(app, "defaults", subject_limit=None)
    for _ in range(5):
        assert api.mint("magic_link", "user-1").status_code == 201
    assert_limited_problem(api.mint("magic_link", "user-1"), 15 * 60)
    # The key is (client, subject, purpose): another subject or purpose is still free.
    assert api.mint("magic_link", "user-2").status_code == 201
    assert api.mint("password_reset", "user-1").status_code == 201


def test_one_mailbox_cannot_be_flooded_by_rotating_the_subject(app):
    """Issue 17 item 7: with default limits, 15 mints to one address under 15 subjects sent
    15 mails. Now at most 5 per 15 minutes go to one address (case and +tags ignored), across
    subjects and clients; the counter is keyed by a keyed hash, never the address."""
    from pathlib import Path

    unique_prefix(app)
    limits = services(app).ratelimit
    seen: list[tuple[str, ...]] = []  # every key the store is asked about
    real_hit = limits._hit

    def spy(strategy, items, ident, scope):
        seen.append(ident)
        return real_hit(strategy, items, ident, scope)

    limits._hit = spy
    api = make_api_user(app, "defaults", mint_limit=None, subject_limit=None)
    other = make_api_user(app, "other", mint_limit=None, subject_limit=None)
    victim = "victim.r8k2@mail.example"
    sent = [
        api.mint("magic_link", f"user-{i}", email=e).status_code
        for i, e in enumerate(
            [victim, victim.upper(), "victim.r8k2+1@mail.example", victim, victim]
        )
    ]
    assert sent == [201] * 5
    assert_limited_problem(api.mint("magic_link", "user-99", email=victim), 15 * 60)
    assert_limited_problem(other.mint("magic_link", "elsewhere", email=victim), 15 * 60)
    assert_limited_problem(
        api.mint("magic_link", "user-98", email="victim.r8k2+x@mail.example"), 15 * 60
    )
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    assert len(list(outbox.glob("*.eml"))) == 5
    # Another address, and mints without mail, are not held back.
    assert api.mint("magic_link", "user-97", email="someone@mail.example").status_code == 201
    assert api.mint("magic_link", "user-96").status_code == 201
    # What the store holds names nobody: no address, no local part, no plain hash of it.
    import hashlib

    keys = " ".join(" ".join(ident) for ident in seen)
    assert "recipient" in keys
    for needle in ("victim", "mail.example", hashlib.sha256(victim.encode()).hexdigest()[:16]):
        assert needle not in keys


def test_limited_mint_reveals_nothing_about_the_subject(app):
    """An attacker hammering 'reset my password' for many users learns nothing from the 429:
    the answer is the same byte for byte for a subject with links and one never seen."""
    unique_prefix(app)
    api = make_api_user(app, "app", mint_limit="2 per minute")
    assert api.mint("password_reset", "known-user").status_code == 201
    assert api.mint("password_reset", "known-user").status_code == 201
    known = api.mint("password_reset", "known-user")
    unknown = api.mint("password_reset", "never-seen-user")
    assert_limited_problem(known, 60)
    assert_limited_problem(unknown, 60)
    assert comparable(known) == comparable(unknown)
    assert b"known-user" not in known.get_data() and b"never-seen" not in unknown.get_data()

    # The per-subject limit answers exactly like the per-client one.
    api2 = make_api_user(app, "app2", subject_limit="1 per minute")
    assert api2.mint("password_reset", "known-user").status_code == 201
    by_subject = api2.mint("password_reset", "known-user")
    assert_limited_problem(by_subject, 60)
    assert comparable(by_subject) == comparable(known)


def test_limited_mint_changes_nothing(app):
    """A refused mint must not supersede the user's outstanding reset link or mint a new one."""
    unique_prefix(app)
    api = make_api_user(app, "app", subject_limit="1 per minute")
    first = api.minted("password_reset", "user-5")
    assert api.mint("password_reset", "user-5").status_code == 429
    assert api.verify(first["token"], "password_reset").get_json()["state"] == "issued"
    assert [e["event"] for e in api.status(first["jti"]).get_json()["events"]] == ["minted"]
    svc = services(app).links
    import sqlalchemy as sa

    from linksvc.store import db

    with db.read(svc.engine) as conn:
        n = conn.execute(
            sa.select(sa.func.count()).select_from(db.links).where(db.links.c.subject == "user-5")
        ).scalar()
    assert n == 1
    assert api.redeem(first["token"], "password_reset").status_code == 200


def test_limits_changed_later_apply(app):
    """`clients update --mint-limit`: the new limit applies once the client is read again."""
    unique_prefix(app)
    api = make_api_user(app, "app", mint_limit="1 per minute")
    assert api.mint(subject="a").status_code == 201
    assert api.mint(subject="b").status_code == 429
    from linksvc.clients import registry as clients
    from linksvc.store import db

    with db.write(services(app).links.engine) as conn:
        clients.update(conn, api.client.id, mint_limit="100 per minute")
    cache = getattr(services(app).links, "client_cache", None)
    if cache is not None:  # workers cache clients for a few seconds
        cache.clear()
    assert api.mint(subject="c").status_code == 201


@pytest.fixture
def page_app(env) -> Iterator[Flask]:
    app = create_app({**env, "LINKSVC_PAGE_RATE_LIMIT": "3 per minute"})
    _prepare(app)
    unique_prefix(app)
    yield app
    services(app).links.engine.dispose()


def test_pages_limited_per_ip_with_html_429(page_app):
    http = page_app.test_client()
    for path in ("/l/not-a-token", "/d/not-a-token", "/l/another"):
        assert http.get(path).status_code != 429
    resp = http.get("/l/not-a-token")
    assert resp.status_code == 429
    assert resp.mimetype == "text/html"
    assert "Too many attempts" in resp.get_data(as_text=True)
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["Cache-Control"] == "no-store"
    # Another address has its own budget; the API and health checks are not page-limited.
    assert http.get("/l/x", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code != 429
    assert http.get("/healthz").status_code == 200
    assert http.post("/api/v1/links", json={}).status_code == 401


def test_forwarded_for_is_ignored_without_trusted_proxies(page_app):
    """With LINKSVC_TRUSTED_PROXIES=0 a client cannot pick a fresh address per request."""
    http = page_app.test_client()
    codes = [
        http.get("/l/x", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(5)
    ]
    assert codes[3:] == [429, 429]


def test_forwarded_for_honoured_behind_one_trusted_proxy(env):
    app = create_app(
        {**env, "LINKSVC_PAGE_RATE_LIMIT": "2 per minute", "LINKSVC_TRUSTED_PROXIES": "1"}
    )
    _prepare(app)
    unique_prefix(app)
    http = app.test_client()
    # Behind one proxy, the proxy's own (right-most) entry is the client; the left one is made up.
    for _ in range(2):
        assert (
            http.get("/l/x", headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.1"}).status_code != 429
        )
    assert http.get("/l/x", headers={"X-Forwarded-For": "9.9.9.9, 203.0.113.1"}).status_code == 429
    assert http.get("/l/x", headers={"X-Forwarded-For": "203.0.113.2"}).status_code != 429
    services(app).links.engine.dispose()


def test_unreachable_store_falls_back_to_memory(env):
    """A Redis that is down must not take minting down: limits keep working per process."""
    app = create_app({**env, "LINKSVC_RATELIMIT_STORAGE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    _prepare(app)
    unique_prefix(app)
    api = make_api_user(app, "app", mint_limit="2 per minute")
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("linksvc.ratelimit").addHandler(handler)
    try:
        assert [api.mint(subject=f"s{i}").status_code for i in range(3)] == [201, 201, 429]
    finally:
        logging.getLogger("linksvc.ratelimit").removeHandler(handler)
    # The dead store was tried once, then left alone for a pause (not once per request).
    assert [r.getMessage() for r in records].count(
        "rate limit storage unavailable; counting in memory"
    ) == 1
    services(app).links.engine.dispose()


# -- real Redis: two app instances, one limit ------------------------------------------


def redis_client():
    import redis

    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        missing(f"Redis at {REDIS_URL}", f"{type(exc).__name__}: {exc}")
    return r


@pytest.fixture
def redis_pair(env) -> Iterator[tuple[Flask, Flask, str]]:
    """Two independent app instances (two workers, or two nodes) on one database and one Redis."""
    r = redis_client()
    shared = {
        **env,
        "LINKSVC_RATELIMIT_STORAGE_URL": REDIS_URL,
        "LINKSVC_PAGE_RATE_LIMIT": "4 per minute",
    }
    a, b = create_app(shared), create_app(shared)
    _prepare(a)
    prefix = unique_prefix(a)
    services(b).ratelimit.prefix = prefix
    yield a, b, prefix
    for key in r.scan_iter(match=f"*{prefix}*"):
        r.delete(key)
    for app in (a, b):
        services(app).links.engine.dispose()


def test_redis_mint_limit_shared_by_two_instances(redis_pair):
    a, b, prefix = redis_pair
    user_a = make_api_user(a, "shared", mint_limit="4 per minute")
    user_b = type(user_a)(b.test_client(), user_a.client, user_a.api_key)
    assert [user_a.mint(subject=f"s{i}").status_code for i in range(2)] == [201, 201]
    assert [user_b.mint(subject=f"t{i}").status_code for i in range(2)] == [201, 201]
    # Each instance alone has seen two mints; together they have used the limit.
    assert_limited_problem(user_b.mint(subject="x"), 60)
    assert_limited_problem(user_a.mint(subject="y"), 60)
    # The counters really are in Redis, under this test's prefix.
    keys = [k.decode() for k in redis_client().scan_iter(match=f"*{prefix}*")]
    assert any("/mint/" in k and user_a.client.id in k for k in keys), keys


def test_redis_subject_limit_shared_by_two_instances(redis_pair):
    a, b, prefix = redis_pair
    user_a = make_api_user(a, "shared", subject_limit="2 per minute")
    user_b = type(user_a)(b.test_client(), user_a.client, user_a.api_key)
    assert user_a.mint("password_reset", "user-1").status_code == 201
    assert user_b.mint("password_reset", "user-1").status_code == 201
    assert_limited_problem(user_a.mint("password_reset", "user-1"), 60)
    assert user_b.mint("password_reset", "user-2").status_code == 201
    # The subject is not readable in the store's keys.
    keys = [k.decode() for k in redis_client().scan_iter(match=f"*{prefix}*")]
    assert keys and not any("user-1" in k for k in keys)


def test_redis_page_limit_shared_by_two_instances(redis_pair):
    a, b, _ = redis_pair
    ha, hb = a.test_client(), b.test_client()
    assert [c.get("/l/x").status_code != 429 for c in (ha, hb, ha, hb)] == [True] * 4
    resp = hb.get("/l/x")
    assert resp.status_code == 429 and "Too many attempts" in resp.get_data(as_text=True)
    assert int(resp.headers["Retry-After"]) >= 1


def test_combined_windows(app):
    """`--mint-limit "100 per minute;2 per hour"`: the tightest window decides, and says when."""
    unique_prefix(app)
    api = make_api_user(app, "app", mint_limit="100 per minute;2 per hour")
    assert [api.mint(subject=f"s{i}").status_code for i in range(2)] == [201, 201]
    resp = api.mint(subject="s3")
    assert_limited_problem(resp, 3600)
    assert int(resp.headers["Retry-After"]) > 60


def test_redis_limit_holds_under_a_race_across_gunicorn_workers(env, tmp_path):
    """Real HTTP, two worker processes, twenty mints fired at once: exactly the limit get through."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.support.servers import start_gunicorn

    redis_client()
    env = {**env, "LINKSVC_RATELIMIT_STORAGE_URL": REDIS_URL}
    setup = create_app(env)
    _prepare(setup)
    # A fresh client id per run keys the counter, so parallel runs never share it.
    racer = make_api_user(setup, "racer", mint_limit="6 per minute")
    services(setup).links.engine.dispose()
    server = start_gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log")
    try:
        n = 20
        barrier = threading.Barrier(n)
        headers = racer.headers

        def one(i: int) -> int:
            with requests.Session() as s:
                barrier.wait()
                return s.post(
                    server.url + "/api/v1/links",
                    json={"purpose": "magic_link", "subject": f"u{i}"},
                    headers=headers,
                    timeout=30,
                ).status_code

        with ThreadPoolExecutor(max_workers=n) as pool:
            codes = list(pool.map(one, range(n)))
        assert sorted(codes) == [201] * 6 + [429] * 14, codes
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_limited_page_still_passes_through_the_app_hooks(page_app):
    """The 429 page carries the request id like every other answer."""
    http = page_app.test_client()
    for _ in range(3):
        http.get("/l/x")
    resp = http.get("/l/x", headers={"X-Request-Id": "trace-123"})
    assert resp.status_code == 429
    assert resp.headers["X-Request-Id"] == "trace-123"
    assert resp.headers["Content-Security-Policy"]


def test_local_moving_window_counts_the_last_window_and_forgets_idle_keys() -> None:
    from limits import parse

    from linksvc.web.ratelimit import LocalMovingWindow

    t = [1000.0]
    lim = LocalMovingWindow(clock=lambda: t[0])
    three = parse("3 per 10 seconds")
    assert [lim.hit(three, "a") for _ in range(4)] == [True, True, True, False]
    assert lim.hit(three, "b")  # another key counts apart
    stats = lim.get_window_stats(three, "a")
    assert stats.reset_time == 1010.0 and stats.remaining == 0
    t[0] += 9.9
    assert not lim.hit(three, "a")  # still inside the window of the first hit
    t[0] += 0.2
    # The three hits of t=1000 have left the window: three more, then full again.
    assert [lim.hit(three, "a") for _ in range(4)] == [True, True, True, False]
    t[0] += 60
    assert lim.hit(three, "c")  # every idle key of this window is dropped
    assert list(lim._windows[10]) == [(3, "c")]  # keyed by (amount, *identifiers)


def test_local_moving_window_keeps_only_the_hits_inside_the_window() -> None:
    from collections import deque

    from limits import parse

    from linksvc.web.ratelimit import LocalMovingWindow

    t = [1000.0]
    lim = LocalMovingWindow(clock=lambda: t[0])
    many = parse("1000 per 10 seconds")
    for _ in range(100):  # 100 hits over 25 s: only the last 10 s of them are kept
        assert lim.hit(many, "busy")
        t[0] += 0.25
    hits = lim._windows[10][(1000, "busy")]
    assert isinstance(hits, deque)  # past LIST_HITS: dropping the oldest is O(1)
    assert list(hits) == [1015 + i / 4 for i in range(40)]  # (1014.75, 1024.75]
    # Counting is unchanged: at t=1025 the window (1015, 1025] holds 39, so 961 more fit.
    assert sum(lim.hit(many, "busy") for _ in range(1000)) == 961


def test_local_moving_window_holds_a_key_hit_once_in_a_few_hundred_bytes() -> None:
    """One key per (client, subject, purpose): a worker minting for many subjects holds a
    key per subject for the subject window, so the size of one key is the memory bound."""
    import tracemalloc

    from limits import parse

    from linksvc.web.ratelimit import LocalMovingWindow

    lim = LocalMovingWindow()
    limit = parse("5 per 15 minutes")
    subjects = [f"{i:032x}" for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for subject in subjects:
            lim.hit(limit, "client", subject, "magic_link")
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(subjects)
    finally:
        tracemalloc.stop()
    assert per_key < 400, per_key  # a deque per key was about 1000 bytes
