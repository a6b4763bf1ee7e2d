"""Every end-user page in English, German, Japanese and Arabic, in real Chromium (issue 22),
at desktop and phone sizes, against linksvc under gunicorn and the example application.

- each page (confirmation, reset confirmation, used and invalid links, the landing page, the
  waiting page with and without a notice, the approval page, the end of a denied sign-in) is
  screenshotted into ``<basetemp>/screenshots/i18n`` (or ``$LINKSVC_TEST_ARTEFACTS/i18n``;
  with ``LINKSVC_UPDATE_SCREENSHOTS=1`` into ``docs/screenshots/i18n``, committed);
- every page carries ``<html lang dir>``; Arabic pages are right-to-left, mirrored: the primary
  button (Approve) sits to the right of Deny, the code field's text starts on the right;
- the visible text of a German or Japanese page holds no English sentence of the catalog;
- a German browser going through the example application gets German pages and a German mail.

Japanese and Arabic checks of the text need those catalogs translated; until then they skip
(the catalog check of `make lint` fails for them).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from babel.messages.pofile import read_po

from tests.i18n.test_i18n import needs
from tests.support.env import ROOT, base_env, flask_cli, free_port, missing
from tests.support.servers import start_gunicorn

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
#: Each language as a browser asks for it, and the page's expected lang and dir.
LANGUAGES = {
    "en": ("en-US", "en", "ltr"),
    "de": ("de-DE", "de", "ltr"),
    "ja": ("ja-JP", "ja", "ltr"),
    "ar": ("ar-EG", "ar", "rtl"),
}
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


@dataclass
class Stack:
    linksvc: str
    app: str
    api_key: str
    outbox: Path
    shots: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        resp = requests.post(
            f"{self.linksvc}/api/v1/{path}", headers=self.headers, timeout=10, json=body
        )
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def mail(self, jti: str) -> email.message.EmailMessage:
        for path in self.outbox.glob("*.eml"):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg["X-Linksvc-Jti"] == jti:
                return msg
        raise AssertionError(f"no mail for {jti}")


def _shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LINKSVC_TEST_ARTEFACTS")
    if os.environ.get("LINKSVC_UPDATE_SCREENSHOTS") == "1":
        shots = ROOT / "docs" / "screenshots" / "i18n"
    elif where:
        shots = Path(where) / "i18n"
    else:
        shots = tmp_path_factory.getbasetemp() / "screenshots" / "i18n"
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

    tmp = tmp_path_factory.mktemp("i18n-browser")
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
            "RELYING_APP_MAIL_DOMAIN": "example.com",
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
        )
    finally:
        http.shutdown()
        server.stop()
        assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def english_sentences() -> list[str]:
    """The English text of the catalog that a translated page must not show: every
    message's literal pieces (between placeholders) of three words or more."""
    with (ROOT / "linksvc" / "i18n" / "translations" / "messages.pot").open("rb") as fh:
        template = read_po(fh)
    pieces: set[str] = set()
    for message in template:
        for msgid in message.id if isinstance(message.id, tuple) else (message.id,):
            for piece in re.split(r"%\(\w+\)[sd]", msgid or ""):
                piece = piece.strip(" .,:;()")
                if len(piece.split()) >= 3:
                    pieces.add(piece)
    return sorted(pieces)


def _visible_text(pg: Any) -> str:
    return " ".join(pg.locator("body").inner_text().split())


def _check_page(pg: Any, lang: str, direction: str, name: str, stack: Stack, size: str) -> str:
    html = pg.locator("html")
    assert html.get_attribute("lang") == lang, name
    assert html.get_attribute("dir") == direction, name
    # Fits a phone without sideways scrolling, in every language.
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (name, size)
    pg.screenshot(path=str(stack.shots / f"{name}_{lang}_{size}.png"), full_page=True)
    return _visible_text(pg)


