"""The internal API: the happy path, and bad input to every call answered with 4xx problem+json."""

import json

import pytest

from linksvc.services import services
from tests.support.apps import REDIRECT


def test_mint_redeem_replay_status(api):
    resp = api.mint("magic_link", "user-42", data={"next": "/inbox"})
    assert resp.status_code == 201
    link = resp.get_json()
    assert set(link) >= {"url", "token", "jti", "purpose", "expires_at"}
    assert link["url"] == f"http://127.0.0.1:8000/l/{link['token']}"
    assert link["purpose"] == "magic_link"

    first = api.redeem(link["token"])
    assert first.status_code == 200
    assert first.get_json() | {"redeemed_at": None} == {
        "subject": "user-42",
        "purpose": "magic_link",
        "jti": link["jti"],
        "data": {"next": "/inbox"},
        "redeemed_at": None,
    }

    second = api.redeem(link["token"])
    assert second.status_code == 409
    assert second.get_json()["code"] == "used"

    status = api.status(link["jti"]).get_json()
    assert status["state"] == "consumed"
    assert status["state_changed_at"] == first.get_json()["redeemed_at"]
    assert [e["event"] for e in status["events"]] == ["minted", "consumed", "rejected"]
    assert status["events"][-1]["reason"] == "used"


def test_download_url_shape_and_ttl(api):
    link = api.minted("password_reset", ttl=120)
    assert "/l/" in link["url"]
    status = api.status(link["jti"]).get_json()
    from datetime import datetime

    issued = datetime.fromisoformat(status["issued_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(status["expires_at"].replace("Z", "+00:00"))
    assert (expires - issued).total_seconds() == 120


def test_verify_does_not_consume(api):
    link = api.minted()
    for _ in range(3):
        resp = api.verify(link["token"])
        assert resp.status_code == 200
        assert resp.get_json()["state"] == "issued"
        assert resp.get_json()["claims"]["sub"] == "user-42"
    assert api.redeem(link["token"]).status_code == 200


def test_client_sees_only_its_own_links(api, other_api):
    link = api.minted()
    assert other_api.status(link["jti"]).status_code == 404
    assert (
        other_api.http.delete(f"/api/v1/links/{link['jti']}", headers=other_api.headers).status_code
        == 404
    )
    assert api.status(link["jti"]).get_json()["state"] == "issued"


def test_revoke_one_is_idempotent_and_refuses_consumed(api):
    link = api.minted()
    url = f"/api/v1/links/{link['jti']}"
    assert api.http.delete(url, headers=api.headers).get_json() == {
        "jti": link["jti"],
        "state": "revoked",
        "revoked": 1,
    }
    assert api.http.delete(url, headers=api.headers).get_json()["revoked"] == 0
    used = api.minted()
    api.redeem(used["token"])
    resp = api.http.delete(f"/api/v1/links/{used['jti']}", headers=api.headers)
    assert resp.status_code == 409 and resp.get_json()["code"] == "used"


def test_revoke_subject(api):
    a = api.minted("magic_link", "user-7")
    b = api.minted("password_reset", "user-7")
    other = api.minted("magic_link", "user-8")
    resp = api.http.post(
        "/api/v1/subjects/user-7/revoke", json={"purposes": ["magic_link"]}, headers=api.headers
    )
    assert resp.get_json()["revoked"] == 1
    resp = api.http.post("/api/v1/subjects/user-7/revoke", headers=api.headers)
    assert resp.get_json()["revoked"] == 1
    assert api.redeem(a["token"]).get_json()["code"] == "revoked"
    assert api.redeem(b["token"], "password_reset").get_json()["code"] == "revoked"
    assert api.redeem(other["token"]).status_code == 200


def test_mint_rules(api):
    assert api.mint(ttl=301).get_json()["code"] == "ttl_out_of_range"
    assert api.mint(ttl=0).get_json()["code"] == "ttl_out_of_range"
    resp = api.mint(redirect_uri="https://evil.example/cb")
    assert resp.status_code == 403 and resp.get_json()["code"] == "redirect_uri_not_allowed"
    resp = api.mint(redirect_uri=REDIRECT + "/../x")
    assert resp.status_code == 403
    assert api.mint(subject="alice@example.com").get_json()["code"] == "subject_looks_like_pii"
    assert api.mint(subject="").status_code == 422
    assert api.mint(subject="x" * 256).status_code == 422
    assert api.mint(data={"x": "y" * 5000}).get_json()["code"] == "data_too_large"
    assert api.mint("download", download={"key": "x"}, redirect_uri=REDIRECT).status_code == 422


def test_purpose_not_allowed(app):
    from tests.support.apps import make_api_user

    limited = make_api_user(app, "limited", purposes=["magic_link"])
    resp = limited.mint("password_reset")
    assert resp.status_code == 403 and resp.get_json()["code"] == "purpose_not_allowed"


def test_disabled_client_is_locked_out(app, api, runner):
    link = api.minted()
    result = runner.invoke(args=["clients", "disable", "acme"])
    assert result.exit_code == 0, result.output
    assert api.redeem(link["token"]).status_code == 401


# -- bad input: every call, never a 5xx ---------------------------------------------------

CALLS = [
    ("post", "/api/v1/links"),
    ("post", "/api/v1/links/verify"),
    ("post", "/api/v1/links/redeem"),
    ("get", "/api/v1/links/abc"),
    ("delete", "/api/v1/links/abc"),
    ("post", "/api/v1/subjects/user-1/revoke"),
]
BODY_CALLS = [c for c in CALLS if c[0] == "post" and "subjects" not in c[1]]


def _problem(resp, status, code=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status and isinstance(body["code"], str) and body["title"]
    if code:
        assert body["code"] == code
    return body


@pytest.mark.parametrize("method,path", CALLS)
@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer lsk_wrong", "Basic abc", "bearer  "])
def test_missing_or_bad_api_key(client, api, method, path, auth):
    headers = {"Authorization": auth} if auth else {}
    resp = getattr(client, method)(path, json={}, headers=headers)
    _problem(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path", BODY_CALLS)
def test_no_body(api, method, path):
    _problem(getattr(api.http, method)(path, headers=api.headers), 400, "body_required")


@pytest.mark.parametrize("method,path", BODY_CALLS)
def test_not_json(api, method, path):
    resp = getattr(api.http, method)(
        path, data="{nope", headers={**api.headers, "Content-Type": "application/json"}
    )
    _problem(resp, 400, "invalid_json")


@pytest.mark.parametrize("method,path", BODY_CALLS)
@pytest.mark.parametrize("body", ["[]", '"x"', "1", "null"])
def test_body_not_an_object(api, method, path, body):
    resp = getattr(api.http, method)(
        path, data=body, headers={**api.headers, "Content-Type": "application/json"}
    )
    _problem(resp, 400)


@pytest.mark.parametrize("method,path", BODY_CALLS)
def test_duplicate_members_and_invalid_utf8(api, method, path):
    h = {**api.headers, "Content-Type": "application/json"}
    _problem(
        getattr(api.http, method)(
            path, data='{"purpose":"magic_link","purpose":"download"}', headers=h
        ),
        400,
        "invalid_json",
    )
    _problem(
        getattr(api.http, method)(path, data=b'{"subject":"\xff"}', headers=h), 400, "invalid_json"
    )


@pytest.mark.parametrize("method,path", BODY_CALLS)
@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type(api, method, path, ctype):
    resp = getattr(api.http, method)(
        path, data='{"a":1}', headers={**api.headers, "Content-Type": ctype}
    )
    _problem(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize("method,path", [*BODY_CALLS, ("post", "/api/v1/subjects/u/revoke")])
def test_ten_mebibyte_body(api, method, path):
    big = b'{"x":"' + b"a" * (10 * 1024 * 1024) + b'"}'
    resp = getattr(api.http, method)(
        path, data=big, headers={**api.headers, "Content-Type": "application/json"}
    )
    _problem(resp, 413, "body_too_large")


@pytest.mark.parametrize("method,path", BODY_CALLS)
def test_unknown_field(api, method, path):
    known = (
        {"purpose": "magic_link", "subject": "u"}
        if path.endswith("/links")
        else {"purpose": "magic_link", "token": "t"}
    )
    resp = getattr(api.http, method)(path, json={**known, "admin": True}, headers=api.headers)
    body = _problem(resp, 422, "unknown_field")
    assert body["field"] == "admin"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"purpose": 1, "subject": "u"}, "purpose"),
        ({"purpose": "magic_link", "subject": 5}, "subject"),
        ({"purpose": "magic_link", "subject": "u", "ttl": "60"}, "ttl"),
        ({"purpose": "magic_link", "subject": "u", "ttl": 60.5}, "ttl"),
        ({"purpose": "magic_link", "subject": "u", "ttl": True}, "ttl"),
        ({"purpose": "magic_link", "subject": "u", "redirect_uri": ["x"]}, "redirect_uri"),
        ({"purpose": "download", "subject": "u", "download": "key"}, "download"),
        ({"purpose": "magic_link", "subject": "u", "confirm": "yes"}, "confirm"),
        ({"purpose": "sudo", "subject": "u"}, "purpose"),
        ({"subject": "u"}, "purpose"),
        ({"purpose": "magic_link"}, "subject"),
    ],
)
def test_mint_mistyped_fields(api, body, field):
    resp = api.http.post("/api/v1/links", json=body, headers=api.headers)
    assert _problem(resp, 422)["field"] == field


@pytest.mark.parametrize("path", ["/api/v1/links/verify", "/api/v1/links/redeem"])
@pytest.mark.parametrize(
    "body",
    [
        {"token": 5, "purpose": "magic_link"},
        {"token": "x"},
        {"purpose": "magic_link"},
        {"token": "x", "purpose": "root"},
        {"token": None, "purpose": "magic_link"},
    ],
)
def test_token_call_mistyped_fields(api, path, body):
    _problem(api.http.post(path, json=body, headers=api.headers), 422)


@pytest.mark.parametrize(
    "body",
    [
        '{"purposes": "magic_link"}',
        '{"purposes": ["bogus"]}',
        '{"purposes": []}',
        '{"everything": true}',
    ],
)
def test_revoke_subject_bad_body(api, body):
    resp = api.http.post(
        "/api/v1/subjects/u/revoke",
        data=body,
        headers={**api.headers, "Content-Type": "application/json"},
    )
    _problem(resp, 422)


def test_unknown_link_and_route(api):
    _problem(api.status("A" * 22), 404, "unknown_link")
    _problem(api.status("x" * 500), 404, "unknown_link")
    _problem(api.http.get("/api/v1/nothing", headers=api.headers), 404)
    _problem(api.http.put("/api/v1/links", headers=api.headers), 405)


def test_every_api_answer_has_security_headers(api):
    for resp in (api.mint(), api.redeem("x"), api.http.get("/api/v1/links/x")):
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_health_and_jwks(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "service": "linksvc"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    jwks = client.get("/.well-known/jwks.json")
    assert "max-age" in jwks.headers["Cache-Control"]
    keys = jwks.get_json()["keys"]
    assert len(keys) == 2 and all(k["use"] == "sig" and k["alg"] == "ES256" for k in keys)
    for k in keys:
        assert not set(k) & {"d", "p", "q", "dp", "dq", "qi", "k"}


def test_readyz_fails_without_database(tmp_path):
    from linksvc import create_app
    from tests.support.env import base_env

    app = create_app(
        base_env(tmp_path, database_url=f"sqlite:///{tmp_path}/missing/dir/../../nope/x.db")
    )
    svc = services(app).links
    svc.engine.dispose()
    import sqlalchemy as sa

    svc.engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["code"] == "database_unavailable"


def test_api_key_lookup_without_database_is_503_with_retry_after(tmp_path):
    """With no database (a failover in progress) even the API-key lookup answers a 503 that
    tells the caller when to come back — the failover test met it without Retry-After."""
    import sqlalchemy as sa

    from linksvc import create_app
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path))
    svc = services(app).links
    svc.engine.dispose()
    svc.engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    resp = app.test_client().post(
        "/api/v1/links/redeem",
        json={"token": "x", "purpose": "magic_link"},
        headers={"Authorization": "Bearer lsk_not-looked-up-yet"},
    )
    assert resp.status_code == 503 and resp.get_json()["code"] == "unavailable"
    assert resp.headers["Retry-After"] == "5"


