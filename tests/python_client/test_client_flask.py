"""The client's Flask helper and webhook verification, and the manual's example run as
written — all against a live linksvc under gunicorn."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st

import linksvc_client as lc
from linksvc.webhooks import signature as webhook_signature
from linksvc_client import ExchangedCode, LinksvcError
from linksvc_client.flask import Linksvc
from linksvc_client.webhooks import WebhookVerificationError, construct_event
from tests.support.env import ROOT
from tests.support.live import Live, live_linksvc, press

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with live_linksvc(tmp_path_factory.mktemp("client_flask")) as live:
        yield live


def _app(live: Live) -> tuple[Flask, Linksvc, list[ExchangedCode], list[LinksvcError]]:
    app = Flask("relying")
    app.config.update(LINKSVC_URL=live.url, LINKSVC_API_KEY=live.api_key, LINKSVC_TIMEOUT=5)
    app.secret_key = "test-only"
    linksvc = Linksvc(app)
    signed_in: list[ExchangedCode] = []
    refused: list[LinksvcError] = []

    def sign_in(result: ExchangedCode) -> tuple[str, int]:
        signed_in.append(result)
        return f"hello {result.subject}", 200

    def on_error(exc: LinksvcError) -> tuple[str, int]:
        refused.append(exc)
        return exc.code, 400

    @app.get("/callback")
    def callback():
        return linksvc.callback(sign_in=sign_in, on_error=on_error)

    @app.post("/send")
    def send():
        return linksvc.mint("magic_link", request.form.get("subject", "user-7")).url

    return app, linksvc, signed_in, refused


def test_init_app_and_the_callback_helper(live):
    app, linksvc, signed_in, refused = _app(live)
    http = app.test_client()
    url = http.post("/send").get_data(as_text=True)
    code = press(url)
    resp = http.get(f"/callback?code={code}")
    assert (resp.status_code, resp.get_data(as_text=True)) == (200, "hello user-7")
    assert signed_in[0].subject == "user-7" and signed_in[0].purpose == "magic_link"
    # The same code again (a double click): the error handler decides, with CodeUsed.
    assert http.get(f"/callback?code={code}").status_code == 400
    assert isinstance(refused[-1], lc.CodeUsed)
    # No code, an overlong one, an unknown one: refused without a sign-in.
    for query in ("", "?code=", "?code=" + "x" * 200):
        assert http.get("/callback" + query).get_data(as_text=True) == "missing_code"
    assert http.get("/callback?code=nope").get_data(as_text=True) == "invalid_code"
    assert len(signed_in) == 1
    with app.app_context():
        assert linksvc.client.status(signed_in[0].jti).state == "consumed"


def test_an_attackers_code_does_not_sign_in_a_victims_browser(live):
    """Login CSRF: the attacker asks for a link in their own browser, presses it, keeps the
    ``/callback?code=…`` without following it and sends a victim's browser there."""
    app, _, signed_in, refused = _app(live)
    attacker, victim = app.test_client(), app.test_client()
    code = press(attacker.post("/send", data={"subject": "attacker"}).get_data(as_text=True))
    # A victim who never asked for a link: refused here, before linksvc is asked.
    assert victim.get(f"/callback?code={code}").get_data(as_text=True) == "code_verifier_required"
    assert isinstance(refused[-1], lc.CodeNotForThisBrowser)
    # A victim waiting for a link of their own: linksvc refuses the attacker's code, and spends it.
    own = press(victim.post("/send", data={"subject": "victim"}).get_data(as_text=True))
    assert victim.get(f"/callback?code={code}").get_data(as_text=True) == "code_verifier_mismatch"
    assert refused[-1].status == 422 and isinstance(refused[-1], lc.CodeNotForThisBrowser)
    assert attacker.get(f"/callback?code={code}").get_data(as_text=True) == "code_revoked"
    assert signed_in == []
    # The victim's own code, in the victim's browser, signs the victim in.
    assert victim.get(f"/callback?code={own}").get_data(as_text=True) == "hello victim"


def test_several_links_asked_for_in_one_browser_all_work(live):
    app, _, signed_in, _ = _app(live)
    http = app.test_client()
    first, second = (http.post("/send").get_data(as_text=True) for _ in range(2))
    for url in (first, second):
        assert http.get(f"/callback?code={press(url)}").status_code == 200
    assert len(signed_in) == 2


def test_binding_needs_the_apps_secret_key(live):
    app = Flask("no-secret")
    app.config.update(LINKSVC_URL=live.url, LINKSVC_API_KEY=live.api_key)
    ext = Linksvc(app)
    with app.test_request_context("/send"), pytest.raises(RuntimeError, match="SECRET_KEY"):
        ext.mint("magic_link", "user-7")


