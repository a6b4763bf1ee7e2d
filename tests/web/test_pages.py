"""End-user pages: GET/HEAD never consume; the button consumes once, behind a form token bound
to the link and the browser; a double press reaches the same completion; every failure gets
its own page and status; hostile tokens are refused without touching the real link."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from linksvc import config, errors
from linksvc.links import codes
from linksvc.services import services
from linksvc.web import pages
from tests.support import hostile
from tests.support.apps import REDIRECT, make_api_user

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def form_token(resp: Any) -> str:
    m = CSRF_RE.search(resp.get_data(as_text=True))
    assert m, resp.get_data(as_text=True)
    return m.group(1)


def open_page(browser: FlaskClient, url_or_token: str) -> tuple[Any, str]:
    path = "/l/" + url_or_token.rsplit("/l/", 1)[-1]
    resp = browser.get(path)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp, form_token(resp)


def press(browser: FlaskClient, url_or_token: str, csrf: str | None, **extra: Any) -> Any:
    data = {} if csrf is None else {"csrf": csrf}
    data.update(extra.pop("data", {}))
    return browser.post("/l/" + url_or_token.rsplit("/l/", 1)[-1], data=data, **extra)


@pytest.fixture(params=["jwt", "short"])
def link_format(request: pytest.FixtureRequest) -> str:
    """Every test of ``api``'s links runs for both forms of a link (PRODUCT §8)."""
    return str(request.param)


def path_of(link: dict[str, Any]) -> str:
    """The path of a minted link's ``url``: the JWT, or a short link's handle."""
    return "/l/" + link["url"].rsplit("/l/", 1)[-1]


def reason_of(resp: Any) -> str:
    """The page's reason, from its machine-readable attribute (never shown to the user)."""
    m = re.search(r'data-reason="([a-z_]+)"', resp.get_data(as_text=True))
    assert m, resp.get_data(as_text=True)
    return m.group(1)


def code_of(location: str) -> str:
    return location.split("code=", 1)[1]


def assert_html_headers(resp: Any) -> None:
    h = resp.headers
    assert resp.mimetype == "text/html"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["Cache-Control"] == "no-store"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["X-Frame-Options"] == "DENY"
    csp = h["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp
    body = resp.get_data(as_text=True)
    assert "<script" not in body.lower() and "style=" not in body
    assert re.search(r"\son[a-z]+=", body) is None  # no inline event handlers
    # No third-party assets (links onward to the application are navigation, not assets).
    assert re.search(r'(src="|<link[^>]*href=")(https?:)?//', body) is None
    assert 'lang="en"' in body
    assert "Traceback" not in body


# -- GET and HEAD never consume -----------------------------------------------------


def test_confirmation_page_names_app_and_action_and_consumes_nothing(api, client):
    link = api.minted("magic_link")
    resp, csrf = open_page(client, link["url"])
    body = resp.get_data(as_text=True)
    assert "Sign in to Acme" in body
    assert body.count("<button") == 1
    assert "user-42" not in body  # no hint of who the account is
    assert link["token"] not in body.replace(f'value="{csrf}"', "")  # the token is not echoed
    assert_html_headers(resp)
    # Chrome checks form-action against the redirect after the post: the app's origin is allowed.
    assert "form-action 'self' http://127.0.0.1:5001;" in resp.headers["Content-Security-Policy"]
    cookie = resp.headers["Set-Cookie"]
    assert pages.NONCE_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/l/" in cookie and "Secure" not in cookie  # base URL is http in tests
    assert api.status(link["jti"]).get_json()["state"] == "issued"

    reset = api.minted("password_reset", subject="user-7")
    resp, _ = open_page(client, reset["url"])
    assert "Reset your Acme password" in resp.get_data(as_text=True)


def test_secure_cookie_when_base_url_is_https(env, tmp_path):
    from linksvc import create_app
    from tests.support.apps import _prepare

    app = create_app({**env, "LINKSVC_BASE_URL": "https://links.example"})
    _prepare(app)
    api = make_api_user(app)
    link = api.minted()
    resp = app.test_client().get(path_of(link))
    assert resp.status_code == 200
    assert "Secure" in resp.headers["Set-Cookie"]
    services(app).links.engine.dispose()


def test_scanners_head_prefetch_preview_leave_link_usable(api, app):
    link = api.minted()
    path = path_of(link)
    scanner = app.test_client()
    assert scanner.head(path).status_code == 200
    for headers in (
        {"Sec-Purpose": "prefetch"},
        {"Purpose": "prefetch"},
        {"User-Agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"},
        {"User-Agent": "Mozilla/5.0 (compatible; Microsoft Office Protocol Discovery)"},
    ):
        for _ in range(3):
            assert scanner.get(path, headers=headers, follow_redirects=True).status_code == 200
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    # The history notes views, but only the first few however hard a scanner hammers.
    events = [e["event"] for e in api.status(link["jti"]).get_json()["events"]]
    assert events.count("viewed") == pages.MAX_VIEW_EVENTS
    # The user's own click afterwards succeeds.
    user = app.test_client()
    _, csrf = open_page(user, link["url"])
    resp = press(user, link["url"], csrf)
    assert resp.status_code == 303


# -- the button ------------------------------------------------------------------------


def test_press_consumes_and_redirects_to_registered_uri_with_code(api, client):
    link = api.minted("magic_link", data={"next": "/inbox"})
    _, csrf = open_page(client, link["url"])
    # Nothing in the request chooses the target: extra query and form fields are ignored.
    resp = client.post(
        f"/l/{link['token']}?redirect_uri=https://evil.example/&next=https://evil.example/",
        data={"csrf": csrf, "redirect_uri": "https://evil.example/", "code": "x"},
    )
    assert resp.status_code == 303
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?code=")
    assert "evil" not in location
    code = code_of(location)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", code)
    assert api.status(link["jti"]).get_json()["state"] == "consumed"
    out = api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers)
    assert out.status_code == 200
    assert out.get_json() == {
        "subject": "user-42",
        "purpose": "magic_link",
        "jti": link["jti"],
        "data": {"next": "/inbox"},
    }