def test_no_key_yet_is_503_not_500(tmp_path, migrated_sqlite):
    import shutil

    from linksvc import create_app
    from tests.support.apps import make_api_user
    from tests.support.env import base_env

    shutil.copy(migrated_sqlite, tmp_path / "linksvc.db")
    app = create_app(base_env(tmp_path))
    user = make_api_user(app)
    resp = user.mint()
    assert resp.status_code == 503 and "init-db" in resp.get_json()["detail"]
    json.dumps(resp.get_json())


def test_path_parameters_never_reach_postgresql_malformed(pg_url, tmp_path):
    """A NUL byte in a jti or subject path parameter is refused before the database, which
    would otherwise raise (PostgreSQL text cannot hold NUL) — on the real server."""
    from linksvc import create_app
    from linksvc.links import keys
    from linksvc.store import db, migrate
    from tests.support.apps import make_api_user
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path, pg_url))
    svc = services(app).links
    migrate.upgrade(svc.engine)
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, svc.now())
    user = make_api_user(app)
    try:
        link = user.minted()
        for jti in ("%00", "a%00b", "x" * 300, "%E2%98%83"):
            assert (
                user.http.get(f"/api/v1/links/{jti}", headers=user.headers).get_json()["code"]
                == "unknown_link"
            )
            assert user.http.delete(f"/api/v1/links/{jti}", headers=user.headers).status_code == 404
        for subject in ("%00", "a%20b", "x" * 300):
            resp = user.http.post(f"/api/v1/subjects/{subject}/revoke", headers=user.headers)
            assert resp.status_code == 422 and resp.get_json()["field"] == "subject"
        assert user.status(link["jti"]).get_json()["state"] == "issued"
    finally:
        svc.engine.dispose()


