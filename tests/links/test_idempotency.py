"""Idempotent minting: one ``Idempotency-Key`` of one client names at most one link.

Replays answer the same jti and claims with no second mail or supersede, another body is
refused, keys are per client and expire after 24 h by the clock, a failed mint gives its
key back, and concurrent requests with one key — real requests, real gunicorn workers,
SQLite and PostgreSQL — mint exactly one link.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
import sqlalchemy as sa

from linksvc.links import idempotency
from linksvc.services import services
from linksvc.store import db
from tests.support.apps import ApiUser
from tests.support.env import base_env
from tests.support.servers import prepare_instance, start_gunicorn


def _mint(api: ApiUser, key: str | None, **body: object):
    headers = dict(api.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = {"purpose": "magic_link", "subject": "user-42", **body}
    return api.http.post("/api/v1/links", json=payload, headers=headers)


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _links(app) -> int:
    with db.read(services(app).links.engine) as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.links)).scalar_one()


def test_same_key_same_body_answers_the_same_link(app, api):
    first = _mint(api, "k-1", data={"cart": 7})
    again = _mint(api, "k-1", data={"cart": 7})
    assert first.status_code == again.status_code == 201
    a, b = first.get_json(), again.get_json()
    assert a["jti"] == b["jti"] and _claims(a["token"]) == _claims(b["token"])
    assert {k: v for k, v in a.items() if k not in ("token", "url")} == {
        k: v for k, v in b.items() if k not in ("token", "url")
    }
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _links(app) == 1
    # Both strings name the one row: it is consumed once, whichever is presented.
    assert api.redeem(b["token"]).status_code == 200
    assert api.redeem(a["token"]).get_json()["code"] == "used"
    # A replay after consumption still names the link (and its token is dead).
    late = _mint(api, "k-1", data={"cart": 7}).get_json()
    assert late["jti"] == a["jti"] and api.redeem(late["token"]).get_json()["code"] == "used"


def test_member_order_and_explicit_nulls_are_the_same_body(api):
    a = _mint(api, "k-order", ttl=60, data={"x": 1}).get_json()
    headers = {**api.headers, "Idempotency-Key": "k-order", "Content-Type": "application/json"}
    raw = b'{"data": {"x": 1}, "ttl": 60, "redirect_uri": null, "subject": "user-42", "purpose": "magic_link"}'
    b = api.http.post("/api/v1/links", data=raw, headers=headers)
    assert b.status_code == 201 and b.get_json()["jti"] == a["jti"]


def test_another_body_is_refused(app, api):
    assert _mint(api, "k-2").status_code == 201
    for other in ({"subject": "user-43"}, {"ttl": 60}, {"data": {"a": 1}}):
        resp = _mint(api, "k-2", **other)
        assert resp.status_code == 422
        assert resp.mimetype == "application/problem+json"
        assert resp.get_json()["code"] == "idempotency_mismatch"
    assert _links(app) == 1


def test_without_a_key_every_mint_is_new(app, api):
    assert _mint(api, None).get_json()["jti"] != _mint(api, None).get_json()["jti"]
    assert _links(app) == 2


def test_keys_are_per_client(app, api, other_api):
    a = _mint(api, "shared-key").get_json()
    b = _mint(other_api, "shared-key").get_json()
    assert a["jti"] != b["jti"]
    assert _claims(b["token"])["aud"] == other_api.client.id
    # Another client's key with another body is not a mismatch: it is not the same key.
    assert _mint(other_api, "k-3", subject="user-9").status_code == 201
    assert _mint(api, "k-3").status_code == 201


@pytest.mark.parametrize(
    "key",
    ["", "a b", "x" * 256, "ключ", "k\x00", 'k"', "k,v", "k;v"],
    ids=["empty", "space", "too-long", "non-ascii", "nul", "quote", "comma", "semicolon"],
)
def test_malformed_keys_are_refused_with_a_stable_code(app, api, key):
    headers = {**api.headers}
    try:
        headers["Idempotency-Key"] = key
        resp = api.http.post(
            "/api/v1/links", json={"purpose": "magic_link", "subject": "u"}, headers=headers
        )
    except ValueError:  # the test client refuses to send a NUL byte in a header at all
        pytest.skip("the HTTP client cannot send this header")
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["code"] == "invalid_idempotency_key"
    assert _links(app) == 0


def test_longest_and_all_allowed_characters_work(api):
    for key in ("k" * 255, "AZaz09._:~+/=-", "0190f6a4-7c1b-7e2f-8a3d-5b6c7d8e9f00"):
        assert _mint(api, key).status_code == 201
        assert _mint(api, key).headers["Idempotent-Replayed"] == "true"


def test_key_is_stored_only_as_a_hash(app, api):
    _mint(api, "very-recognisable-key-0042")
    from tests.support.databases import dump_database

    dump = dump_database(app.config["LINKSVC"].database_url)
    assert "very-recognisable-key-0042" not in dump
    assert idempotency.key_hash("very-recognisable-key-0042") in dump


def test_the_stored_request_hash_cannot_be_checked_against_a_guessed_address(app, api):
    """A database dump must not confirm a recipient offline: the stored hash of a body is
    keyed, so hashing a guessed body (with a guessed address) does not reproduce it."""
    import hashlib
    import json

    body = {"purpose": "password_reset", "subject": "user-42", "email": "victim@example.com"}
    assert _mint(api, "k-pii", **body).status_code == 201
    with db.read(services(app).links.engine) as conn:
        stored = conn.execute(sa.select(db.idempotency_keys.c.request_hash)).scalar_one()
    guesses = set()
    for spelling in (body, {**body, "email": "victim@example.com".upper()}):
        for kwargs in ({}, {"separators": (",", ":")}):
            canonical = json.dumps(spelling, sort_keys=True, **kwargs).encode()
            guesses |= {
                hashlib.sha256(canonical).hexdigest(),
                hashlib.sha512(canonical).hexdigest(),
            }
    guesses.add(idempotency.legacy_request_hash(body))
    assert stored not in guesses
    assert "victim@example.com" not in str(stored)
    # The key still recognises its own body, and only its own.
    assert _mint(api, "k-pii", **body).headers["Idempotent-Replayed"] == "true"
    other = _mint(api, "k-pii", **{**body, "email": "other@example.com"})
    assert other.get_json()["code"] == "idempotency_mismatch"


def test_a_row_stored_before_the_hash_was_keyed_still_recognises_its_retry(app, api):
    """Rows written by the previous release hold the unkeyed hash; for their last hours
    (rows live 24 h) a retry with the same body is answered from them, not refused."""
    body = {"purpose": "magic_link", "subject": "user-42", "email": "someone@example.com"}
    first = _mint(api, "k-legacy", **body).get_json()
    t = db.idempotency_keys
    with db.write(services(app).links.engine) as conn:
        conn.execute(
            sa.update(t).values(
                request_hash=idempotency.legacy_request_hash(
                    {**body, "ttl": None, "redirect_uri": None}
                )
            )
        )
    again = _mint(api, "k-legacy", **body)
    assert again.status_code == 201 and again.get_json()["jti"] == first["jti"]
    assert _mint(api, "k-legacy", subject="user-43").get_json()["code"] == "idempotency_mismatch"


def test_a_refused_mint_gives_the_key_back(app, api):
    bad = _mint(api, "k-4", ttl=100_000)
    assert bad.status_code == 422 and bad.get_json()["code"] == "ttl_out_of_range"
    # The retry with the corrected body is not a mismatch: nothing was minted under the key.
    good = _mint(api, "k-4", ttl=60)
    assert good.status_code == 201 and "Idempotent-Replayed" not in good.headers


def test_replay_sends_no_second_mail_and_supersedes_nothing(app, api):
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    body = {"purpose": "password_reset", "email": "someone@example.com"}
    first = _mint(api, "k-5", **body).get_json()
    sent = sorted(outbox.iterdir())
    assert len(sent) == 1 and first["emailed"] is True
    again = _mint(api, "k-5", **body).get_json()
    assert again["jti"] == first["jti"] and again["emailed"] is True
    assert sorted(outbox.iterdir()) == sent
    # The replay did not supersede the link it names.
    assert api.status(first["jti"]).get_json()["state"] == "issued"
    assert api.redeem(again["token"], "password_reset").status_code == 200


def test_a_key_expires_after_24_hours(app, api):
    svc = services(app).links
    first = _mint(api, "k-6").get_json()
    real = svc.clock
    svc.clock = lambda: real() + idempotency.WINDOW_SECONDS + 1
    try:
        later = _mint(api, "k-6", subject="user-7")
    finally:
        svc.clock = real
    assert later.status_code == 201 and later.get_json()["jti"] != first["jti"]


def test_a_pending_claim_answers_in_progress_then_is_taken_over(app, api, monkeypatch):
    from linksvc.web import api as api_mod

    svc = services(app).links
    body = {"purpose": "magic_link", "subject": "user-42"}
    # A claim left pending (the worker that took it died before minting).
    idempotency.claim(
        svc.engine,
        client_id=api.client.id,
        key="k-7",
        body_hash=idempotency.request_hash({**body}, secret=app.config["LINKSVC"].secret_key),
        now=svc.now(),
    )
    monkeypatch.setattr(api_mod, "IDEMPOTENCY_WAIT_SECONDS", 0.1)
    busy = _mint(api, "k-7")
    assert busy.status_code == 409 and busy.get_json()["code"] == "idempotency_in_progress"
    assert busy.headers["Retry-After"] == "1"
    real = svc.clock
    svc.clock = lambda: real() + idempotency.PENDING_SECONDS + 1
    try:
        taken = _mint(api, "k-7")
    finally:
        svc.clock = real
    assert taken.status_code == 201 and _links(app) == 1


def test_purge_removes_old_keys_only(app, api):
    svc = services(app).links
    _mint(api, "old")
    now = svc.now()
    assert idempotency.purge(svc.engine, now=now) == 0
    assert idempotency.purge(svc.engine, now=now + idempotency.WINDOW_SECONDS + 10**4) == 1


# -- the race: real concurrent requests on real gunicorn workers ---------------------------

RACERS = 24


def _race_one_key(tmp_path: Path, database_url: str | None = None) -> None:
    env = base_env(tmp_path / "instance", database_url)
    creds = prepare_instance(env)
    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    try:
        for round_ in range(3):
            key = f"race-{round_}"
            headers = {"Authorization": f"Bearer {creds['api_key']}", "Idempotency-Key": key}
            payload = {"purpose": "password_reset", "subject": f"racer-{round_}"}
            barrier = threading.Barrier(RACERS)
            sessions = [requests.Session() for _ in range(RACERS)]

            def one(i: int) -> tuple[int, str | None, str | None]:
                barrier.wait()
                r = sessions[i].post(
                    f"{server.url}/api/v1/links", json=payload, headers=headers, timeout=30
                )
                j = r.json()
                return r.status_code, j.get("jti"), j.get("code")

            with ThreadPoolExecutor(max_workers=RACERS) as pool:
                results = list(pool.map(one, range(RACERS)))
            statuses = collections.Counter(s for s, _, _ in results)
            # Every racer got the link or was told to retry: none minted another.
            assert set(statuses) <= {201, 409}, results
            assert {c for s, _, c in results if s == 409} <= {"idempotency_in_progress"}
            jtis = {j for s, j, _ in results if s == 201}
            assert len(jtis) == 1, results
            state = requests.get(
                f"{server.url}/api/v1/links/{jtis.pop()}",
                headers={"Authorization": f"Bearer {creds['api_key']}"},
                timeout=10,
            ).json()
            assert state["state"] == "issued"  # no racer superseded it
        engine = sa.create_engine(env["LINKSVC_DATABASE_URL"])
        with engine.connect() as conn:
            minted = conn.execute(sa.text("SELECT count(*) FROM links")).scalar()
            superseded = conn.execute(
                sa.text("SELECT count(*) FROM links WHERE state <> 'issued'")
            ).scalar()
        engine.dispose()
        assert (minted, superseded) == (3, 0)
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.slow
def test_race_one_key_sqlite(tmp_path):
    _race_one_key(tmp_path)


@pytest.mark.slow
def test_race_one_key_postgresql(tmp_path, pg_url):
    _race_one_key(tmp_path, pg_url)


# -- sign-ins (PRODUCT §6) take the header too ---------------------------------------------


def _start(api: ApiUser, key: str, **body: object):
    payload = {
        "subject": "user-42",
        "email": "someone@example.com",
        "ip": "203.0.113.7",
        "user_agent": "Firefox/140",
        **body,
    }
    return api.http.post(
        "/api/v1/sign-ins", json=payload, headers={**api.headers, "Idempotency-Key": key}
    )


def test_a_sign_in_with_a_key_starts_once_and_mails_once(app, api):
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    first = _start(api, "si-1")
    assert first.status_code == 201, first.get_json()
    again = _start(api, "si-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(list(outbox.iterdir())) == 1 and _links(app) == 1
    mismatch = _start(api, "si-1", subject="user-43")
    assert mismatch.status_code == 422 and mismatch.get_json()["code"] == "idempotency_mismatch"
    # A key is the endpoint's own: the same key on a mint is another request.
    clash = _mint(api, "si-1")
    assert clash.status_code == 422 and clash.get_json()["code"] == "idempotency_mismatch"
    assert _start(api, "bad key").get_json()["code"] == "invalid_idempotency_key"


def test_a_short_links_replay_answers_a_url_that_works(app):
    """Only a handle's keyed hash is kept, so a replay cannot tell a random handle again: an
    idempotent mint's handle is derived from the key and the jti, and the replay derives it."""
    from linksvc.clients import registry as clients
    from linksvc.links import handles
    from tests.support.apps import make_api_user
    from tests.web.test_pages import open_page, press

    api = make_api_user(app, "shorty", link_format="short")
    a = _mint(api, "k-short").get_json()
    b = _mint(api, "k-short").get_json()
    assert a["jti"] == b["jti"] and a["url"] == b["url"]
    assert handles.decode(a["url"].rsplit("/l/", 1)[-1]) is not None
    other = _mint(api, "k-other").get_json()  # another key, another handle
    assert other["url"] != a["url"]
    browser = app.test_client()
    _, csrf = open_page(browser, b["url"])
    assert press(browser, b["url"], csrf).status_code == 303
    assert api.redeem(a["token"]).get_json()["code"] == "used"
    # Minted as a JWT link, replayed after the client chose short links: a JWT URL, working.
    jwt_first = _mint(api, "k-before").get_json()
    with db.write(services(app).links.engine) as conn:
        clients.update(conn, api.client.id, link_format="jwt")
    services(app).links.client_cache.clear()
    jwt_link = _mint(api, "k-jwt").get_json()
    with db.write(services(app).links.engine) as conn:
        clients.update(conn, api.client.id, link_format="short")
    services(app).links.client_cache.clear()
    replayed = _mint(api, "k-jwt").get_json()
    assert replayed["jti"] == jwt_link["jti"] and "." in replayed["url"].rsplit("/l/", 1)[-1]
    assert app.test_client().get("/l/" + replayed["url"].rsplit("/l/", 1)[-1]).status_code == 200
    assert _mint(api, "k-before").get_json()["url"] == jwt_first["url"]
