"""Sign-ins that complete on the device that asked (linksvc.signins.flow, linksvc.signins.pages):
every path through the Flask test client, with one test client per browser, and the
attacks on them. The real-browser journeys are in test_signin_browser.py, the race on
PostgreSQL in test_signin_race.py."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from linksvc.links import codes
from linksvc.services import services
from linksvc.signins import flow as signins
from tests.support.apps import REDIRECT, make_api_user
from tests.support.databases import dump_database

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
ADDRESS = "alice.liddell@example.org"


@dataclass
class Started:
    id: str
    jti: str
    wait_path: str
    link_path: str
    code: str  # as the mail shows it: XXXX-XXXX
    body: dict[str, Any]


def _mail(app: Any, jti: str) -> email.message.EmailMessage:
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    for path in outbox.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg["X-Linksvc-Jti"] == jti:
            return msg  # type: ignore[return-value]
    raise AssertionError(f"no mail for {jti}")


def start(app: Any, api: Any, subject: str = "user-42", **extra: Any) -> Started:
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={
            "subject": subject,
            "email": ADDRESS,
            "ip": "203.0.113.7",
            "user_agent": FIREFOX_LINUX,
            **extra,
        },
        headers=api.headers,
    )
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    text = _mail(app, body["jti"]).get_body(("plain",)).get_content()
    link = re.search(r"https?://\S+/l/\S+", text).group(0)
    code = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", text).group(1)
    return Started(
        body["id"],
        body["jti"],
        "/s/" + body["id"],
        "/l/" + link.split("/l/", 1)[1],
        code,
        body,
    )


def csrf_of(resp: Any) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', resp.get_data(as_text=True)).group(1)


def match_of(resp: Any) -> str:
    return re.search(r'id="match-number"[^>]*>(\d\d)<', resp.get_data(as_text=True)).group(1)


def reason_of(resp: Any) -> str:
    return re.search(r'data-reason="([a-z_]+)"', resp.get_data(as_text=True)).group(1)


def wrong_number(right: str) -> str:
    return "10" if right != "10" else "11"


def events(api: Any, jti: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e["via"]) for e in api.status(jti).get_json()["events"]]


def link_state(api: Any, jti: str) -> str:
    return api.status(jti).get_json()["state"]


def code_from(resp: Any) -> str:
    assert resp.status_code == 303, resp.get_data(as_text=True)
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?code=")
    return location.split("code=", 1)[1]


@pytest.fixture(params=["jwt", "short"])
def link_format(request: pytest.FixtureRequest) -> str:
    """A sign-in's mailed link behaves the same in both forms (PRODUCT §8)."""
    return str(request.param)


@pytest.fixture
def laptop(app: Any) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def phone(app: Any) -> FlaskClient:
    return app.test_client()


# -- the pieces ---------------------------------------------------------------------------


def test_codes_are_crockford_base32_and_typing_is_forgiving():
    for _ in range(200):
        code = signins.new_code()
        assert len(code) == 8 and set(code) <= set(signins.CODE_ALPHABET)
        assert not set(code) & set("ILOU")
    assert signins.show_code("7KQ2M9XD") == "7KQ2-M9XD"
    assert signins.normalise_code(" 7kq2-m9xd ") == "7KQ2M9XD"
    assert signins.normalise_code("OIL2 M9XD") == "0112M9XD"
    assert signins.normalise_code("7KQ2M9X") is None
    assert signins.normalise_code("7KQ2M9XU") is None  # U is not in the alphabet
    assert signins.normalise_code("x" * 100) is None


@pytest.mark.parametrize(
    ("agent", "words"),
    [
        (FIREFOX_LINUX, "Firefox on Linux"),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Safari on iOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Safari/605.1.15",
            "Safari on macOS",
        ),
        ("curl/8.5.0", "an unknown browser"),
        ("", "an unknown browser"),
    ],
)
def test_the_requesting_browser_in_words(agent, words):
    assert signins.describe_browser(agent) == words


def test_ago():
    assert signins.ago(5) == "less than a minute ago"
    assert signins.ago(65) == "1 minute ago"
    assert signins.ago(150) == "2 minutes ago"


# -- starting -------------------------------------------------------------------------------