@pytest.mark.parametrize(
    "subject, path",
    [
        ("tenant/42", "tenant%2F42"),
        ("tenant/42", "tenant/42"),
        ("a//b", "a%2F%2Fb"),
        ("a//b", "a//b"),
        ("team/", "team%2F"),
        ("x%2Fy", "x%252Fy"),
        ("q?x#y", "q%3Fx%23y"),
    ],
)
def test_every_mintable_subject_is_revocable_by_subject(api, subject, path):
    """Issue 17 item 2: a subject with '/' (or anything else the mint accepts) is
    addressable in the subject routes, so sign-out-everywhere reaches it."""
    link = api.minted("magic_link", subject)
    other = api.minted("magic_link", subject.replace("/", "-") + "-other")
    # The inventory follows the same rule: the subject's own links, not a neighbour's.
    listed = api.http.get(f"/api/v1/subjects/{path}/links", headers=api.headers)
    assert listed.status_code == 200, listed.get_json()
    assert [x["jti"] for x in listed.get_json()["links"]] == [link["jti"]]
    resp = api.http.post(f"/api/v1/subjects/{path}/revoke", headers=api.headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"subject": subject, "revoked": 1}
    assert api.status(link["jti"]).get_json()["state"] == "revoked"
    assert api.status(other["jti"]).get_json()["state"] == "issued"