def test_init_app_later_and_without_settings(live):
    ext = Linksvc()
    app = Flask("late")
    with pytest.raises(RuntimeError, match="LINKSVC_URL"):
        ext.init_app(app)
    app.config.update(LINKSVC_URL=live.url, LINKSVC_API_KEY=live.api_key)
    ext.init_app(app)
    with app.app_context():
        assert ext.links_of("nobody").links == ()


def test_callback_without_on_error_raises(live):
    app = Flask("raw")
    app.config.update(LINKSVC_URL=live.url, LINKSVC_API_KEY=live.api_key)
    ext = Linksvc(app)
    with app.test_request_context("/callback?code=nope"), pytest.raises(lc.InvalidCode):
        ext.callback(sign_in=lambda r: "never", bind=False)
    # Bound (the default), a browser that asked for nothing is refused before linksvc is asked.
    with app.test_request_context("/callback?code=nope"), pytest.raises(lc.CodeNotForThisBrowser):
        ext.callback(sign_in=lambda r: "never")


# -- webhooks: deliveries signed by linksvc's own signer ---------------------------------


def _delivery(secrets: list[str], body: bytes, at: int) -> dict[str, str]:
    return webhook_signature.headers(secrets, "msg_2Kx", at, body)


def test_construct_event_accepts_a_genuine_delivery():
    secret = webhook_signature.new_secret()
    body = json.dumps(
        {
            "type": "link.consumed",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {"jti": "A" * 22, "subject": "user-1"},
        }
    ).encode()
    now = int(time.time())
    event = construct_event(body, _delivery([secret], body, now), secret)
    assert (event.id, event.type, event.data["subject"]) == ("msg_2Kx", "link.consumed", "user-1")
    assert event.timestamp.year == 2026
    # During a rotation the delivery is signed twice; either secret verifies it.
    old, new = webhook_signature.new_secret(), webhook_signature.new_secret()
    both = _delivery([old, new], body, now)
    assert construct_event(body, both, old).id == construct_event(body, both, [new]).id
    # Header names are case-insensitive; the body may come as text.
    upper = {k.upper(): v for k, v in _delivery([secret], body, now).items()}
    assert construct_event(body.decode(), upper, secret).type == "link.consumed"


@pytest.mark.parametrize(
    "tamper, code",
    [
        (lambda b, h, s: (b + b" ", h, s), "bad_webhook_signature"),
        (lambda b, h, s: (b, h, webhook_signature.new_secret()), "bad_webhook_signature"),
        (lambda b, h, s: (b, {**h, "webhook-id": "msg_other"}, s), "bad_webhook_signature"),
        (
            lambda b, h, s: (b, {k: v for k, v in h.items() if k != "webhook-signature"}, s),
            "missing_webhook_headers",
        ),
        (lambda b, h, s: (b, {**h, "webhook-timestamp": "soon"}, s), "bad_webhook_timestamp"),
    ],
    ids=["body", "secret", "id", "no-signature", "timestamp-text"],
)
def test_construct_event_refuses_a_tampered_delivery(tamper, code):
    secret = webhook_signature.new_secret()
    body = b'{"type":"link.minted","timestamp":"2026-12-01T10:00:00Z","data":{}}'
    b, h, s = tamper(body, _delivery([secret], body, int(time.time())), secret)
    with pytest.raises(WebhookVerificationError) as err:
        construct_event(b, h, s)
    assert err.value.code == code and isinstance(err.value, LinksvcError)


def test_construct_event_refuses_an_old_delivery():
    secret = webhook_signature.new_secret()
    body = b'{"type":"link.minted","timestamp":"2026-12-01T10:00:00Z","data":{}}'
    at = int(time.time())
    headers = _delivery([secret], body, at)
    assert construct_event(body, headers, secret, now=at + 299)
    with pytest.raises(WebhookVerificationError) as err:
        construct_event(body, headers, secret, now=at + 301)
    assert err.value.code == "webhook_timestamp_out_of_range"


@pytest.mark.parametrize(
    "forged, code",
    [
        ({"webhook-timestamp": "\u00b2"}, "bad_webhook_timestamp"),  # "²".isdigit() is true
        ({"webhook-timestamp": "\u0663\u0664"}, "bad_webhook_timestamp"),  # Arabic-Indic digits
        ({"webhook-timestamp": "9" * 5000}, "bad_webhook_timestamp"),  # beyond int()'s limit
        ({"webhook-signature": "v1,\u00e9t\u00e9"}, "bad_webhook_signature"),
        ({"webhook-signature": "v1,\udcff"}, "bad_webhook_signature"),
        ({"webhook-id": "msg_\udcff"}, "bad_webhook_signature"),
        ({"webhook-id": "msg_\u00e9"}, "bad_webhook_signature"),
    ],
    ids=["superscript", "arabic-digits", "5000-digits", "sig-latin1", "sig-surrogate",
         "id-surrogate", "id-latin1"],
)  # fmt: skip
def test_construct_event_refuses_forged_headers_with_its_own_error(forged, code):
    """A receiver written to the contract answers 401 on WebhookVerificationError; any other
    exception would be a 500 to an unauthenticated request."""
    secret = webhook_signature.new_secret()
    body = b'{"type":"link.minted","timestamp":"2026-12-01T10:00:00Z","data":{}}'
    headers = {**_delivery([secret], body, int(time.time())), **forged}
    with pytest.raises(WebhookVerificationError) as err:
        construct_event(body, headers, secret)
    assert err.value.code == code