def test_start_answers_the_wait_url_and_mails_link_and_code(app, api):
    s = start(app, api)
    assert s.body["wait_url"] == f"{app.config['LINKSVC'].base_url}/s/{s.id}"
    assert set(s.body) == {"id", "wait_url", "jti", "subject", "expires_at"}
    assert "token" not in s.body  # the link reaches the user only, by mail
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", s.code)
    html = _mail(app, s.jti).get_body(("html",)).get_content()
    assert s.code in html
    assert link_state(api, s.jti) == "issued"
    assert events(api, s.jti)[:2] == [("minted", "api"), ("started", "api")]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"redirect_uri": "https://evil.example/steal"}, 403, "redirect_uri_not_allowed"),
        ({"redirect_uri": REDIRECT + "/../other"}, 403, "redirect_uri_not_allowed"),
        ({"ip": "localhost"}, 422, "invalid_field"),
        ({"email": "not an address"}, 422, "invalid_field"),
        ({"user_agent": "x" * 2000}, 422, "invalid_field"),
        ({"subject": "alice@example.org"}, 422, "subject_looks_like_pii"),
        ({"wait_url": "https://evil.example/"}, 422, "unknown_field"),
        ({"email": None}, 422, "missing_field"),
    ],
)
def test_start_refuses_bad_input_before_minting(app, api, change, status, code):
    body = {
        "subject": "user-42",
        "email": ADDRESS,
        "ip": "203.0.113.7",
        "user_agent": FIREFOX_LINUX,
        **change,
    }
    resp = api.http.post("/api/v1/sign-ins", json=body, headers=api.headers)
    assert (resp.status_code, resp.get_json()["code"]) == (status, code)
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    assert not outbox.exists() or not list(outbox.glob("*.eml"))


def test_redirect_uri_comes_from_registration_only(app, laptop):
    """The completion goes to the registered URI named at start, whatever the browser sends."""
    other = "http://127.0.0.1:5001/other-callback"
    api = make_api_user(app, "two-uris", redirect_uris=[REDIRECT, other])
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={"subject": "u", "email": ADDRESS, "ip": "::1", "user_agent": ""},
        headers=api.headers,
    )
    assert resp.get_json()["code"] == "redirect_uri_required"
    s = start(app, api, redirect_uri=other)
    wait = laptop.get(s.wait_path)
    done = laptop.post(
        s.wait_path + "/code?redirect_uri=https://evil.example/",
        data={"csrf": csrf_of(wait), "code": s.code, "redirect_uri": "https://evil.example/"},
    )
    assert done.status_code == 303 and done.headers["Location"].startswith(other + "?code=")


# -- the waiting page -------------------------------------------------------------------------


def test_waiting_page_binds_the_first_browser_only(app, api, laptop, phone):
    s = start(app, api)
    head = laptop.head(s.wait_path)
    # HEAD binds nothing (a link preview of the wait_url must not take the sign-in).
    assert head.status_code == 403 and "Set-Cookie" not in head.headers
    wait = laptop.get(s.wait_path)
    assert wait.status_code == 200
    cookie = wait.headers["Set-Cookie"]
    assert cookie.startswith("linksvc_signin=")  # http:// in tests: no __Host- prefix
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/;" in cookie
    assert re.fullmatch(r"[1-9][0-9]", match_of(wait))
    csp = wait.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and wait.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in wait.get_data(as_text=True)  # only the same-origin file
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "pending"}
    # The phone opening the same wait_url gets no binding and learns nothing.
    other = phone.get(s.wait_path)
    assert other.status_code == 403 and reason_of(other) == "other_browser"
    assert match_of_or_none(other) is None
    assert ("viewed", "wait") in events(api, s.jti)


def match_of_or_none(resp: Any) -> str | None:
    m = re.search(r'id="match-number"', resp.get_data(as_text=True))
    return None if m is None else "shown"


def test_the_secure_deployment_uses_a_host_prefixed_secure_cookie(env):
    from linksvc import create_app
    from tests.support.apps import _prepare

    app = create_app({**env, "LINKSVC_BASE_URL": "https://links.example.com"})
    _prepare(app)
    api = make_api_user(app)
    s = start(app, api)
    wait = app.test_client().get(s.wait_path, base_url="https://links.example.com")
    cookie = wait.headers["Set-Cookie"]
    assert cookie.startswith("__Host-linksvc_signin=")
    assert "Secure" in cookie and "Path=/;" in cookie and "Domain" not in cookie
    services(app).links.engine.dispose()


def test_head_and_get_of_the_link_change_nothing(app, api, laptop, phone):
    s = start(app, api)
    laptop.get(s.wait_path)
    before = link_state(api, s.jti)
    for _ in range(3):
        assert phone.head(s.link_path).status_code == 200
        assert phone.get(s.link_path).status_code == 200
        assert laptop.get(s.link_path).status_code == 200
    assert before == link_state(api, s.jti) == "issued"
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "pending"}


# -- completing ---------------------------------------------------------------------------------


