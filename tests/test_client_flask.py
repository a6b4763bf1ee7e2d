"""The client's Flask helper and webhook verification, and the README's example run as
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
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

import linksvc_client as lc
from linksvc import webhook_signature
from linksvc_client import ExchangedCode, LinksvcError
from linksvc_client.flask import Linksvc
from linksvc_client.webhooks import WebhookVerificationError, construct_event

from .client_support import Live, live_linksvc, press
from .support import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with live_linksvc(tmp_path_factory.mktemp("client_flask")) as live:
        yield live


def _app(live: Live) -> tuple[Flask, Linksvc, list[ExchangedCode], list[LinksvcError]]:
    app = Flask("relying")
    app.config.update(LINKSVC_URL=live.url, LINKSVC_API_KEY=live.api_key, LINKSVC_TIMEOUT=5)
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
        return linksvc.mint("magic_link", "user-7").url

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


# -- the README's example, as written ------------------------------------------------------


def test_the_readme_example_runs_as_written(live, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use it from Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
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
