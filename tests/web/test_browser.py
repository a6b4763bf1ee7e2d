"""Real browser journeys: headless Chromium (Debian's, driven by Playwright) against linksvc under
gunicorn and the example relying application, each on a free port.

- sign-in through the example app ends signed in (server-side session cookie, nothing in storage);
- password reset ends on the app's reset page with the subject;
- a double click on the button still ends signed in;
- mail scanners (GET, HEAD, prefetch, link preview, a GET following redirects) leave the link usable;
- each failure page is shown with its status; a screenshot of each is saved under the test run's
  temporary folder (``<basetemp>/screenshots``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from linksvc.services import services
from tests.support import hostile
from tests.support.browsers import ARGS, CHROMIUM
from tests.support.env import ROOT, base_env, flask_cli, free_port, missing
from tests.support.servers import start_gunicorn

#: The code_verifier the tests' own mints bind their links to (see :func:`_asked_here`).
VERIFIER = "browser-test-verifier-" + "v" * 21


@dataclass
class Stack:
    linksvc: str
    app: str
    api_key: str
    env: dict[str, str]
    shots: Path
    #: The example app's session cookie of a browser that holds :data:`VERIFIER`.
    flow_cookie: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def mint(
        self, purpose: str = "magic_link", subject: str = "user-42", **extra: Any
    ) -> dict[str, Any]:
        resp = requests.post(
            f"{self.linksvc}/api/v1/links",
            headers=self.headers,
            timeout=10,
            json={"purpose": purpose, "subject": subject, **_bound(purpose), **extra},
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def state(self, jti: str) -> dict[str, Any]:
        return requests.get(
            f"{self.linksvc}/api/v1/links/{jti}", headers=self.headers, timeout=10
        ).json()


def _bound(purpose: str) -> dict[str, str]:
    """A sign-in or reset link is minted bound to :data:`VERIFIER`, as the example app
    binds it to the browser that asks."""
    if purpose == "download":
        return {}
    from linksvc_client import code_challenge

    return {"code_challenge": code_challenge(VERIFIER)}


def _asked_here(page: Any, stack: Stack) -> None:
    """Make ``page``'s browser the one that asked for the tests' own mints: it holds their
    verifier in its example-app session, as if it had asked through the app's form (a
    browser that did not is refused at the callback — that is the point)."""
    page.context.add_cookies([{"name": "rp_flow", "value": stack.flow_cookie, "url": stack.app}])


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "relying_app", ROOT / "examples" / "relying_app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["relying_app"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    from werkzeug.serving import make_server

    tmp = tmp_path_factory.mktemp("browser")
    where = os.environ.get("LINKSVC_TEST_ARTEFACTS")
    shots = Path(where) if where else tmp_path_factory.getbasetemp() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
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
            "magic_link,password_reset",
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
        flow_cookie = example.session_interface.get_signing_serializer(example).dumps(
            {"linksvc_code_verifier": VERIFIER}
        )
        yield Stack(
            server.url, f"http://127.0.0.1:{app_port}", created["api_key"], env, shots, flow_cookie
        )
    finally:
        http.shutdown()
        server.stop()
        log = server.log()
        assert "Traceback" not in log


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(15000)
    try:
        yield pg
    finally:
        context.close()


def _request_link(page: Any, stack: Stack, subject: str, button: str) -> str:
    page.goto(stack.app + "/")
    page.get_by_label("User id").fill(subject)
    page.click(button)
    link = page.locator("#mailed-link")
    return link.get_attribute("href")


def _assert_session_cookie(page: Any, stack: Stack) -> None:
    cookies = {c["name"]: c for c in page.context.cookies(stack.app)}
    session = cookies["rp_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    # Nothing in browser storage: the session lives on the server.
    assert page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]


def test_sign_in_journey(page, stack):
    url = _request_link(page, stack, "user-42", "#send-sign-in")
    assert url.startswith(stack.linksvc + "/l/")
    page.click("#mailed-link")
    assert page.locator("h1").inner_text() == "Sign in to Acme"
    page.get_by_role("button", name="Sign in to Acme").click()
    page.wait_for_url(stack.app + "/")
    assert page.locator("#subject").inner_text() == "user-42"
    _assert_session_cookie(page, stack)
    # The pressed link is spent; the URL bar never held the code past the callback.
    assert "code=" not in page.url
    page.screenshot(path=str(stack.shots / "signed_in.png"))


def test_reset_journey(page, stack):
    url = _request_link(page, stack, "user-7", "#send-reset")
    page.goto(url)
    assert page.locator("h1").inner_text() == "Reset your Acme password"
    page.get_by_role("button", name="Reset my password").click()
    page.wait_for_url(stack.app + "/reset")
    assert page.locator("#subject").inner_text() == "user-7"
    page.screenshot(path=str(stack.shots / "reset_page.png"))
    page.get_by_label("New password").fill("correct horse battery")
    page.get_by_role("button", name="Set password").click()
    assert page.locator("#reset-done").is_visible()


def test_double_click_still_signs_in(page, stack):
    url = _request_link(page, stack, "user-dbl", "#send-sign-in")
    page.goto(url)
    page.get_by_role("button", name="Sign in to Acme").dblclick()
    page.wait_for_url(stack.app + "/")
    assert page.locator("#subject").inner_text() == "user-dbl"


def test_second_press_after_a_lost_first_response_still_signs_in(page, stack):
    """The first press reached linksvc and consumed the link, but its answer never reached the
    browser (a double click cancels it, a flaky network drops it): pressing again completes."""
    link = stack.mint(subject="user-again")
    _asked_here(page, stack)
    page.goto(link["url"])
    csrf = page.locator("input[name=csrf]").get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies(link["url"])}
    first = requests.post(
        link["url"],
        data={"csrf": csrf},
        cookies=cookies,
        allow_redirects=False,
        timeout=10,
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert first.status_code == 303
    assert stack.state(link["jti"])["state"] == "consumed"
    page.get_by_role("button", name="Sign in to Acme").click()
    page.wait_for_url(stack.app + "/")
    assert page.locator("#subject").inner_text() == "user-again"
    events = [e["event"] for e in stack.state(link["jti"])["events"]]
    assert events.count("consumed") == 1 and events.count("exchanged") == 1


def test_scanners_leave_the_link_usable(page, stack):
    link = stack.mint(subject="user-scanned")
    url = link["url"]
    assert requests.head(url, timeout=10).status_code == 200
    for headers in (
        {},
        {"Sec-Purpose": "prefetch"},
        {"Purpose": "prefetch"},
        {"User-Agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"},
        {"User-Agent": "facebookexternalhit/1.1"},
    ):
        resp = requests.get(url, headers=headers, timeout=10, allow_redirects=True)
        assert resp.status_code == 200 and "Sign in to Acme" in resp.text
    # A browser-grade scanner that renders the page (but does not press the button).
    page.goto(url)
    page.context.clear_cookies()
    assert stack.state(link["jti"])["state"] == "issued"
    _asked_here(page, stack)
    page.goto(url)
    page.get_by_role("button", name="Sign in to Acme").click()
    page.wait_for_url(stack.app + "/")
    assert page.locator("#subject").inner_text() == "user-scanned"


def _failure_cases(stack: Stack) -> list[tuple[str, str, int]]:
    used = stack.mint(subject="u1")
    assert (
        requests.post(
            f"{stack.linksvc}/api/v1/links/redeem",
            headers=stack.headers,
            timeout=10,
            json={"token": used["token"], "purpose": "magic_link"},
        ).status_code
        == 200
    )
    revoked = stack.mint(subject="u2")
    assert (
        requests.delete(
            f"{stack.linksvc}/api/v1/links/{revoked['jti']}", headers=stack.headers, timeout=10
        ).status_code
        == 200
    )
    old = stack.mint("password_reset", subject="u3")
    stack.mint("password_reset", subject="u3")
    # An expired token, signed with the running service's real key (no waiting for a clock).
    from linksvc import create_app

    app = create_app(stack.env)
    expired_case = next(c for c in hostile.CASES if c.name == "expired")
    expired = expired_case.build(app, stack.mint(subject="u4")["token"])
    services(app).links.engine.dispose()
    return [
        ("used", used["url"], 409),
        ("revoked", revoked["url"], 410),
        ("superseded", old["url"], 410),
        ("expired", f"{stack.linksvc}/l/{expired}", 410),
        ("invalid", f"{stack.linksvc}/l/not-a-token", 400),
        ("not_found", f"{stack.linksvc}/nothing-here", 404),
    ]


def test_failure_pages(page, stack):
    for reason, url, status in _failure_cases(stack):
        resp = page.goto(url)
        assert resp.status == status, (reason, resp.status)
        assert page.locator("[data-reason]").get_attribute("data-reason") == reason
        headers = resp.all_headers()
        assert (
            headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
        )
        assert "default-src 'none'" in headers["content-security-policy"]
        text = page.locator("main").inner_text()
        assert "Traceback" not in text and "u1" not in text
        if reason != "not_found":
            assert "new link" in text
        page.screenshot(path=str(stack.shots / f"failure_{reason}.png"), full_page=True)
    assert len(list(stack.shots.glob("failure_*.png"))) == 6


def test_phone_viewport_and_accessibility(browser, stack):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    try:
        pg = context.new_page()
        pg.goto(stack.mint(subject="user-phone")["url"])
        assert pg.evaluate("document.documentElement.lang") == "en"
        button = pg.get_by_role("button", name="Sign in to Acme")
        box = button.bounding_box()
        assert box["width"] >= 300 and box["height"] >= 44  # a comfortable tap target
        # No horizontal scrolling on a phone.
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        pg.screenshot(path=str(stack.shots / "confirm_phone.png"))
        # Works without JavaScript.
        context_nojs = browser.new_context(java_script_enabled=False)
        try:
            p2 = context_nojs.new_page()
            link = stack.mint(subject="user-nojs")
            _asked_here(p2, stack)
            p2.goto(link["url"])
            p2.get_by_role("button", name="Sign in to Acme").click()
            p2.wait_for_url(stack.app + "/")
            assert p2.locator("#subject").inner_text() == "user-nojs"
        finally:
            context_nojs.close()
    finally:
        context.close()


#: The screen sizes every page is photographed at.
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
#: The screenshots the README shows (copied to docs/screenshots/ with LINKSVC_UPDATE_SCREENSHOTS=1).
README_SHOTS = {"failure_used_phone.png", "api_docs_desktop.png"}


def test_screenshots_of_every_failure_page_the_landing_page_and_the_api_reference(browser, stack):
    """Every failure page (with its application's name, the time in words and "Request a new
    link"), the landing page and the API reference, at desktop and phone sizes, in the test
    artefacts; pages fit a phone without horizontal scrolling, and the reference loads with no
    CSP violation (its assets are served by linksvc)."""
    import shutil

    from tests.support.env import flask_cli

    restart = f"{stack.app}/"
    flask_cli(stack.env, "clients", "update", "acme", "--restart-uri", restart)
    cases = _failure_cases(stack)
    for size, options in VIEWPORTS.items():
        context = browser.new_context(**options)
        try:
            pg = context.new_page()
            pg.set_default_timeout(15000)
            problems: list[str] = []
            pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            for reason, url, status in cases:
                resp = pg.goto(url)
                assert resp.status == status, (reason, size)
                text = pg.locator("main").inner_text()
                if reason in ("used", "revoked", "superseded", "expired"):
                    assert "Acme" in text, (reason, text)
                    assert pg.locator("#restart").get_attribute("href") == restart
                    assert re.search(r"ago|just now|expired at \d\d:\d\d UTC", text), text
                assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                pg.screenshot(
                    path=str(stack.shots / f"failure_{reason}_{size}.png"), full_page=True
                )
            pg.goto(stack.linksvc + "/")
            assert pg.locator("h1").inner_text() == "linksvc"
            assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            pg.screenshot(path=str(stack.shots / f"landing_{size}.png"), full_page=True)
            pg.click("#api-docs")
            pg.wait_for_selector(".opblock")
            assert pg.locator(".opblock").count() >= 8
            pg.screenshot(path=str(stack.shots / f"api_docs_{size}.png"))
            blocked = [p for p in problems if "Content Security Policy" in p]
            assert not blocked, blocked
        finally:
            context.close()
    taken = {p.name for p in stack.shots.glob("*_desktop.png")} | {
        p.name for p in stack.shots.glob("*_phone.png")
    }
    assert len(taken) >= 2 * (len(cases) + 2)
    if os.environ.get("LINKSVC_UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for name in README_SHOTS:
            shutil.copy(stack.shots / name, target / name)