def test_mint_refuses_a_subject_no_route_could_address(api):
    resp = api.mint("magic_link", "/leading-slash")
    assert resp.status_code == 422 and resp.get_json()["field"] == "subject"


@pytest.mark.parametrize(
    "subject",
    [
        "victim%40example.com",
        "victim%2540example.com",
        "victim@example.com@x",
        "victim@localhost",
        "tenant:victim@example.com",
        "VICTIM@EXAMPLE.COM",
        "victim%EF%BC%A0example.com",  # full-width at sign, percent-encoded
        "victim@[127.0.0.1]",
        "a.b+tag@mail",
    ],
)
def test_subject_guard_sees_through_encodings(api, subject):
    """Issue 17 item 8: the e-mail-looking-subject guard works after percent-decoding."""
    resp = api.mint(subject=subject)
    assert resp.status_code == 422 and resp.get_json()["code"] == "subject_looks_like_pii", subject


@pytest.mark.parametrize(
    "subject",
    [
        "user-42",
        "8f14e45f-ceea-467f-a0e6-0bd6c2b4c7a1",
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "google-oauth2|104455023344776655443",
        "tenant/42",
        "@handle",
        "x%2Fy",
        "100%",
        "a.b.c",
        "acct:42",
    ],
)
def test_subject_guard_accepts_opaque_ids(api, subject):
    assert api.mint(subject=subject).status_code == 201, subject


