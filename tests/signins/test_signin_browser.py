"""Sign-ins in real browsers: headless Chromium with two contexts — a desktop (the requesting
browser, at the waiting page) and a phone (where the mail is opened) — against linksvc under
gunicorn and the example application's ``/callback``.

Every path of PRODUCT §6: the link in the same browser; the link on the phone with the right
number, a wrong number, Deny; the code typed on the desktop, right and wrong five times; the
phone opening the ``wait_url``; the link opened after completion; the waiting page without
JavaScript. Each page is screenshotted into ``<basetemp>/screenshots/signins`` (or
``$LINKSVC_TEST_ARTEFACTS/signins``); with ``LINKSVC_UPDATE_SCREENSHOTS=1`` into
``docs/screenshots/signins`` (committed, shown in docs/sign-ins.md) instead.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from linksvc_client import code_challenge
from tests.support.env import ROOT, base_env, flask_cli, free_port, missing
from tests.support.servers import start_gunicorn

#: The code_verifier of the sign-ins the tests start for the desktop (see ``_wait``).
VERIFIER = "signin-browser-test-verifier-" + "v" * 14

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
ADDRESS = "dana@example.org"


@dataclass
class Mail:
    link: str
    code: str


@dataclass
class Stack:
    linksvc: str
    app: str
    api_key: str
    outbox: Path
    shots: Path
    #: The example app's session cookie of a browser that holds :data:`VERIFIER`.
    flow_cookie: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def start(self, subject: str, user_agent: str = DESKTOP_UA) -> dict[str, Any]:
        """What the application does when a user asks to sign in."""
        resp = requests.post(
            f"{self.linksvc}/api/v1/sign-ins",
            headers=self.headers,
            timeout=10,
            json={
                "subject": subject,
                # One address per sign-in: the per-recipient mail limit counts addresses.
                "email": f"{subject}.{ADDRESS}",
                "ip": "127.0.0.1",
                "user_agent": user_agent,
                # Bound to the browser that asks, as the example app binds it (see _wait).
                "code_challenge": code_challenge(VERIFIER),
            },
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def mail(self, jti: str) -> Mail:
        for path in self.outbox.glob("*.eml"):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg["X-Linksvc-Jti"] == jti:
                text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                link = re.search(r"https?://\S+/l/\S+", text)
                code = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", text)
                assert link and code, text
                return Mail(link.group(0), code.group(1))
        raise AssertionError(f"no mail for {jti}")

    def link_state(self, jti: str) -> dict[str, Any]:
        return requests.get(
            f"{self.linksvc}/api/v1/links/{jti}", headers=self.headers, timeout=10
        ).json()


def _shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LINKSVC_TEST_ARTEFACTS")
    if os.environ.get("LINKSVC_UPDATE_SCREENSHOTS") == "1":
        shots = ROOT / "docs" / "screenshots" / "signins"
    elif where:
        shots = Path(where) / "signins"
    else:
        shots = tmp_path_factory.getbasetemp() / "screenshots" / "signins"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _load_example() -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "relying_app", ROOT / "examples" / "relying_app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["relying_app"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    from werkzeug.serving import make_server

    tmp = tmp_path_factory.mktemp("signin-browser")
    port, app_port = free_port(), free_port()
    env = base_env(
        tmp / "instance",
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
        LINKSVC_PAGE_RATE_LIMIT="100000 per minute",
    )
    flask_cli(env, "init-db")
    created = json.loads(
        flask_cli(
            env,
            "clients",
            "create",
            "acme",
            "--display-name",
            "Acme",
            "--purposes",
            "magic_link",
            "--redirect-uri",
            f"http://127.0.0.1:{app_port}/callback",
            "--mint-limit",
            "100000 per minute",
            "--subject-limit",
            "100000 per minute",
            "--json",
        ).stdout
    )
    server = start_gunicorn(env, workers=2, port=port, log_path=tmp / "gunicorn.log")
    example = _load_example().create_app(
        {
            "LINKSVC_URL": server.url,
            "LINKSVC_API_KEY": created["api_key"],
            "RELYING_APP_URL": f"http://127.0.0.1:{app_port}",
        }
    )
    http = make_server("127.0.0.1", app_port, example, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield Stack(
            server.url,
            f"http://127.0.0.1:{app_port}",
            created["api_key"],
            tmp / "instance" / "outbox",
            _shots_dir(tmp_path_factory),
            example.session_interface.get_signing_serializer(example).dumps(
                {"linksvc_code_verifier": VERIFIER}
            ),
        )
    finally:
        http.shutdown()
        server.stop()
        log = server.log()
        assert "Traceback" not in log
        assert ADDRESS not in log


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        b.phone_profile = pw.devices["Pixel 7"]
        try:
            yield b
        finally:
            b.close()


class Device:
    """One browser context and its page, with every CSP or script error it met."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(15000)
        self.problems: list[str] = []
        # CSP violations and script errors; not a missing /favicon.ico.
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))