def test_registered_query_is_preserved(app):
    uri = "http://127.0.0.1:5001/callback?tenant=a%20b&x=1+2&code=stale"
    api = make_api_user(app, "queryapp", redirect_uris=[uri])
    link = api.minted()
    browser = app.test_client()
    _, csrf = open_page(browser, link["url"])
    location = press(browser, link["url"], csrf).headers["Location"]
    assert location.startswith("http://127.0.0.1:5001/callback?tenant=a%20b&x=1+2&code=")
    assert location.count("code=") == 1


def test_with_code_helper():
    assert pages.with_code("https://a.example/cb", "C") == "https://a.example/cb?code=C"
    assert (
        pages.with_code("https://a.example/cb?z=%2F&y", "C")
        == "https://a.example/cb?z=%2F&y&code=C"
    )
    assert (
        pages.with_code("https://a.example/cb?code=1&codex=2", "C")
        == "https://a.example/cb?codex=2&code=C"
    )


def test_link_without_redirect_uri_shows_done_page(app):
    api = make_api_user(app, "noredirect", redirect_uris=[])
    link = api.minted("password_reset")
    browser = app.test_client()
    _, csrf = open_page(browser, link["url"])
    resp = press(browser, link["url"], csrf)
    assert resp.status_code == 200
    assert "Confirmed" in resp.get_data(as_text=True)
    assert_html_headers(resp)
    assert api.status(link["jti"]).get_json()["state"] == "consumed"


def test_double_press_same_browser_reaches_same_completion(api, app, client):
    link = api.minted()
    _, csrf = open_page(client, link["url"])
    first = press(client, link["url"], csrf)
    second = press(client, link["url"], csrf)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    # Once the application has exchanged the code, a further press still goes back to the
    # application (whose session is in this browser) with the same, now spent, code.
    code = code_of(first.headers["Location"])
    assert (
        api.http.post(
            "/api/v1/codes/exchange", json={"code": code}, headers=api.headers
        ).status_code
        == 200
    )
    third = press(client, link["url"], csrf)
    assert third.status_code == 303 and third.headers["Location"] == first.headers["Location"]
    resp = api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers)
    assert resp.status_code == 409 and resp.get_json()["code"] == "code_used"