@pytest.mark.parametrize("method,path", BODY_CALLS)
def test_body_shorter_than_its_content_length(api, method, path):
    """A body cut off before its declared length is refused, even when the part that
    arrived is a valid request of its own: no link is minted from half a request."""
    import io

    body = b'{"purpose":"magic_link","subject":"u"}'
    resp = getattr(api.http, method)(
        path,
        headers={**api.headers, "Content-Type": "application/json"},
        environ_overrides={"CONTENT_LENGTH": str(len(body) + 50), "wsgi.input": io.BytesIO(body)},
    )
    _problem(resp, 400, "invalid_json")


# -- a body without a length (Transfer-Encoding: chunked) ----------------------------------

#: Every call of the API that reads a JSON body.
JSON_BODY_CALLS = [
    "/api/v1/links",
    "/api/v1/links/verify",
    "/api/v1/links/redeem",
    "/api/v1/subjects/user-1/revoke",
    "/api/v1/codes/exchange",
    "/api/v1/sign-ins",
]
BIG_JSON = b'{"x":"' + b"a" * (200 * 1024) + b'"}'


def _chunked(api, path, body: bytes):
    """A body as gunicorn hands over a chunked one: no CONTENT_LENGTH, a stream the server
    ends itself (wsgi.input_terminated)."""
    import io

    return api.http.post(
        path,
        headers={
            **api.headers,
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("path", JSON_BODY_CALLS)
def test_a_large_chunked_body_is_too_large_like_a_declared_one(app, api, path):
    assert app.url_map.bind("").match(path, method="POST")  # every path is routed
    declared = api.http.post(
        path, data=BIG_JSON, headers={**api.headers, "Content-Type": "application/json"}
    )
    _problem(declared, 413, "body_too_large")
    _problem(_chunked(api, path, BIG_JSON), 413, "body_too_large")


def test_a_chunked_body_up_to_the_limit_is_read_whole(app, api):
    limit = app.config["MAX_CONTENT_LENGTH"]
    head = b'{"purpose":"magic_link","subject":"user-1","data":"'
    fits = head + b"a" * (limit - len(head) - 2) + b'"}'
    assert len(fits) == limit
    resp = _chunked(api, "/api/v1/links", fits)
    # Read whole and parsed: refused for the size of its data, not of the body.
    assert resp.get_json()["code"] == "data_too_large", resp.get_json()
    small = _chunked(api, "/api/v1/links", b'{"purpose":"magic_link","subject":"user-1"}')
    assert small.status_code == 201, small.get_json()
    _problem(_chunked(api, "/api/v1/links", fits + b" "), 413, "body_too_large")


def test_a_large_chunked_body_is_too_large_on_gunicorn(tmp_path):
    """The same over real HTTP: gunicorn decodes the chunks, werkzeug's stream stopped at the
    limit and the cut-off JSON answered 400 invalid_json."""
    import requests

    from tests.support.env import base_env
    from tests.support.servers import prepare_instance, start_gunicorn

    env = base_env(tmp_path / "instance")
    creds = prepare_instance(env)
    server = start_gunicorn(env, workers=1, log_path=tmp_path / "server.log")
    headers = {"Authorization": f"Bearer {creds['api_key']}", "Content-Type": "application/json"}
    try:
        session = requests.Session()
        for path in JSON_BODY_CALLS:
            for label, data in (
                ("declared", BIG_JSON),
                ("chunked", iter([BIG_JSON[i : i + 8192] for i in range(0, len(BIG_JSON), 8192)])),
            ):
                resp = session.post(server.url + path, data=data, headers=headers, timeout=30)
                assert resp.status_code == 413, (path, label, resp.text[:300])
                assert resp.json()["code"] == "body_too_large", (path, label)
        small = iter([b'{"purpose":"magic_link",', b'"subject":"user-1"}'])
        resp = session.post(server.url + "/api/v1/links", data=small, headers=headers, timeout=30)
        assert resp.status_code == 201, resp.text
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_times_in_problems_are_iso_8601_like_every_other_time(app, api):
    """The 409 `used` problem's `at` and the 410 `expired` problem's `expired_at` are in
    the API's one time format, not epoch integers."""
    link = api.minted()
    redeemed = api.redeem(link["token"]).get_json()
    used = _problem(api.redeem(link["token"]), 409, "used")
    assert used["at"] == redeemed["redeemed_at"]
    assert used["at"] == api.status(link["jti"]).get_json()["state_changed_at"]

    svc = services(app).links
    old = api.minted(ttl=60)
    real = svc.clock
    svc.clock = lambda: real() + 3600
    try:
        expired = _problem(api.verify(old["token"]), 410, "expired")
    finally:
        svc.clock = real
    assert expired["expired_at"] == old["expires_at"]


def test_a_405_lists_only_the_methods_of_its_path(api):
    """`GET /links/redeem` was matched by `/links/<jti>` too, so its 405 advertised GET and
    DELETE, which the path does not have."""
    for path in ("/api/v1/links/redeem", "/api/v1/links/verify"):
        for method in ("get", "delete", "put"):
            resp = getattr(api.http, method)(path, headers=api.headers)
            _problem(resp, 405, "method_not_allowed")
            allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
            assert allowed == {"POST", "OPTIONS"}, (method, path, allowed)
    link = api.minted()
    assert api.status(link["jti"]).status_code == 200  # a jti still routes


@pytest.mark.parametrize("subject", ["a\nb", "a\rb", "\n", "a\x0bb", "x\x85y", "a\u2028b"])
def test_subjects_with_line_breaks_are_422_not_an_undocumented_404(api, subject):
    from urllib.parse import quote

    for method, path in (
        ("post", f"/api/v1/subjects/{quote(subject, safe='')}/revoke"),
        ("get", f"/api/v1/subjects/{quote(subject, safe='')}/links"),
    ):
        resp = getattr(api.http, method)(path, headers=api.headers)
        body = _problem(resp, 422, "invalid_field")
        assert body["field"] == "subject"


def test_an_integral_float_is_an_integer(api):
    """JSON Schema's "integer" admits 60.0, and so does the API; 60.5 stays refused."""
    link = api.minted(ttl=60.0)
    assert link["expires_at"] > link["issued_at"]
    _problem(api.mint(ttl=60.5), 422, "invalid_field")


@pytest.mark.parametrize("body", [b"\x0b", b"\x0c", b" \x0b\n"])
def test_a_body_of_other_whitespace_than_jsons_is_not_an_empty_body(api, body):
    """The fuzzer's find: a body of a vertical tab is not JSON, and not "no body" either
    (revoking a subject takes an optional body, and had revoked everything)."""
    headers = {**api.headers, "Content-Type": "application/json"}
    for path in ("/api/v1/subjects/user-1/revoke", "/api/v1/links"):
        _problem(api.http.post(path, data=body, headers=headers), 400, "invalid_json")
    assert (
        api.http.post(
            "/api/v1/subjects/user-1/revoke", data=b" \r\n\t", headers=headers
        ).status_code
        == 200
    )