def test_link_in_the_binding_browser_confirms_and_completes(app, api, laptop):
    s = start(app, api)
    laptop.get(s.wait_path)
    page = laptop.get(s.link_path)
    assert page.status_code == 200 and "Sign in to Acme" in page.get_data(as_text=True)
    assert "approve-form" not in page.get_data(as_text=True)
    code = code_from(laptop.post(s.link_path, data={"csrf": csrf_of(page)}))
    # A double click reaches the same completion: one code, never two.
    assert code_from(laptop.post(s.link_path, data={"csrf": csrf_of(page)})) == code
    done = api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers)
    assert done.status_code == 200 and done.get_json()["subject"] == "user-42"
    assert link_state(api, s.jti) == "consumed"
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "completed"}
    evs = events(api, s.jti)
    assert ("completed", "page") in evs and evs.count(("consumed", "page")) == 1
    # The link opened after completion: used, in every browser.
    assert laptop.get(s.link_path).status_code == 409


def test_right_code_on_the_waiting_page_completes(app, api, laptop):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    typed = s.code.lower().replace("-", " ")  # as a user may type it
    code = code_from(
        laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": typed})
    )
    assert (
        api.http.post(
            "/api/v1/codes/exchange", json={"code": code}, headers=api.headers
        ).get_json()["jti"]
        == s.jti
    )
    assert link_state(api, s.jti) == "consumed"
    assert ("completed", "code") in events(api, s.jti)
    # The link, after the code spent its row, is used.
    assert laptop.get(s.link_path).status_code == 409
    again = laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": s.code})
    assert code_from(again) == code  # the same browser's repeat: the same single code


def test_five_wrong_codes_end_the_sign_in(app, api, laptop):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    csrf = csrf_of(wait)
    right = signins.normalise_code(s.code)
    wrong = "0000-0000" if right != "00000000" else "1111-1111"
    for left in (4, 3, 2, 1):
        resp = laptop.post(s.wait_path + "/code", data={"csrf": csrf, "code": wrong})
        assert resp.status_code == 400
        assert f"{left} {'try' if left == 1 else 'tries'} left" in resp.get_data(as_text=True)
    fifth = laptop.post(s.wait_path + "/code", data={"csrf": csrf, "code": wrong})
    assert fifth.status_code == 410 and reason_of(fifth) == "denied"
    # Dead for good: the right code, the link, everything.
    late = laptop.post(s.wait_path + "/code", data={"csrf": csrf, "code": s.code})
    assert late.status_code == 410
    assert link_state(api, s.jti) == "revoked"
    assert laptop.get(s.link_path).status_code == 410
    assert [e for e, _ in events(api, s.jti)].count("code_failed") == 5
    assert ("denied", "sign_in") in events(api, s.jti)


def test_approval_on_the_phone_completes_on_the_laptop(app, api, laptop, phone):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "Sign in to Acme on another device?" in text
    assert "Firefox on Linux" in text and "less than a minute ago" in text
    assert 'value="approve"' in text and 'value="deny"' in text
    assert match_of(wait) not in re.sub(r'value="[^"]*"', "", text)  # the phone is not told it
    assert link_state(api, s.jti) == "issued"
    ok = phone.post(
        "/s/approve", data={"csrf": csrf_of(page), "number": match_of(wait), "action": "approve"}
    )
    assert ok.status_code == 200 and reason_of(ok) == "approved_elsewhere"
    assert "you can close this page" in ok.get_data(as_text=True).lower()
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "approved"}
    # The phone cannot complete it: it holds no binding.
    assert phone.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)}).status_code == 403
    code = code_from(laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)}))
    assert code_from(laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)})) == code
    assert link_state(api, s.jti) == "consumed"
    evs = [e for e, _ in events(api, s.jti)]
    assert evs.count("approved") == 1 and evs.count("completed") == 1
    # The link opened after completion.
    assert phone.get(s.link_path).status_code == 409


def test_complete_before_approval_only_says_not_yet(app, api, laptop):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    resp = laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)})
    assert resp.status_code == 200 and "Not approved yet" in resp.get_data(as_text=True)
    assert link_state(api, s.jti) == "issued"


@pytest.mark.parametrize("how", ["wrong_number", "deny"])
def test_wrong_number_or_deny_ends_the_sign_in(app, api, laptop, phone, how):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    form = {"csrf": csrf_of(page), "action": "deny", "number": ""}
    if how == "wrong_number":
        form.update(action="approve", number=wrong_number(match_of(wait)))
    resp = phone.post("/s/approve", data=form)
    assert resp.status_code == 200
    assert reason_of(resp) == ("wrong_number" if how == "wrong_number" else "denied_here")
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "denied"}
    denied = laptop.get(s.wait_path)
    assert denied.status_code == 410 and reason_of(denied) == "denied"
    assert link_state(api, s.jti) == "revoked"
    assert phone.get(s.link_path).status_code == 410
    # Nothing brings it back: not the code, not the right number.
    assert (
        laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": s.code}).status_code
        == 410
    )
    assert ("denied", "sign_in") in events(api, s.jti)