def test_double_press_window_closes(api, app, client):
    link = api.minted()
    _, csrf = open_page(client, link["url"])
    svc = services(app).links
    t0 = svc.now()
    svc.clock = lambda: t0
    assert press(client, link["url"], csrf).status_code == 303
    svc.clock = lambda: t0 + codes.DOUBLE_SUBMIT_WINDOW + 1
    late = press(client, link["url"], csrf)
    assert late.status_code == 409 and reason_of(late) == "used"


def test_second_browser_gets_used(api, app):
    link = api.minted()
    alice, mallory = app.test_client(), app.test_client()
    _, csrf_a = open_page(alice, link["url"])
    _, csrf_m = open_page(mallory, link["url"])
    assert press(alice, link["url"], csrf_a).status_code == 303
    late = press(mallory, link["url"], csrf_m)
    assert late.status_code == 409 and reason_of(late) == "used"
    assert "Location" not in late.headers


# -- forged, replayed and missing form tokens -------------------------------------------


def _refused(resp: Any, api: Any, jti: str) -> None:
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert reason_of(resp) == "form_invalid"
    assert "Location" not in resp.headers
    assert_html_headers(resp)
    assert api.status(jti).get_json()["state"] == "issued"


def test_post_without_form_token_is_refused(api, client):
    link = api.minted()
    open_page(client, link["url"])
    _refused(press(client, link["url"], None), api, link["jti"])
    _refused(press(client, link["url"], ""), api, link["jti"])


def test_forged_form_token_is_refused(api, client):
    from itsdangerous import URLSafeTimedSerializer

    link = api.minted()
    _, csrf = open_page(client, link["url"])
    nonce = client.get_cookie(pages.NONCE_COOKIE, path="/l/").value
    forged = URLSafeTimedSerializer(b"x" * 32, salt="linksvc.pages.confirm").dumps(
        {"j": link["jti"], "n": codes.completion_hash(nonce)}
    )
    _refused(press(client, link["url"], forged), api, link["jti"])
    _refused(press(client, link["url"], csrf[:-3] + "AAA"), api, link["jti"])
    _refused(press(client, link["url"], "A" * 5000), api, link["jti"])


def test_form_token_of_another_link_is_refused(api, client):
    a, b = api.minted(subject="user-a"), api.minted(subject="user-b")
    _, csrf_a = open_page(client, a["url"])
    open_page(client, b["url"])
    _refused(press(client, b["url"], csrf_a), api, b["jti"])


def test_form_token_replayed_from_another_browser_is_refused(api, app):
    """Login CSRF: an attacker who fetched the page cannot make a victim's browser press it."""
    link = api.minted()
    attacker, victim = app.test_client(), app.test_client()
    _, csrf = open_page(attacker, link["url"])
    _refused(press(victim, link["url"], csrf), api, link["jti"])  # no nonce cookie at all
    open_page(victim, link["url"])  # victim has a nonce, but not the attacker's
    _refused(press(victim, link["url"], csrf), api, link["jti"])


def test_cross_site_post_is_refused(api, client):
    link = api.minted()
    _, csrf = open_page(client, link["url"])
    _refused(
        press(client, link["url"], csrf, headers={"Sec-Fetch-Site": "cross-site"}),
        api,
        link["jti"],
    )
    assert (
        press(client, link["url"], csrf, headers={"Sec-Fetch-Site": "same-origin"}).status_code
        == 303
    )


def test_expired_form_token_renders_fresh_form(app):
    api = make_api_user(app, "slowreader")
    svc = services(app).links
    svc.settings = config.replace(svc.settings, max_ttl={**svc.settings.max_ttl, "magic_link": 900})
    link = api.minted(ttl=900)
    browser = app.test_client()
    _, csrf = open_page(browser, link["url"])
    t0 = svc.now()
    svc.clock = lambda: t0 + pages.FORM_MAX_AGE + 5
    resp = press(browser, link["url"], csrf)
    assert resp.status_code == 400
    assert "Press the button again" in resp.get_data(as_text=True)
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    assert press(browser, link["url"], form_token(resp)).status_code == 303


# -- failure pages -------------------------------------------------------------------


