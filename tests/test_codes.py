"""One-time codes: exchanged once, for 60 s, by the link's own client only; stored as hashes;
one winner when exchanges race (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from linksvc import codes, db, migrate

from .test_pages import code_of, open_page, press


def exchange(api: Any, code: Any, **kw: Any) -> Any:
    return api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers, **kw)


def pressed(api: Any, app: Any, **mint: Any) -> tuple[dict[str, Any], str]:
    link = api.minted(**mint)
    browser = app.test_client()
    _, csrf = open_page(browser, link["token"])
    resp = press(browser, link["token"], csrf)
    assert resp.status_code == 303
    return link, code_of(resp.headers["Location"])


def test_exchange_once(api, app):
    link, code = pressed(api, app, purpose="password_reset", subject="user-9", data={"n": 1})
    first = exchange(api, code)
    assert first.status_code == 200
    assert first.get_json() == {
        "subject": "user-9",
        "purpose": "password_reset",
        "jti": link["jti"],
        "data": {"n": 1},
    }
    again = exchange(api, code)
    assert again.status_code == 409 and again.get_json()["code"] == "code_used"
    assert again.mimetype == "application/problem+json"
    events = [e["event"] for e in api.status(link["jti"]).get_json()["events"]]
    assert events.count("exchanged") == 1


def test_code_of_another_client_is_refused_and_not_burnt(api, other_api, app):
    _, code = pressed(api, app)
    stolen = exchange(other_api, code)
    assert stolen.status_code == 404 and stolen.get_json()["code"] == "invalid_code"
    # The rightful client still gets it: a leaked code cannot be used to lock the user out.
    assert exchange(api, code).status_code == 200


def test_expired_code(api, app):
    _, code = pressed(api, app)
    svc = app.extensions["linksvc"]
    t0 = svc.now()
    svc.clock = lambda: t0 + svc.settings.code_ttl
    late = exchange(api, code)
    assert late.status_code == 410 and late.get_json()["code"] == "code_expired"
    svc.clock = lambda: t0
    assert exchange(api, code).status_code == 200  # the refusal spent nothing (clock set back)


def test_invalid_codes_and_bodies(api, client):
    for bad in ("nope", "A" * 43, "A" * 129, "é" * 10):
        resp = exchange(api, bad)
        assert resp.status_code == 404 and resp.get_json()["code"] == "invalid_code", bad
    assert exchange(api, 12).status_code == 422
    assert (
        api.http.post("/api/v1/codes/exchange", json={}, headers=api.headers).get_json()["code"]
        == "missing_field"
    )
    assert (
        api.http.post(
            "/api/v1/codes/exchange", json={"code": "x", "jti": "y"}, headers=api.headers
        ).get_json()["code"]
        == "unknown_field"
    )
    assert api.http.post(
        "/api/v1/codes/exchange", data="code=x", headers=api.headers
    ).status_code in (400, 415)
    assert client.post("/api/v1/codes/exchange", json={"code": "x"}).status_code == 401


def test_only_hashes_are_stored(api, app):
    _, code = pressed(api, app)
    engine = app.extensions["linksvc"].engine
    with db.read(engine) as conn:
        rows = [dict(r) for r in conn.execute(sa.select(db.codes)).mappings()]
    assert len(rows) == 1
    assert rows[0]["code_hash"] == codes.hash_code(code)
    assert code not in repr(rows)
    assert rows[0]["expires_at"] - rows[0]["created_at"] == 60


def test_code_is_bound_to_link_and_browser():
    s = b"k" * 32
    assert codes.derive(s, "jti-1", "n1") == codes.derive(s, "jti-1", "n1")
    assert (
        len(
            {
                codes.derive(s, "jti-1", "n1"),
                codes.derive(s, "jti-2", "n1"),
                codes.derive(s, "jti-1", "n2"),
                codes.derive(b"j" * 32, "jti-1", "n1"),
            }
        )
        == 4
    )


def _race(engine: Any, n: int) -> list[str]:
    now = int(time.time())
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(db.links).values(
                jti="J" * 22,
                client_id="cl_a",
                purpose="magic_link",
                subject="s",
                kid="k",
                iat=now,
                exp=now + 300,
                state="consumed",
            )
        )
    codes.store(engine, "the-code", jti="J" * 22, client_id="cl_a", now=now, ttl=60)
    barrier = threading.Barrier(n)

    def one(_: int) -> str:
        barrier.wait()
        try:
            codes.exchange(engine, "the-code", client_id="cl_a", now=now)
            return "ok"
        except codes.CodeError as exc:
            return exc.reason

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_exchange_race_sqlite(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'race.db'}")
    migrate.upgrade(engine)
    results = _race(engine, 12)
    assert results.count("ok") == 1 and results.count("code_used") == 11
    engine.dispose()


def test_exchange_race_postgresql(pg_url):
    engine = db.make_engine(pg_url, pool_size=12)
    migrate.upgrade(engine)
    results = _race(engine, 12)
    assert results.count("ok") == 1 and results.count("code_used") == 11
    engine.dispose()


def test_double_press_race_one_consumption(api, app):
    """Presses of one browser at the same instant: one consumes, all reach the same code."""
    _double_press_race(api, app)


def test_double_press_race_postgresql(pg_url, tmp_path):
    from linksvc import create_app

    from .conftest import _prepare, make_api_user
    from .support import base_env

    app = create_app(base_env(tmp_path / "instance", database_url=pg_url))
    migrate.upgrade(app.extensions["linksvc"].engine)
    _prepare(app)
    try:
        _double_press_race(make_api_user(app), app)
    finally:
        app.extensions["linksvc"].engine.dispose()


def _double_press_race(api: Any, app: Any) -> None:
    link = api.minted()
    browser = app.test_client()
    _, csrf = open_page(browser, link["token"])
    cookie = browser.get_cookie("linksvc_press", path="/l/")
    barrier = threading.Barrier(4)

    def one(_: int) -> Any:
        c = app.test_client()
        c.set_cookie("linksvc_press", cookie.value, path="/l/")
        barrier.wait()
        return press(c, link["token"], csrf)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(4)))
    assert {r.status_code for r in results} == {303}
    assert len({r.headers["Location"] for r in results}) == 1
    events = [e["event"] for e in api.status(link["jti"]).get_json()["events"]]
    assert events.count("consumed") == 1


def test_same_press_across_a_second_boundary(api, app):
    """Two presses racing: the loser may have read the clock a second before the winner did."""
    link = api.minted()
    svc = app.extensions["linksvc"]
    t0 = svc.now()
    first = codes.complete(svc, link["token"], nonce="n" * 43, now=t0 + 1)
    second = codes.complete(svc, link["token"], nonce="n" * 43, now=t0)
    assert second.repeated and second.code == first.code is not None
    other = None
    try:
        codes.complete(svc, link["token"], nonce="m" * 43, now=t0 + 1)
    except Exception as exc:
        other = exc
    assert getattr(other, "reason", None) == "used"