@pytest.fixture
def desktop(browser: Any) -> Iterator[Device]:
    d = Device(browser.new_context(user_agent=DESKTOP_UA, viewport={"width": 1100, "height": 760}))
    yield d
    d.context.close()
    assert d.problems == [], d.problems  # no CSP violation, no script error


@pytest.fixture
def phone(browser: Any) -> Iterator[Device]:
    d = Device(browser.new_context(**browser.phone_profile))
    yield d
    d.context.close()
    assert d.problems == [], d.problems


def _shot(stack: Stack, device: Device, name: str) -> None:
    device.page.screenshot(path=str(stack.shots / f"{name}.png"), full_page=True)


def _wait(desktop: Device, stack: Stack, subject: str) -> tuple[dict[str, Any], Mail, str]:
    """Start a sign-in as the application would and send the desktop to its waiting page."""
    started = stack.start(subject)
    # The desktop is the browser that asked: it holds the sign-in's verifier in its session
    # with the example app, as if it had asked through the app's form.
    desktop.context.add_cookies([{"name": "rp_flow", "value": stack.flow_cookie, "url": stack.app}])
    desktop.page.goto(started["wait_url"])
    assert desktop.page.locator("h1").inner_text() == "Check your mail"
    number = desktop.page.locator("#match-number").inner_text()
    assert re.fullmatch(r"[1-9][0-9]", number)
    return started, stack.mail(started["jti"]), number


def _signed_in(device: Device, stack: Stack, subject: str) -> None:
    device.page.wait_for_url(stack.app + "/")
    assert device.page.locator("#subject").inner_text() == subject
    assert "code=" not in device.page.url


def test_link_in_the_same_browser(desktop, stack):
    started, mail, _ = _wait(desktop, stack, "user-same")
    _shot(stack, desktop, "01-waiting-page-desktop")
    desktop.page.goto(mail.link)
    assert desktop.page.locator("h1").inner_text() == "Sign in to Acme"
    _shot(stack, desktop, "02-confirmation-same-browser")
    desktop.page.get_by_role("button", name="Sign in to Acme").click()
    _signed_in(desktop, stack, "user-same")
    _shot(stack, desktop, "03-signed-in-desktop")
    assert stack.link_state(started["jti"])["state_via"] == "page"


def test_phone_approves_with_the_right_number(desktop, phone, stack):
    started, mail, number = _wait(desktop, stack, "user-phone")
    phone.page.goto(mail.link)
    assert phone.page.locator("h1").inner_text() == "Sign in to Acme on another device?"
    assert phone.page.locator("#requesting-browser").inner_text() == "Chrome on Linux"
    assert "ago" in phone.page.locator("#asked-ago").inner_text()
    approve = phone.page.get_by_role("button", name="Approve")
    deny = phone.page.get_by_role("button", name="Deny")
    # Deny is as plain as Approve: the same size, side by side.
    a, d = approve.bounding_box(), deny.bounding_box()
    assert abs(a["width"] - d["width"]) < 2 and abs(a["height"] - d["height"]) < 2
    _shot(stack, phone, "04-approval-page-phone")
    phone.page.get_by_label("Number shown where you asked").fill(number)
    approve.click()
    assert "you can close this page" in phone.page.locator("main").inner_text().lower()
    _shot(stack, phone, "05-approved-phone")
    # The waiting page's script sees the approval and completes, in the desktop only.
    _signed_in(desktop, stack, "user-phone")
    state = stack.link_state(started["jti"])
    assert state["state"] == "consumed" and state["state_via"] == "approve"
    assert [e["event"] for e in state["events"]].count("completed") == 1
    # The link opened after completion, on either device.
    for device in (phone, desktop):
        resp = device.page.goto(mail.link)
        assert (
            resp.status == 409
            and device.page.locator("[data-reason]").get_attribute("data-reason") == "used"
        )
    _shot(stack, phone, "06-link-after-completion-phone")