def _state_cases(api: Any, app: Any) -> list[tuple[str, str, int]]:
    used = api.minted(subject="u-used")
    assert api.redeem(used["token"]).status_code == 200
    revoked = api.minted(subject="u-revoked")
    assert (
        api.http.delete(f"/api/v1/links/{revoked['jti']}", headers=api.headers).status_code == 200
    )
    old = api.minted("password_reset", subject="u-reset")
    api.minted("password_reset", subject="u-reset")
    expired = hostile.CASES[[c.name for c in hostile.CASES].index("expired")].build(
        app, api.minted()["token"]
    )
    return [
        (used["url"], "used", 409),
        (revoked["url"], "revoked", 410),
        (old["url"], "superseded", 410),
        (expired, "expired", 410),
        ("not-a-token", "invalid", 400),
    ]


def test_failure_pages_get_and_post(api, app, client):
    for token, reason, status in _state_cases(api, app):
        path = "/l/" + token.rsplit("/l/", 1)[-1]
        for resp in (client.get(path), client.post(path, data={"csrf": "x"})):
            assert resp.status_code == status, (reason, resp.status_code)
            assert reason_of(resp) == reason
            assert_html_headers(resp)
            body = resp.get_data(as_text=True)
            assert "new link" in body
            assert "u-" not in body  # never the account


def test_disabled_client_links_stop_working(api, app, client):
    import sqlalchemy as sa

    from linksvc.store import db

    link = api.minted()
    _, csrf = open_page(client, link["url"])
    with db.write(services(app).links.engine) as conn:
        conn.execute(
            sa.update(db.clients).where(db.clients.c.id == api.client.id).values(disabled=True)
        )
    assert client.get(path_of(link)).status_code == 400
    assert press(client, link["url"], csrf).status_code == 400
    with db.read(services(app).links.engine) as conn:
        state = conn.execute(
            sa.select(db.links.c.state).where(db.links.c.jti == link["jti"])
        ).scalar_one()
    assert state == "issued"


def test_unknown_browser_path_is_html_404_api_stays_problem_json(client):
    resp = client.get("/no/such/page")
    assert resp.status_code == 404 and reason_of(resp) == "not_found"
    assert_html_headers(resp)
    assert client.get("/l/").status_code == 404
    api = client.get("/api/v1/nope")
    assert api.status_code in (401, 404) and api.mimetype == "application/problem+json"
    method = client.put("/l/abc")
    assert method.status_code == 405 and method.mimetype == "text/html"


def test_database_down_and_unexpected_errors_are_pages(api, app, client, monkeypatch):
    link = api.minted()
    svc = services(app).links

    def down(*a: Any, **k: Any) -> Any:
        raise errors.ServiceUnavailable("database")

    monkeypatch.setattr(svc, "verify", down)
    resp = client.get(path_of(link))
    assert (
        resp.status_code == 503 and reason_of(resp) == "unavailable" and resp.headers["Retry-After"]
    )

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(svc, "verify", boom)
    resp = client.get(path_of(link))
    assert resp.status_code == 500 and reason_of(resp) == "error"
    assert "secret internals" not in resp.get_data(as_text=True)
    assert_html_headers(resp)


def test_pages_never_log_the_token(api, client, caplog):
    from linksvc.ops.logs import JsonFormatter

    caplog.set_level("INFO", logger="linksvc")
    link = api.minted()
    _, csrf = open_page(client, link["url"])
    press(client, link["url"], csrf)
    client.get(path_of(link))
    client.post(path_of(link), data={"csrf": csrf})
    client.post(f"/l/{link['token']}x", data={"csrf": csrf})
    fmt = JsonFormatter()
    err = "\n".join(fmt.format(r) + repr(r.__dict__) for r in caplog.records)
    assert link["jti"] in err
    assert link["token"] not in err and link["token"].split(".")[2] not in err


# -- hostile tokens on GET and POST ----------------------------------------------------


@pytest.mark.parametrize("case", hostile.CASES, ids=[c.name for c in hostile.CASES])
def test_hostile_tokens_are_refused_and_real_link_survives(api, app, case):
    link = api.minted()
    browser = app.test_client()
    _, csrf = open_page(
        browser, link["token"]
    )  # the attacker even holds a valid form for the real link
    bad = case.build(app, link["token"])
    reason = "expired" if case.reason == "expired" else "invalid"
    for resp in (
        browser.get(f"/l/{bad}"),
        browser.head(f"/l/{bad}"),
        browser.post(f"/l/{bad}", data={"csrf": csrf}),
    ):
        assert resp.status_code == (410 if reason == "expired" else 400), (
            case.name,
            resp.status_code,
        )
        assert resp.mimetype == "text/html"
        if resp.request.method != "HEAD":
            assert reason_of(resp) == reason
        assert "Location" not in resp.headers
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    resp = press(browser, link["url"], csrf)
    assert resp.status_code == 303 and resp.headers["Location"].startswith(REDIRECT + "?code=")