_NOW = 1_700_000_000
# Digits of every script, long runs of ASCII ones, and a timestamp that is in range (so the
# signature check is reached).
_STAMP = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1),
    st.text(alphabet="0123456789", min_size=1, max_size=5000),
    st.just(str(_NOW)),
)


@settings(max_examples=300, deadline=None)
@given(
    msg_id=st.one_of(st.just("msg_2Kx"), st.text()),
    stamp=_STAMP,
    signature=st.one_of(st.text(), st.text().map(lambda t: "v1," + t)),
    body=st.binary(max_size=64),
)
def test_any_header_values_verify_or_raise_the_verification_error(msg_id, stamp, signature, body):
    secret = "whsec_" + "A" * 43 + "="
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    # Anything else (ValueError, TypeError…) escapes and fails the test.
    with contextlib.suppress(WebhookVerificationError):
        construct_event(body, headers, secret, now=_NOW)


# -- the manual's example, as written (docs/python-client.md) -------------------------------


def test_the_manuals_example_runs_as_written(live, tmp_path):
    page = (ROOT / "docs" / "python-client.md").read_text()
    code = re.search(r'```python title="example.py"\n(.*?)```', page, re.S)
    assert code, "the section has a python example"
    lines = [x for x in code.group(1).splitlines() if x.strip()]
    assert len(lines) <= 12, f"the example is {len(lines)} lines"
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")} | {
        "LINKSVC_URL": live.url,
        "LINKSVC_API_KEY": live.api_key,
    }
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert printed[0].startswith(f"mail this: {live.url}/l/")
    assert printed[1:] == ["user-42 {'next': '/inbox'}", "second try: used"]


# -- the example application (examples/relying_app.py) ------------------------------------


def _example(live: Live) -> Flask:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "relying_app", ROOT / "examples" / "relying_app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["relying_app"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.create_app(  # type: ignore[no-any-return]
        {"LINKSVC_URL": live.url, "LINKSVC_API_KEY": live.api_key}
    )


def _ask(browser, user_id: str) -> str:
    """Ask the example app for a sign-in link, as its form does; return the link."""
    form = browser.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    csrf = token.group(1) if token else ""
    sent = browser.post("/send", data={"csrf": csrf, "user_id": user_id, "purpose": "magic_link"})
    assert sent.status_code == 200, sent.get_data(as_text=True)[:300]
    return re.search(r'id="mailed-link" href="([^"]+)"', sent.get_data(as_text=True)).group(1)


def _reason(resp) -> str:
    return re.search(r'id="reason">([a-z_]+)<', resp.get_data(as_text=True)).group(1)


def test_example_app_send_needs_its_csrf_token(live):
    app = _example(live)
    http = app.test_client()
    body = {"user_id": "user-1", "purpose": "magic_link"}
    # Another site's form: no token, or one of another browser.
    assert http.post("/send", data=body).status_code == 400
    other = app.test_client()
    other_form = other.get("/").get_data(as_text=True)
    foreign = re.search(r'name="csrf" value="([^"]+)"', other_form).group(1)
    http.get("/")
    assert http.post("/send", data={**body, "csrf": foreign}).status_code == 400
    assert http.post("/send", data={**body, "csrf": ""}).status_code == 400
    assert _ask(http, "user-1").startswith(live.url + "/l/")  # with its own token: sent


def test_example_app_refuses_an_attackers_code_in_a_victims_browser(live):
    app = _example(live)
    attacker, victim = app.test_client(), app.test_client()
    code = press(_ask(attacker, "mallory"))  # kept, not followed
    # A victim who never asked for a link.
    resp = victim.get(f"/callback?code={code}")
    assert resp.status_code == 400 and _reason(resp) == "code_verifier_required"
    assert "did not ask for that link" in resp.get_data(as_text=True)
    assert victim.get_cookie("rp_session") is None and "mallory" not in victim.get("/").text
    # A victim who asked for a link of their own: linksvc refuses the code and spends it.
    own = _ask(victim, "ada")
    resp = victim.get(f"/callback?code={code}")
    assert resp.status_code == 400 and _reason(resp) == "code_verifier_mismatch"
    assert victim.get_cookie("rp_session") is None
    assert _reason(attacker.get(f"/callback?code={code}")) == "code_revoked"
    # The victim's own link signs the victim in, in the victim's browser.
    done = victim.get(f"/callback?code={press(own)}")
    assert done.status_code == 303 and victim.get_cookie("rp_session") is not None
    assert 'id="subject">ada<' in victim.get("/").get_data(as_text=True)