def test_an_empty_or_malformed_number_asks_again(app, api, laptop, phone):
    s = start(app, api)
    laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    for number in ("", "7", "abc", "123"):
        resp = phone.post(
            "/s/approve", data={"csrf": csrf_of(page), "number": number, "action": "approve"}
        )
        assert resp.status_code == 400 and "two-digit number" in resp.get_data(as_text=True)
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "pending"}


def test_a_sign_in_revoked_through_the_api_ends(app, api, laptop):
    s = start(app, api)
    laptop.get(s.wait_path)
    assert api.http.delete(f"/api/v1/links/{s.jti}", headers=api.headers).status_code == 200
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "ended"}
    assert reason_of(laptop.get(s.wait_path)) == "ended"


def test_an_expired_sign_in_completes_nowhere(app, api, laptop):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    svc = services(app).links
    real = svc.clock
    svc.clock = lambda: real() + 3600
    try:
        assert laptop.get(s.wait_path + "/status").get_json() == {"state": "expired"}
        late = laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": s.code})
        assert late.status_code == 410 and reason_of(late) == "expired"
    finally:
        svc.clock = real
    assert link_state(api, s.jti) == "issued"  # nothing spent it; it simply expired


# -- attacks ----------------------------------------------------------------------------------


def test_status_reveals_nothing_without_the_binding(app, api, laptop, phone):
    s = start(app, api)
    laptop.get(s.wait_path)
    unknown = phone.get("/s/" + "A" * 22 + "/status")
    for resp in (
        phone.get(s.wait_path + "/status"),
        app.test_client().get(s.wait_path + "/status"),
        unknown,
    ):
        assert resp.status_code == 404 and resp.get_json() == {"state": "unknown"}


def test_a_forged_or_replayed_binding_cookie_is_refused(app, api, laptop, phone):
    first = start(app, api, subject="user-a")
    second = start(app, api, subject="user-b")
    laptop.get(first.wait_path)
    phone.get(second.wait_path)  # the phone asked for the second one itself
    # Forged: a well-formed value of the attacker's choosing.
    forger = app.test_client()
    forger.set_cookie("linksvc_signin", "A" * 43)
    assert forger.get(first.wait_path + "/status").status_code == 404
    assert forger.get(first.wait_path).status_code == 403
    # Replayed: the phone's genuine cookie (bound to the second sign-in) on the first.
    phone_cookie = phone.get_cookie("linksvc_signin").value
    replayer = app.test_client()
    replayer.set_cookie("linksvc_signin", phone_cookie)
    assert replayer.get(first.wait_path + "/status").status_code == 404
    laptop_wait = laptop.get(first.wait_path)
    stolen_form = {"csrf": csrf_of(laptop_wait), "code": first.code}
    assert replayer.post(first.wait_path + "/code", data=stolen_form).status_code == 403
    assert link_state(api, first.jti) == "issued"
    # The laptop's cookie value opens no other sign-in's page (the hash is per sign-in).
    from linksvc.store import db

    svc = services(app).links
    with db.read(svc.engine) as conn:
        hashes = [
            r[0]
            for r in conn.execute(
                db.sign_ins.select().with_only_columns(db.sign_ins.c.binding_hash)
            )
        ]
    assert laptop.get_cookie("linksvc_signin").value not in hashes


def test_the_waiting_page_forms_need_their_token_and_the_same_origin(app, api, laptop):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    for data, headers in (
        ({"code": s.code}, {}),
        ({"code": s.code, "csrf": "x" * 43}, {}),
        ({"code": s.code, "csrf": csrf_of(wait)}, {"Sec-Fetch-Site": "cross-site"}),
        ({"code": s.code, "csrf": csrf_of(wait)}, {"Sec-Fetch-Site": "same-site"}),
    ):
        resp = laptop.post(s.wait_path + "/code", data=data, headers=headers)
        assert resp.status_code == 400 and reason_of(resp) == "form_invalid"
        resp = laptop.post(s.wait_path + "/complete", data=data, headers=headers)
        assert resp.status_code == 400
    assert link_state(api, s.jti) == "issued"