def test_press_double_press_and_exchange_on_postgresql(pg_url, tmp_path, link_format):
    from linksvc import create_app
    from linksvc.store import migrate
    from tests.support.apps import _prepare
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path / "instance", database_url=pg_url))
    migrate.upgrade(services(app).links.engine)
    _prepare(app)
    try:
        api = make_api_user(app, link_format=link_format)
        link = api.minted("password_reset", data={"k": "v"})
        browser = app.test_client()
        _, csrf = open_page(browser, link["url"])
        first, second = press(browser, link["url"], csrf), press(browser, link["url"], csrf)
        assert first.status_code == second.status_code == 303
        assert first.headers["Location"] == second.headers["Location"]
        code = code_of(first.headers["Location"])
        out = api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers)
        assert out.status_code == 200 and out.get_json()["purpose"] == "password_reset"
        assert (
            api.http.post(
                "/api/v1/codes/exchange", json={"code": code}, headers=api.headers
            ).get_json()["code"]
            == "code_used"
        )
    finally:
        services(app).links.engine.dispose()


def test_press_cookie_is_host_prefixed_where_the_base_url_is_https(env):
    """Issue 17 item 12: over https the nonce cookie is ``__Host-`` (Secure, Path=/, no
    Domain), so neither a sibling subdomain nor a plain-HTTP page can plant one."""
    from linksvc import create_app
    from tests.support.apps import _prepare, make_api_user

    base = "https://links.example.com"
    app = create_app({**env, "LINKSVC_BASE_URL": base})
    _prepare(app)
    try:
        api = make_api_user(app)
        link = api.minted()
        browser = app.test_client()
        # A cookie under the old name (planted over http or by a sibling) is not the nonce.
        browser.set_cookie("linksvc_press", "p" * 43, path="/l/", domain="links.example.com")
        page = browser.get(path_of(link), base_url=base)
        assert page.status_code == 200
        cookie = page.headers["Set-Cookie"]
        assert cookie.startswith(pages.HOST_NONCE_COOKIE + "=")
        assert "Secure" in cookie and "Path=/;" in cookie and "Domain" not in cookie
        csrf = form_token(page)
        done = browser.post(path_of(link), data={"csrf": csrf}, base_url=base)
        assert done.status_code == 303 and "code=" in done.headers["Location"]
    finally:
        services(app).links.engine.dispose()


@pytest.mark.parametrize("server_name", ["gunicorn", "granian"])
def test_an_over_long_link_gets_our_page_under_either_server(tmp_path, server_name):
    """gunicorn's own request-line limit would answer a bare 414 before linksvc sees the
    link (gunicorn.conf.py; granian's buffer is serve.py's); a mangled 20,000-character link
    gets linksvc's page instead."""
    import requests

    from tests.support.env import base_env
    from tests.support.servers import prepare_instance, start_server

    env = base_env(tmp_path / "instance")
    prepare_instance(env)
    server = start_server(env, server=server_name, workers=1, log_path=tmp_path / "server.log")
    try:
        resp = requests.get(server.url + "/l/" + "A" * 20_000, timeout=30)
    finally:
        server.stop()
    assert resp.status_code == 400, resp.text[:300]
    assert 'data-reason="invalid"' in resp.text and "This link is not valid" in resp.text


# -- short links (PRODUCT §8) ---------------------------------------------------------


