"""One-time codes: exchanged once, for 60 s, by the link's own client only; stored as hashes;
one winner when exchanges race (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from linksvc.links import codes
from linksvc.services import services
from linksvc.store import db, migrate
from tests.web.test_pages import code_of, open_page, press


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
    svc = services(app).links
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
    engine = services(app).links.engine
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
            sa.insert(db.clients).values(
                id="cl_a",
                name="a",
                display_name="A",
                api_key_hash="h" * 64,
                purposes='["magic_link"]',
                redirect_uris="[]",
                download_prefixes="[]",
                created_at=now,
            )
        )
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
    from tests.support.apps import _prepare, make_api_user
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path / "instance", database_url=pg_url))
    migrate.upgrade(services(app).links.engine)
    _prepare(app)
    try:
        _double_press_race(make_api_user(app), app)
    finally:
        services(app).links.engine.dispose()


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
    svc = services(app).links
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


# -- codes voided by revocations (issue 17 item 3) -------------------------------------


def test_subject_revocation_voids_a_code_not_yet_exchanged(api, app):
    _, code = pressed(api, app, purpose="magic_link", subject="user-5")
    _, reset_code = pressed(api, app, purpose="password_reset", subject="user-5")
    _, other_code = pressed(api, app, purpose="magic_link", subject="user-6")
    resp = api.http.post(
        "/api/v1/subjects/user-5/revoke", json={"purposes": ["magic_link"]}, headers=api.headers
    )
    assert resp.status_code == 200
    voided = exchange(api, code)
    assert voided.status_code == 410 and voided.get_json()["code"] == "code_revoked"
    # Other purposes (not named) and other subjects are untouched.
    assert exchange(api, reset_code).status_code == 200
    assert exchange(api, other_code).status_code == 200
    # A spent code stays spent (409), not "revoked", whatever comes after.
    api.http.post("/api/v1/subjects/user-6/revoke", headers=api.headers)
    assert exchange(api, other_code).get_json()["code"] == "code_used"


def test_client_disable_voids_codes_even_after_enabling_again(api, app, runner):
    _, code = pressed(api, app)
    assert runner.invoke(args=["clients", "disable", api.client.id]).exit_code == 0
    assert runner.invoke(args=["clients", "enable", api.client.id]).exit_code == 0
    resp = exchange(api, code)
    assert resp.status_code == 410 and resp.get_json()["code"] == "code_revoked"


def test_client_disabled_directly_in_the_database_refuses_its_codes(api, app):
    """The exchange checks the client in its own statement: no cached client is trusted."""
    _, code = pressed(api, app)
    svc = services(app).links
    api.http.get("/api/v1/links/" + "A" * 22, headers=api.headers)  # the key is now cached
    with db.write(svc.engine) as conn:
        conn.execute(sa.update(db.clients).values(disabled=True))
    resp = exchange(api, code)
    assert resp.status_code == 410 and resp.get_json()["code"] == "code_revoked"


def test_signing_key_revocation_voids_its_codes(api, app, runner):
    link, code = pressed(api, app)
    with db.read(services(app).links.engine) as conn:
        kid = conn.execute(sa.select(db.links.c.kid).where(db.links.c.jti == link["jti"])).scalar()
    result = runner.invoke(args=["keys", "revoke", kid, "--yes"])
    assert result.exit_code == 0, result.output
    resp = exchange(api, code)
    assert resp.status_code == 410 and resp.get_json()["code"] == "code_revoked"


PRESSERS = 6
# How long the revocation waits after the release, per round. A revocation is one UPDATE
# while a press checks its token and form first, so released together the revocation wins
# nearly every time; the later rounds give the presses a head start, so that both orders,
# and the ones in between, are tried.
REVOKE_DELAYS_MS = (0, 2, 4, 8, 12, 16, 24, 32)


def _press_revoke_race(tmp_path, database_url=None):
    """Through gunicorn: ``PRESSERS`` browsers press their link of one subject while the
    application revokes that subject, all released at once (the revocation a little later
    in each round, ``REVOKE_DELAYS_MS``). Afterwards no code that any
    press produced may be exchanged: the press either lost (its link was revoked) or its
    code was voided."""
    import re

    import requests

    from tests.support.env import base_env
    from tests.support.servers import prepare_instance, start_gunicorn

    env = base_env(tmp_path / "instance", database_url, LINKSVC_PAGE_RATE_LIMIT="100000 per minute")
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    # A worker for every request of a round, so that none of them waits for a free worker.
    server = start_gunicorn(env, workers=PRESSERS + 1, log_path=tmp_path / "server.log")
    outcomes: list[str] = []
    try:
        for round_, delay_ms in enumerate(REVOKE_DELAYS_MS):
            subject = f"suspended-{round_}"
            browsers = []
            for _ in range(PRESSERS):
                link = requests.post(
                    f"{server.url}/api/v1/links",
                    json={"purpose": "magic_link", "subject": subject},
                    headers=headers,
                    timeout=10,
                ).json()
                s = requests.Session()
                page = s.get(f"{server.url}/l/{link['token']}", timeout=10)
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
                browsers.append((s, link["token"], csrf))
            barrier = threading.Barrier(PRESSERS + 1)

            def one(i: int) -> Any:
                barrier.wait()
                if i == PRESSERS:
                    time.sleep(delay_ms / 1000)
                    return requests.post(
                        f"{server.url}/api/v1/subjects/{subject}/revoke",
                        headers=headers,
                        timeout=30,
                    )
                s, token, csrf = browsers[i]
                return s.post(
                    f"{server.url}/l/{token}",
                    data={"csrf": csrf},
                    allow_redirects=False,
                    timeout=30,
                )

            with ThreadPoolExecutor(max_workers=PRESSERS + 1) as pool:
                answers = list(pool.map(one, range(PRESSERS + 1)))
            assert answers[-1].status_code == 200
            for resp in answers[:-1]:
                if resp.status_code == 303:
                    code = code_of(resp.headers["Location"])
                    done = requests.post(
                        f"{server.url}/api/v1/codes/exchange",
                        json={"code": code},
                        headers=headers,
                        timeout=10,
                    )
                    outcomes.append(f"{done.status_code} {done.json().get('code', 'exchanged')}")
                else:
                    assert resp.status_code == 410, resp.status_code  # the link was revoked
                    outcomes.append("press refused")
        log = server.log()
    finally:
        server.stop()
    return outcomes, log


def _assert_no_code_survived(outcomes, log):
    assert set(outcomes) <= {"410 code_revoked", "press refused"}, outcomes
    # The race was real: some presses got in before the revocation and made a code.
    assert "410 code_revoked" in outcomes, outcomes
    assert "Traceback" not in log


def test_press_revoke_race_sqlite(tmp_path):
    _assert_no_code_survived(*_press_revoke_race(tmp_path))


def test_press_revoke_race_postgresql(tmp_path, pg_url):
    _assert_no_code_survived(*_press_revoke_race(tmp_path, pg_url))


# -- a flow bound to the browser that asked (PKCE-style, S256) ---------------------------

VERIFIER = "v" * 20 + "-._~" + "V" * 19  # 43 characters, every kind RFC 7636 allows
OTHER_VERIFIER = "w" * 43


def bound_exchange(api: Any, code: str, verifier: str | None) -> Any:
    body = {"code": code} if verifier is None else {"code": code, "code_verifier": verifier}
    return api.http.post("/api/v1/codes/exchange", json=body, headers=api.headers)


def test_challenge_is_s256_of_the_verifier():
    # RFC 7636, appendix B.
    assert (
        codes.challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_bound_code_exchanges_with_its_verifier_only(api, app):
    link, code = pressed(api, app, code_challenge=codes.challenge_of(VERIFIER))
    assert "code_challenge" not in link and codes.challenge_of(VERIFIER) not in str(link)
    ok = bound_exchange(api, code, VERIFIER)
    assert ok.status_code == 200 and ok.get_json()["jti"] == link["jti"]
    assert bound_exchange(api, code, VERIFIER).get_json()["code"] == "code_used"


def test_attackers_code_in_a_victims_session_is_refused_and_spent(api, app):
    """Login CSRF: the attacker's code, carried into a browser that started a flow of its
    own (another verifier) or none at all, signs nobody in — and never works again."""
    for presented in (OTHER_VERIFIER, None):
        link, code = pressed(
            api, app, subject="attacker", code_challenge=codes.challenge_of(VERIFIER)
        )
        refused = bound_exchange(api, code, presented)
        assert refused.status_code == 422 and refused.get_json()["field"] == "code_verifier"
        expected = "code_verifier_mismatch" if presented else "code_verifier_required"
        assert refused.get_json()["code"] == expected
        assert "attacker" not in refused.get_data(as_text=True)
        # Spent: not even the attacker's own verifier gets it back now.
        again = bound_exchange(api, code, VERIFIER)
        assert again.status_code == 410 and again.get_json()["code"] == "code_revoked"
        events = api.status(link["jti"]).get_json()["events"]
        assert {"event": "rejected", "reason": expected, "via": "code"} in [
            {k: e[k] for k in ("event", "reason", "via")} for e in events
        ]
        assert "exchanged" not in [e["event"] for e in events]


def test_verifier_for_an_unbound_flow_is_refused(api, app):
    """A downgrade: an unbound code (a flow started without a challenge) presented in a
    session that holds a verifier is not this session's flow."""
    _, code = pressed(api, app)
    refused = bound_exchange(api, code, VERIFIER)
    assert refused.status_code == 422 and refused.get_json()["code"] == "code_verifier_mismatch"
    assert bound_exchange(api, code, None).get_json()["code"] == "code_revoked"