def test_phone_with_a_wrong_number_stops_it(desktop, phone, stack):
    started, mail, number = _wait(desktop, stack, "user-wrong")
    phone.page.goto(mail.link)
    phone.page.get_by_label("Number shown where you asked").fill("10" if number != "10" else "11")
    phone.page.get_by_role("button", name="Approve").click()
    assert phone.page.locator("h1").inner_text() == "The number did not match"
    _shot(stack, phone, "07-wrong-number-phone")
    # The waiting page notices by itself.
    desktop.page.wait_for_selector("[data-reason]")
    assert desktop.page.locator("[data-reason]").get_attribute("data-reason") == "denied"
    _shot(stack, desktop, "08-denied-desktop")
    assert stack.link_state(started["jti"])["state"] == "revoked"


def test_phone_denies(desktop, phone, stack):
    started, mail, _ = _wait(desktop, stack, "user-deny")
    phone.page.goto(mail.link)
    phone.page.get_by_role("button", name="Deny").click()
    assert phone.page.locator("h1").inner_text() == "Sign-in denied"
    _shot(stack, phone, "09-denied-phone")
    desktop.page.wait_for_selector("[data-reason]")
    assert desktop.page.locator("[data-reason]").get_attribute("data-reason") == "denied"
    assert stack.link_state(started["jti"])["state"] == "revoked"


def test_code_typed_on_the_desktop(desktop, stack):
    started, mail, _ = _wait(desktop, stack, "user-code")
    desktop.page.get_by_label("Code from the mail").fill(mail.code.lower())
    _shot(stack, desktop, "10-code-typed-desktop")
    desktop.page.get_by_role("button", name="Sign in with the code").click()
    _signed_in(desktop, stack, "user-code")
    assert stack.link_state(started["jti"])["state_via"] == "code"


def test_five_wrong_codes(desktop, stack):
    started, mail, _ = _wait(desktop, stack, "user-codes")
    wrong = "0000-0000" if mail.code != "0000-0000" else "1111-1111"
    for left in (4, 3, 2, 1):
        desktop.page.get_by_label("Code from the mail").fill(wrong)
        desktop.page.get_by_role("button", name="Sign in with the code").click()
        notice = desktop.page.locator("#notice").inner_text()
        assert f"{left} {'try' if left == 1 else 'tries'} left" in notice
        if left == 4:
            _shot(stack, desktop, "11-wrong-code-desktop")
    desktop.page.get_by_label("Code from the mail").fill(wrong)
    desktop.page.get_by_role("button", name="Sign in with the code").click()
    assert desktop.page.locator("[data-reason]").get_attribute("data-reason") == "denied"
    _shot(stack, desktop, "12-five-wrong-codes-desktop")
    assert stack.link_state(started["jti"])["state"] == "revoked"


def test_phone_opening_the_wait_url(desktop, phone, stack):
    started, mail, _ = _wait(desktop, stack, "user-waiturl")
    resp = phone.page.goto(started["wait_url"])
    assert resp.status == 403
    assert phone.page.locator("h1").inner_text() == "Open this on the device where you asked"
    assert phone.page.locator("#match-number").count() == 0
    _shot(stack, phone, "13-wait-url-on-phone")
    # The desktop still completes.
    desktop.page.get_by_label("Code from the mail").fill(mail.code)
    desktop.page.get_by_role("button", name="Sign in with the code").click()
    _signed_in(desktop, stack, "user-waiturl")


def test_waiting_page_without_javascript(browser, phone, stack):
    nojs = Device(
        browser.new_context(
            user_agent=DESKTOP_UA,
            java_script_enabled=False,
            viewport={"width": 1100, "height": 760},
        )
    )
    try:
        _, mail, number = _wait(nojs, stack, "user-nojs")
        phone.page.goto(mail.link)
        phone.page.get_by_label("Number shown where you asked").fill(number)
        phone.page.get_by_role("button", name="Approve").click()
        nojs.page.get_by_role("button", name="I have approved it").click()
        _signed_in(nojs, stack, "user-nojs")
    finally:
        nojs.context.close()