def test_the_approval_page_is_not_framable_and_its_post_is_csrf_protected(app, api, laptop, phone):
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    approve_cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in approve_cookie and "SameSite=Strict" in approve_cookie
    number = match_of(wait)
    attacks = [
        ({"number": number, "action": "approve"}, {}, phone),  # no token
        ({"csrf": "garbage", "number": number, "action": "approve"}, {}, phone),
        (  # a cross-site post carrying the real token
            {"csrf": csrf_of(page), "number": number, "action": "approve"},
            {"Sec-Fetch-Site": "cross-site"},
            phone,
        ),
        (  # the token lifted into another browser (without the approval cookie)
            {"csrf": csrf_of(page), "number": number, "action": "approve"},
            {},
            app.test_client(),
        ),
    ]
    for data, headers, browser in attacks:
        resp = browser.post("/s/approve", data=data, headers=headers)
        assert resp.status_code == 400 and reason_of(resp) == "form_invalid"
    # A forged token naming the jti, signed with another key.
    from itsdangerous import URLSafeTimedSerializer

    forged = URLSafeTimedSerializer(b"k" * 32, salt="linksvc.signins.approve").dumps(
        {"j": s.jti, "n": "0" * 64}
    )
    resp = phone.post("/s/approve", data={"csrf": forged, "number": number, "action": "approve"})
    assert resp.status_code == 400
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "pending"}
    assert link_state(api, s.jti) == "issued"


def test_a_press_outside_the_binding_browser_never_completes(app, api, laptop, phone):
    """The phone fetched the confirmation form somehow (say, before the laptop bound): its press
    must not sign the phone in."""
    s = start(app, api)
    early = phone.get(s.link_path)  # nothing bound yet: the approval page, not the confirmation
    assert "approve-form" in early.get_data(as_text=True)
    laptop.get(s.wait_path)
    # Post the confirmation form the way the laptop would, from the phone, with a valid press form.
    from linksvc.web import pages

    svc = services(app).links
    with app.test_request_context():
        nonce = "n" * 43
        token = pages._serializer(svc).dumps({"j": s.jti, "n": pages.codes.completion_hash(nonce)})
    phone.set_cookie(pages.NONCE_COOKIE, nonce, path="/l/")
    resp = phone.post(s.link_path, data={"csrf": token})
    assert resp.status_code == 403 and reason_of(resp) == "other_browser"
    assert link_state(api, s.jti) == "issued"


def test_the_address_is_nowhere_but_in_the_outbound_mail(app, api, laptop, phone, caplog, env):
    caplog.set_level("DEBUG")
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    phone.get(s.link_path)
    laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": "0000-0000"})
    code_from(laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": s.code}))
    needles = [ADDRESS, ADDRESS.split("@")[0], ADDRESS.upper()]
    # the token: claims carry no address
    token = s.link_path.split("/l/", 1)[1]
    if "." in token:  # a short link's handle carries nothing at all
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert not any(n.lower() in json.dumps(claims).lower() for n in needles)
    # logs
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert not any(n in logged for n in needles)
    # every table, every column
    dumped = dump_database(env["LINKSVC_DATABASE_URL"])
    assert s.jti in dumped and s.id in dumped  # the dump holds the sign-in's row
    assert not any(n.lower() in dumped.lower() for n in needles)
    # metrics
    scraped = app.test_client().get("/metrics").get_data(as_text=True)
    assert re.search(r'linksvc_sign_ins_total\{event="completed"\} [1-9]', scraped)
    assert not any(n.lower() in scraped.lower() for n in needles)
    # the API answers
    assert ADDRESS not in json.dumps(s.body) and ADDRESS not in api.status(s.jti).get_data(
        as_text=True
    )
    # ... and the mail does carry it: the check looks in the right places.
    assert _mail(app, s.jti)["To"] == ADDRESS


def test_every_step_is_counted(app, api, laptop, phone):
    from linksvc.signins.pages import SIGN_INS

    def count(event: str) -> float:
        return SIGN_INS.labels(event)._value.get()

    before = {e: count(e) for e in signins.EVENTS}
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": "0000-0000"})
    page = phone.get(s.link_path)
    phone.post(
        "/s/approve", data={"csrf": csrf_of(page), "number": match_of(wait), "action": "approve"}
    )
    code_from(laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)}))
    other = start(app, api, subject="user-7")
    laptop.get(other.wait_path)
    page = phone.get(other.link_path)
    phone.post("/s/approve", data={"csrf": csrf_of(page), "action": "deny"})
    after = {e: count(e) - before[e] for e in signins.EVENTS}
    assert after == {
        "started": 2,
        "viewed": 4,  # two waiting pages bound, two links shown
        "approved": 1,
        "denied": 1,
        "code_failed": 1,
        "completed": 1,
    }