def test_short_link_is_at_most_65_characters_with_a_30_character_base_url(env):
    from linksvc import create_app
    from linksvc.links import handles
    from tests.support.apps import _prepare

    base = "https://links.example-corp.com"
    assert len(base) == 30
    app = create_app({**env, "LINKSVC_BASE_URL": base})
    _prepare(app)
    try:
        api = make_api_user(app, link_format="short")
        for purpose in ("magic_link", "password_reset"):  # /d/ links: test_downloads
            link = api.minted(purpose)
            assert len(link["url"]) <= 65, link["url"]
            handle = link["url"].removeprefix(base + "/l/")
            assert len(handle) == 26 and handles.decode(handle) is not None
            assert link["token"].count(".") == 2  # the JWT, for redemption and offline checks
            assert api.verify(link["token"], purpose).get_json()["jti"] == link["jti"]
    finally:
        services(app).links.engine.dispose()


def _spellings(handle: str) -> list[str]:
    """Other spellings of one handle: lower case, mixed case, Crockford's aliases."""
    aliased = handle.replace("1", "l").replace("0", "O")
    mixed = "".join(ch.lower() if i % 2 else ch for i, ch in enumerate(handle))
    return [handle.lower(), mixed, aliased, aliased.lower().replace("l", "I")]


def test_short_handle_in_any_case_and_with_aliases_names_the_same_link(app):
    api = make_api_user(app, "shortapp", link_format="short")
    # Mint until the handle has a 1 and a 0, so the aliases are exercised.
    while True:
        link = api.minted()
        handle = link["url"].rsplit("/l/", 1)[-1]
        if "1" in handle and "0" in handle and handle.upper() == handle:
            break
    browser = app.test_client()
    for spelling in _spellings(handle):
        _, csrf = open_page(browser, spelling)
    resp = press(browser, _spellings(handle)[2], csrf)
    assert resp.status_code == 303 and resp.headers["Location"].startswith(REDIRECT + "?code=")
    # Every spelling now meets the one consumed ledger row.
    for spelling in [handle, *_spellings(handle)]:
        assert reason_of(app.test_client().get("/l/" + spelling)) == "used"
    assert api.status(link["jti"]).get_json()["state"] == "consumed"


def test_forged_and_unknown_handles_answer_the_invalid_link_page(app, caplog):
    import logging

    from linksvc.links import handles

    api = make_api_user(app, "shortapp", link_format="short")
    link = api.minted()
    handle = link["url"].rsplit("/l/", 1)[-1]
    invalid = app.test_client().get("/l/not-a-token")
    flipped = ("1" if handle[-1] != "1" else "2").join((handle[:-1], ""))
    forged = [
        handles.encode(handles.new()),  # well formed, names no link
        flipped,  # one character off a real handle
        "8" + handle[1:],  # 130 bits: more than a handle holds
        handle[:-1] + "U",  # not Crockford's
        handle + "0",
        handle[:-1],
        handle[:12] + "-" + handle[12:],
        link["jti"],  # the row's id is not a handle
    ]
    browser = app.test_client()
    with caplog.at_level(logging.INFO):
        for path in forged:
            for resp in (
                browser.get("/l/" + path),
                browser.head("/l/" + path),
                browser.post("/l/" + path, data={"csrf": "x"}),
            ):
                assert resp.status_code == invalid.status_code, (path, resp.status_code)
                if resp.request.method != "HEAD":
                    assert reason_of(resp) == "invalid"
                    # The same page, but for the support reference of each request.
                    same = re.compile(rb'support-ref">[0-9a-f]+<')
                    assert same.sub(b"", resp.get_data()) == same.sub(b"", invalid.get_data())
    # Nothing happened to the real link, and no handle reached a log line.
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    assert handle not in caplog.text and handle.lower() not in caplog.text
    _, csrf = open_page(browser, link["url"])
    assert press(browser, link["url"], csrf).status_code == 303


def test_short_link_of_a_removed_signing_key_stops_working_like_its_jwt(app, link_format):
    """A short link's row meets the JWT's claim checks: here, that its key is still ours."""
    from linksvc import errors

    api = make_api_user(app, "shortapp", link_format=link_format)
    link = api.minted()
    svc = services(app).links

    def no_key(kid: str) -> Any:
        raise errors.UnknownKey()

    svc.keyring.verification_key, real = no_key, svc.keyring.verification_key
    try:
        resp = app.test_client().get(path_of(link))
        assert resp.status_code == 400 and reason_of(resp) == "invalid"
    finally:
        svc.keyring.verification_key = real
    assert app.test_client().get(path_of(link)).status_code == 200