def test_unbound_flows_still_exchange_without_a_verifier(api, app):
    _, code = pressed(api, app)
    assert bound_exchange(api, code, None).status_code == 200


def test_malformed_challenges_and_verifiers_are_refused_before_anything(api, app):
    for bad in ("short", "=" * 43, codes.challenge_of(VERIFIER) + "A", 43):
        resp = api.mint(code_challenge=bad)
        assert resp.status_code == 422, bad
        assert resp.get_json()["field"] == "code_challenge"
    dl = api.mint("download", download={"key": "x"}, code_challenge=codes.challenge_of(VERIFIER))
    assert dl.status_code == 422 and dl.get_json()["field"] == "code_challenge"
    _, code = pressed(api, app, code_challenge=codes.challenge_of(VERIFIER))
    for bad in ("x" * 42, "x" * 129, "x" * 42 + "+", "é" * 43):
        resp = bound_exchange(api, code, bad)
        assert resp.status_code == 422 and resp.get_json()["code"] == "invalid_field", bad
    # A malformed verifier is refused as a bad request, before the code is looked at.
    assert bound_exchange(api, code, VERIFIER).status_code == 200


def test_bound_exchange_postgresql(pg_url, tmp_path):
    from linksvc import create_app
    from tests.support.apps import _prepare, make_api_user
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path / "instance", database_url=pg_url))
    migrate.upgrade(services(app).links.engine)
    _prepare(app)
    try:
        api = make_api_user(app)
        challenge = codes.challenge_of(VERIFIER)
        _, code = pressed(api, app, code_challenge=challenge)
        assert bound_exchange(api, code, OTHER_VERIFIER).get_json()["code"] == (
            "code_verifier_mismatch"
        )
        assert bound_exchange(api, code, VERIFIER).get_json()["code"] == "code_revoked"
        _, code = pressed(api, app, code_challenge=challenge)
        assert bound_exchange(api, code, VERIFIER).status_code == 200
    finally:
        services(app).links.engine.dispose()