def test_every_step_is_a_webhook_event_in_its_transaction(app, api, laptop, phone):
    from tests.webhooks.test_webhooks import add_endpoint, rows

    add_endpoint(app, api.client.id)
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    laptop.post(s.wait_path + "/code", data={"csrf": csrf_of(wait), "code": "0000-0000"})
    page = phone.get(s.link_path)
    phone.post(
        "/s/approve", data={"csrf": csrf_of(page), "number": match_of(wait), "action": "approve"}
    )
    code_from(laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)}))
    mine = [r for r in rows(app, api.client.id) if r["jti"] == s.jti]
    kinds = [r["event_type"] for r in mine]
    for kind in (
        "sign_in.started",
        "sign_in.viewed",
        "sign_in.code_failed",
        "sign_in.approved",
        "link.consumed",
        "sign_in.completed",
    ):
        assert kinds.count(kind) == 1, kinds
    assert kinds.index("sign_in.started") < kinds.index("sign_in.approved")
    for r in mine:
        assert ADDRESS not in r["payload"] and s.code not in r["payload"]
        data = json.loads(r["payload"])["data"]
        assert data["jti"] == s.jti
        if r["event_type"].startswith("sign_in."):
            assert data["sign_in"] == s.id


def test_idempotency_key_names_one_sign_in_and_one_mail(app, api, env):
    body = {"subject": "user-idem", "email": ADDRESS, "ip": "203.0.113.7", "user_agent": ""}
    headers = {**api.headers, "Idempotency-Key": "signin-0001"}
    first = api.http.post("/api/v1/sign-ins", json=body, headers=headers)
    again = api.http.post("/api/v1/sign-ins", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() and "token" not in again.get_json()
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    assert len(list(outbox.glob("*.eml"))) == 1
    other = api.http.post(
        "/api/v1/sign-ins", json={**body, "email": "someone.else@example.org"}, headers=headers
    )
    assert (other.status_code, other.get_json()["code"]) == (422, "idempotency_mismatch")
    # The key of a sign-in never answers a mint (which would hand out the token).
    mint = api.http.post(
        "/api/v1/links", json={"purpose": "magic_link", "subject": "user-idem"}, headers=headers
    )
    assert mint.status_code == 422 and "token" not in mint.get_json()
    # The stored request hash is keyed: the address cannot be confirmed from the database.
    assert ADDRESS not in dump_database(env["LINKSVC_DATABASE_URL"])


def test_purge_removes_sign_ins_with_their_links_only_past_retention(app, api):
    from linksvc.links import ledger
    from linksvc.store import db

    s = start(app, api)
    engine = services(app).links.engine
    exp = api.status(s.jti).get_json()["expires_at"]
    assert exp
    week = 7 * 86400
    with db.read(engine) as conn:
        (row_exp,) = conn.execute(db.sign_ins.select().with_only_columns(db.sign_ins.c.exp)).one()
    assert signins.purge(engine, now=row_exp + week, retention_seconds=week) == 0
    assert signins.purge(engine, now=row_exp + week + 1, retention_seconds=week) == 1
    ledger.purge(engine, now=row_exp + week + 1, retention_seconds=week)
    assert signins.by_id(engine, s.id) is None
    with pytest.raises(ValueError):
        signins.purge(engine, now=row_exp, retention_seconds=60)


# -- a revocation between approval and completion ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def any_app(request, env):
    """The app on SQLite, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("app")
        return
    from linksvc import create_app
    from linksvc.store import migrate
    from tests.support.apps import _prepare

    pg = create_app({**env, "LINKSVC_DATABASE_URL": request.getfixturevalue("pg_url")})
    migrate.upgrade(services(pg).links.engine)
    _prepare(pg)
    yield pg
    services(pg).links.engine.dispose()


def _approved(
    app: Any, api: Any, subject: str = "user-42", **extra: Any
) -> tuple[Started, Any, str]:
    """A sign-in approved on the phone, not yet completed on the laptop."""
    laptop, phone = app.test_client(), app.test_client()
    s = start(app, api, subject, **extra)
    wait = laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    ok = phone.post(
        "/s/approve", data={"csrf": csrf_of(page), "number": match_of(wait), "action": "approve"}
    )
    assert reason_of(ok) == "approved_elsewhere"
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "approved"}
    return s, laptop, csrf_of(wait)


def _assert_ended(app: Any, api: Any, s: Started, laptop: Any, csrf: str, via: str) -> None:
    """The laptop can no longer complete it: no code, the link revoked, as any revocation."""
    done = laptop.post(s.wait_path + "/complete", data={"csrf": csrf})
    assert done.status_code != 303 and "code=" not in done.headers.get("Location", "")
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "ended"}
    assert reason_of(laptop.get(s.wait_path)) == "ended"
    assert link_state(api, s.jti) == "revoked"
    assert ("revoked", via) in events(api, s.jti)
    assert ("completed", "wait") not in events(api, s.jti)


@pytest.mark.parametrize("how", ["subject", "link"])
def test_revoking_the_subject_or_link_ends_an_approved_sign_in(any_app, how, link_format):
    from tests.webhooks.test_webhooks import add_endpoint, rows

    api = make_api_user(any_app, link_format=link_format)
    add_endpoint(any_app, api.client.id)
    s, laptop, csrf = _approved(any_app, api)
    other = _approved(any_app, api, "user-43")  # another subject's approval is untouched
    if how == "subject":
        resp = api.http.post("/api/v1/subjects/user-42/revoke", json={}, headers=api.headers)
        assert resp.status_code == 200 and resp.get_json()["revoked"] == 1, resp.get_json()
    else:
        resp = api.http.delete(f"/api/v1/links/{s.jti}", headers=api.headers)
        assert resp.status_code == 200 and resp.get_json()["revoked"] == 1, resp.get_json()
    _assert_ended(any_app, api, s, laptop, csrf, "subject" if how == "subject" else "api")
    revoked = [r for r in rows(any_app, api.client.id) if r["event_type"] == "link.revoked"]
    assert [r["jti"] for r in revoked] == [s.jti]
    # Revoked once: a second revocation counts nothing.
    again = api.http.delete(f"/api/v1/links/{s.jti}", headers=api.headers)
    assert again.status_code == 200 and again.get_json()["revoked"] == 0
    o, o_laptop, o_csrf = other
    code_from(o_laptop.post(o.wait_path + "/complete", data={"csrf": o_csrf}))
    # Completed: the link is used, and stays so.
    assert api.http.delete(f"/api/v1/links/{o.jti}", headers=api.headers).status_code == 409


@pytest.mark.parametrize("how", ["client", "key"])
def test_disabling_the_client_or_revoking_the_key_ends_an_approved_sign_in(
    any_app, how, link_format
):
    from linksvc.store import db
    from tests.webhooks.test_webhooks import add_endpoint, rows

    api = make_api_user(any_app, link_format=link_format)
    add_endpoint(any_app, api.client.id)
    s, laptop, csrf = _approved(any_app, api)
    runner = any_app.test_cli_runner()
    if how == "client":
        out = runner.invoke(args=["clients", "disable", api.client.id])
    else:
        with db.read(services(any_app).links.engine) as conn:
            kid = conn.execute(
                db.links.select().with_only_columns(db.links.c.kid).where(db.links.c.jti == s.jti)
            ).scalar_one()
        out = runner.invoke(args=["keys", "revoke", kid, "--yes"])
    assert out.exit_code == 0, out.output
    assert "revoked 1 approved sign-in(s)" in out.output
    if how == "client":
        runner.invoke(args=["clients", "enable", api.client.id])  # even enabled again
        services(any_app).links.client_cache.clear()
    done = laptop.post(s.wait_path + "/complete", data={"csrf": csrf})
    assert done.status_code != 303
    assert laptop.get(s.wait_path + "/status").get_json() == {"state": "ended"}
    with db.read(services(any_app).links.engine) as conn:
        made = conn.execute(db.codes.select().where(db.codes.c.jti == s.jti)).first()
        assert made is None  # no code was made
        state = conn.execute(
            db.links.select().with_only_columns(db.links.c.state).where(db.links.c.jti == s.jti)
        ).scalar_one()
    assert state == "revoked"
    assert ("revoked", how) in events(api, s.jti)
    revoked = [r for r in rows(any_app, api.client.id) if r["event_type"] == "link.revoked"]
    assert [r["jti"] for r in revoked] == [s.jti]
    assert json.loads(revoked[0]["payload"])["data"]["via"] == how


def test_completion_racing_a_subject_revocation_never_leaves_a_usable_code(any_app, link_format):
    """The laptop completes while the application suspends the subject, at one instant,
    several rounds: either the revocation came first (it counts the sign-in, no code is
    made) or the completion did (its code is voided); no code is ever exchanged after."""
    import threading

    api = make_api_user(any_app, link_format=link_format)
    outcomes = []
    for r in range(6):
        subject = f"race-{r}"
        s, laptop, csrf = _approved(any_app, api, subject, email=f"{subject}@example.org")
        results: dict[str, Any] = {}
        go = threading.Barrier(2)

        def complete(results=results, s=s, laptop=laptop, csrf=csrf) -> None:
            go.wait()
            results["done"] = laptop.post(s.wait_path + "/complete", data={"csrf": csrf})

        def revoke(results=results, subject=subject) -> None:
            http = any_app.test_client()
            go.wait()
            results["revoke"] = http.post(
                f"/api/v1/subjects/{subject}/revoke", json={}, headers=api.headers
            )

        threads = [threading.Thread(target=complete), threading.Thread(target=revoke)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        done, revoked = results["done"], results["revoke"]
        assert revoked.status_code == 200, revoked.get_json()
        n = revoked.get_json()["revoked"]
        if done.status_code == 303:  # the completion won: its code is voided
            assert n == 0 and link_state(api, s.jti) == "consumed"
            code = code_from(done)
            resp = api.http.post("/api/v1/codes/exchange", json={"code": code}, headers=api.headers)
            assert resp.status_code == 410 and resp.get_json()["code"] == "code_revoked"
            outcomes.append("completed first")
        else:  # the revocation won: counted, and nothing to complete
            assert n == 1 and link_state(api, s.jti) == "revoked"
            assert laptop.get(s.wait_path + "/status").get_json() == {"state": "ended"}
            outcomes.append("revoked first")
    print(outcomes)


# -- the code is bound to the application's browser session (login CSRF) ----------------

VERIFIER = "s" * 43


def _exchange(api: Any, code: str, verifier: str | None) -> Any:
    body = {"code": code} if verifier is None else {"code": code, "code_verifier": verifier}
    return api.http.post("/api/v1/codes/exchange", json=body, headers=api.headers)


@pytest.mark.parametrize("how", ["press", "typed", "approved"])
def test_a_bound_sign_in_ends_in_a_code_that_needs_its_verifier(app, api, laptop, phone, how):
    """An attacker completes a sign-in of their own and sends a victim's browser to the
    final ``?code=``: the victim's application session holds another verifier, or none,
    and the code signs nobody in — whichever way the sign-in completed."""

    def complete() -> tuple[Started, str]:
        s = start(app, api, subject="attacker", code_challenge=codes.challenge_of(VERIFIER))
        wait = laptop.get(s.wait_path)
        if how == "press":
            page = laptop.get(s.link_path)
            return s, code_from(laptop.post(s.link_path, data={"csrf": csrf_of(page)}))
        if how == "typed":
            form = {"csrf": csrf_of(wait), "code": s.code}
            return s, code_from(laptop.post(s.wait_path + "/code", data=form))
        page = phone.get(s.link_path)
        form = {"csrf": csrf_of(page), "number": match_of(wait), "action": "approve"}
        assert phone.post("/s/approve", data=form).status_code == 200
        return s, code_from(laptop.post(s.wait_path + "/complete", data={"csrf": csrf_of(wait)}))

    s, code = complete()
    refused = _exchange(api, code, None)
    assert (refused.status_code, refused.get_json()["code"]) == (422, "code_verifier_required")
    assert _exchange(api, code, VERIFIER).get_json()["code"] == "code_revoked"  # spent
    assert ("rejected", "code") in events(api, s.jti)
    s, code = complete()
    assert _exchange(api, code, "t" * 43).get_json()["code"] == "code_verifier_mismatch"
    s, code = complete()
    done = _exchange(api, code, VERIFIER)  # the session that started it
    assert done.status_code == 200 and done.get_json()["jti"] == s.jti


def test_a_malformed_code_challenge_starts_nothing(app, api):
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={
            "subject": "user-42",
            "email": ADDRESS,
            "ip": "203.0.113.7",
            "user_agent": FIREFOX_LINUX,
            "code_challenge": "not-a-challenge",
        },
        headers=api.headers,
    )
    assert resp.status_code == 422 and resp.get_json()["field"] == "code_challenge"


def visible_text(resp: Any) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True)))


def test_end_pages_speak_plainly_and_lead_onward(app, api, laptop, phone):
    """No reason code is shown on an end page (only a data-reason attribute for machines),
    and each offers a way onward: back to the application, and a new link where one helps."""
    s = start(app, api)
    wait = laptop.get(s.wait_path)
    page = phone.get(s.link_path)
    form = {"csrf": csrf_of(page), "action": "approve", "number": match_of(wait)}
    ok = phone.post("/s/approve", data=form)
    assert reason_of(ok) == "approved_elsewhere"
    assert "approved_elsewhere" not in visible_text(ok) and "Reason" not in visible_text(ok)
    app_origin = REDIRECT.split("/callback")[0] + "/"
    assert f'id="return" href="{app_origin}"' in ok.get_data(as_text=True)

    s2 = start(app, api, subject="user-43")
    wait2 = laptop.get(s2.wait_path)
    page2 = phone.get(s2.link_path)
    wrong = {"csrf": csrf_of(page2), "action": "approve", "number": wrong_number(match_of(wait2))}
    stopped = phone.post("/s/approve", data=wrong)
    assert reason_of(stopped) == "wrong_number" and "wrong_number" not in visible_text(stopped)
    denied = laptop.get(s2.wait_path)
    assert reason_of(denied) == "denied" and "This sign-in was stopped" in visible_text(denied)
    body = denied.get_data(as_text=True)
    assert 'id="return"' in body and "Return to Acme" in visible_text(denied)
    assert "go back to Acme and ask for one" in visible_text(denied)
    # The other browser is told where to go, not "other_browser".
    other = phone.get(s2.wait_path)
    assert reason_of(other) == "other_browser" and "other_browser" not in visible_text(other)