def _pages_in(browser: Any, stack: Stack, language: str, size: str) -> dict[str, str]:
    """Every end-user page in ``language`` at ``size``: screenshots, and the visible text of
    each, by page name."""
    accept, lang, direction = LANGUAGES[language]
    tag = language  # the BCP 47 tag minted with (these four are their own catalog names)
    texts: dict[str, str] = {}
    laptop = browser.new_context(locale=accept, user_agent=DESKTOP_UA, **VIEWPORTS[size])
    phone = browser.new_context(locale=accept, **VIEWPORTS["phone"])
    try:
        pg = laptop.new_page()
        pg.set_default_timeout(15000)
        sub = f"{language}-{size}-{uuid.uuid4().hex[:8]}"
        # The confirmation pages: the link's own locale.
        link = stack.post("links", purpose="magic_link", subject=sub, locale=tag)
        pg.goto(link["url"])
        texts["confirm"] = _check_page(pg, lang, direction, "confirm", stack, size)
        reset = stack.post("links", purpose="password_reset", subject=sub, locale=tag)
        pg.goto(reset["url"])
        texts["reset"] = _check_page(pg, lang, direction, "reset", stack, size)
        # A used link (its locale), an invalid link and the landing page (the browser's).
        used = stack.post(
            "links", purpose="magic_link", subject=sub, locale=tag, timezone="Asia/Tokyo"
        )
        requests.post(
            f"{stack.linksvc}/api/v1/links/redeem",
            headers=stack.headers,
            json={"token": used["token"], "purpose": "magic_link"},
            timeout=10,
        ).raise_for_status()
        assert pg.goto(used["url"]).status == 409
        texts["used"] = _check_page(pg, lang, direction, "failure_used", stack, size)
        assert pg.goto(stack.linksvc + "/l/not-a-link").status == 400
        texts["invalid"] = _check_page(pg, lang, direction, "failure_invalid", stack, size)
        pg.goto(stack.linksvc + "/")
        texts["landing"] = _check_page(pg, lang, direction, "landing", stack, size)
        # A sign-in: the waiting page, a wrong code, the approval page on the phone, Deny.
        started = stack.post(
            "sign-ins",
            subject=sub,
            email=f"{sub}@example.org",
            ip="127.0.0.1",
            user_agent=DESKTOP_UA,
            locale=tag,
        )
        pg.goto(started["wait_url"])
        texts["wait"] = _check_page(pg, lang, direction, "signin_wait", stack, size)
        pg.fill("#code", "AAAA-AAAA")
        pg.click("#code-form button")
        pg.wait_for_selector("#notice")
        texts["wait_notice"] = _check_page(pg, lang, direction, "signin_wrong_code", stack, size)
        if direction == "rtl":
            # The code field's text starts on the right, like the page.
            assert pg.eval_on_selector("#code", "e => getComputedStyle(e).textAlign") == "right"
        mail = stack.mail(started["jti"])
        assert mail["Content-Language"] == tag
        mailed = re.search(r"https?://\S+/l/\S+", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        assert mailed
        ph = phone.new_page()
        ph.set_default_timeout(15000)
        ph.goto(mailed.group(0))
        texts["approve"] = _check_page(ph, lang, direction, "signin_approve", stack, size)
        approve = ph.locator("#approve").bounding_box()
        deny = ph.locator("#deny").bounding_box()
        assert approve and deny
        if direction == "rtl":
            assert approve["x"] > deny["x"], "Approve (primary) sits on the right in RTL"
        else:
            assert approve["x"] < deny["x"]
        ph.click("#deny")
        ph.wait_for_selector("[data-reason]")
        texts["denied"] = _check_page(ph, lang, direction, "signin_denied", stack, size)
    finally:
        laptop.close()
        phone.close()
    return texts


@pytest.mark.parametrize("size", list(VIEWPORTS))
@pytest.mark.parametrize("language", list(LANGUAGES))
def test_every_page_in_the_language_with_lang_dir_and_a_screenshot(browser, stack, language, size):
    texts = _pages_in(browser, stack, language, size)
    if language == "en":
        assert "Sign in to Acme" in texts["confirm"]
        assert "Someone asked to sign in to Acme from Chrome on Linux" in texts["approve"]


@pytest.mark.parametrize("language", ["de", "ja"])
def test_translated_pages_show_no_english_sentence(browser, stack, language):
    needs(language)
    texts = _pages_in(browser, stack, language, "desktop")
    english = english_sentences()
    assert len(english) > 50
    for name, text in texts.items():
        if name == "landing":
            # The developers' links (API reference, problem types) stay English on purpose.
            text = text.split("API reference")[0]
        found = [e for e in english if e in text]
        assert not found, (language, name, found)


def test_arabic_pages_are_translated(browser, stack):
    needs("ar")
    texts = _pages_in(browser, stack, "ar", "phone")
    english = english_sentences()
    for name, text in texts.items():
        if name != "landing":
            assert not [e for e in english if e in text], name
        assert re.search("[\u0600-\u06ff]", text), name


def test_german_browser_gets_german_pages_and_mail_from_the_example_application(browser, stack):
    """Issue 22: the example application passes the browser's language to POST /sign-ins."""
    needs("de")
    context = browser.new_context(locale="de-DE", **VIEWPORTS["desktop"])
    try:
        pg = context.new_page()
        pg.set_default_timeout(15000)
        pg.goto(stack.app + "/")
        pg.get_by_label("User id").fill("hans")
        pg.click("#send-sign-in")
        pg.wait_for_url(re.compile(r".*/s/[A-Za-z0-9_-]+$"))
        assert pg.locator("html").get_attribute("lang") == "de"
        assert pg.locator("h1").inner_text() == "Sehen Sie in Ihren E-Mails nach"
        pg.screenshot(path=str(stack.shots / "example_app_wait_de_desktop.png"), full_page=True)
        signin_id = pg.url.rsplit("/", 1)[1]
    finally:
        context.close()
    for path in stack.outbox.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        if msg["To"] == "hans@example.com":
            assert msg["Content-Language"] == "de"
            assert msg["Subject"] == "Ihr Anmeldelink für Acme"
            assert "Öffnen Sie diesen Link, um sich anzumelden:" in text
            assert signin_id  # the mail belongs to the sign-in the page waits for
            return
    raise AssertionError("no mail to hans@example.com")
