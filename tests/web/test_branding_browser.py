"""Branding in Chromium (issue 23): a branded client's pages show its logo and colour (the
primary button's computed style) and nothing of another client's, pass axe-core, and keep the
strict CSP (no violation reported). Three clients on one gunicorn: Acme (JWT links, teal,
logo, support contact), Globex (short links, dark red, its own logo) and Plain (nothing set).

The journey of a branded client and of the short-link format is screenshotted at desktop and
phone sizes into ``<basetemp>/screenshots/branding`` (or ``$LINKSVC_TEST_ARTEFACTS/branding``);
with ``LINKSVC_UPDATE_SCREENSHOTS=1`` into ``docs/screenshots/branding`` (committed):

    LINKSVC_UPDATE_SCREENSHOTS=1 .venv/bin/pytest -p no:cacheprovider tests/web/test_branding_browser.py
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from tests.support.browsers import ARGS, CHROMIUM
from tests.support.env import ROOT, base_env, flask_cli, free_port, missing
from tests.support.servers import start_gunicorn
from tests.web.test_a11y import SIZES, serious

pytestmark = pytest.mark.slow

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"

BRANDS = {
    "acme": {"display": "Acme Notes", "color": "#0f766e", "fill": (15, 118, 110), "format": "jwt"},
    "globex": {"display": "Globex", "color": "#9f1239", "fill": (159, 18, 57), "format": "short"},
}


def _logo(fill: tuple[int, int, int], letter_box: bool = True) -> bytes:
    """A small logo: a rounded square in the brand colour with a white bar (a mark)."""
    im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((0, 0, 159, 159), radius=32, fill=fill)
    if letter_box:
        d.rectangle((40, 70, 120, 90), fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Client:
    name: str
    id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class Stack:
    url: str
    outbox: Path
    shots: Path
    clients: dict[str, Client]

    def mint(self, name: str, subject: str) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/api/v1/links",
            headers=self.clients[name].headers,
            json={"purpose": "magic_link", "subject": subject},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def redeem(self, name: str, token: str) -> None:
        resp = requests.post(
            f"{self.url}/api/v1/links/redeem",
            headers=self.clients[name].headers,
            json={"token": token, "purpose": "magic_link"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

    def sign_in(self, name: str, subject: str) -> tuple[str, str]:
        """A sign-in's waiting page and the link mailed for it."""
        resp = requests.post(
            f"{self.url}/api/v1/sign-ins",
            headers=self.clients[name].headers,
            json={
                "subject": subject,
                "email": f"{subject}@example.org",
                "ip": "127.0.0.1",
                "user_agent": UA,
            },
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        for path in self.outbox.glob("*.eml"):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg["X-Linksvc-Jti"] == body["jti"]:
                text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                return body["wait_url"], re.search(r"https?://\S+/l/\S+", text).group(0)  # type: ignore[union-attr]
        raise AssertionError("no mail")


def _shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LINKSVC_TEST_ARTEFACTS")
    if os.environ.get("LINKSVC_UPDATE_SCREENSHOTS") == "1":
        shots = ROOT / "docs" / "screenshots" / "branding"
    elif where:
        shots = Path(where) / "branding"
    else:
        shots = tmp_path_factory.getbasetemp() / "screenshots" / "branding"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    tmp = tmp_path_factory.mktemp("branding-browser")
    port = free_port()
    env = base_env(
        tmp / "instance",
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
        LINKSVC_PAGE_RATE_LIMIT="100000 per minute",
    )
    flask_cli(env, "init-db")
    made: dict[str, Client] = {}
    for name in ("acme", "globex", "plain"):
        args = [
            "clients", "create", name, "--purposes", "magic_link",
            "--redirect-uri", f"http://127.0.0.1:{port}/", "--restart-uri", f"http://127.0.0.1:{port}/",
            "--mint-limit", "100000 per minute", "--subject-limit", "100000 per minute", "--json",
        ]  # fmt: skip
        brand = BRANDS.get(name)
        if brand is not None:
            logo = tmp / f"{name}.png"
            logo.write_bytes(_logo(brand["fill"]))
            args += [
                "--display-name", brand["display"], "--brand-color", brand["color"],
                "--logo", str(logo), "--link-format", brand["format"],
                "--support-url", f"https://{name}.example/help",
                "--support-email", f"help@{name}.example",
            ]  # fmt: skip
        created = json.loads(flask_cli(env, *args).stdout)
        made[name] = Client(name, created["client_id"], created["api_key"])
    server = start_gunicorn(env, workers=2, port=port, log_path=tmp / "gunicorn.log")
    try:
        yield Stack(server.url, tmp / "instance" / "outbox", _shots_dir(tmp_path_factory), made)
    finally:
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


def _rgb(color: str) -> str:
    return "rgb({}, {}, {})".format(*(int(color[i : i + 2], 16) for i in (1, 3, 5)))


def _page(browser: Any, size: str) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(user_agent=UA, **SIZES[size])
    page = context.new_page()
    page.set_default_timeout(15000)
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(m.text) if m.type == "error" else None,
    )
    return context, page, problems


def _assert_branded(page: Any, stack: Stack, name: str) -> None:
    """The page shows ``name``'s logo (loaded) and colour, and nothing of the others."""
    me = stack.clients[name]
    brand = BRANDS[name]
    logo = page.locator("#brand-logo")
    assert me.id in logo.get_attribute("src")
    assert logo.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#brand-name").inner_text() == brand["display"]
    primary = page.locator("main button:not(.secondary), main a.button:not(.secondary)").first
    assert primary.evaluate("el => getComputedStyle(el).backgroundColor") == _rgb(brand["color"])
    html = page.content()
    for other, c in stack.clients.items():
        if other != name:
            assert c.id not in html, other
            if other in BRANDS:
                assert BRANDS[other]["display"] not in html
    # the other brand's colour appears nowhere in the page's style either
    for other, b in BRANDS.items():
        if other != name:
            css = page.evaluate(
                "() => [...document.styleSheets].flatMap(s => [...s.cssRules].map(r => r.cssText)).join(' ')"
            )
            assert _rgb(b["color"]) not in css and b["color"] not in css


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", sorted(BRANDS))
def test_branded_journey(browser, stack, name, size):
    """Confirmation, the used link's page, the sign-in's waiting and approval pages: each in
    the client's colours with its logo, passing axe, without a CSP report; screenshotted."""
    context, page, problems = _page(browser, size)
    other_ctx, other, other_problems = _page(browser, size)
    tag = f"{name}_{'short' if BRANDS[name]['format'] == 'short' else 'jwt'}_{size}"
    try:
        link = stack.mint(name, f"user-{size}")
        if BRANDS[name]["format"] == "short":
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/l/[0-9A-Za-z]{26}", link["url"])
        page.goto(link["url"])
        _assert_branded(page, stack, name)
        assert serious(page) == []
        page.screenshot(path=str(stack.shots / f"{tag}_1_confirm.png"), full_page=True)
        stack.redeem(name, link["token"])
        resp = page.goto(link["url"])
        assert resp.status == 409
        _assert_branded(page, stack, name)
        assert page.locator("#support-url").get_attribute("href") == f"https://{name}.example/help"
        assert page.locator("#support-email").inner_text() == f"help@{name}.example"
        assert serious(page) == []
        page.screenshot(path=str(stack.shots / f"{tag}_2_used.png"), full_page=True)
        wait_url, mailed = stack.sign_in(name, f"signin-{size}")
        page.goto(wait_url)
        _assert_branded(page, stack, name)
        assert serious(page) == []
        page.screenshot(path=str(stack.shots / f"{tag}_3_waiting.png"), full_page=True)
        other.goto(mailed)
        _assert_branded(other, stack, name)
        assert serious(other) == []
        other.screenshot(path=str(stack.shots / f"{tag}_4_approval.png"), full_page=True)
        other.get_by_role("button", name="Deny").click()
        other.wait_for_selector("[data-reason]")
        _assert_branded_end(other, stack, name)
        other.screenshot(path=str(stack.shots / f"{tag}_5_denied.png"), full_page=True)
    finally:
        context.close()
        other_ctx.close()
    csp = [p for p in problems + other_problems if "Content Security Policy" in p]
    assert csp == [], csp


def _assert_branded_end(page: Any, stack: Stack, name: str) -> None:
    me = stack.clients[name]
    assert me.id in page.locator("#brand-logo").get_attribute("src")
    assert page.locator("#support-contact").is_visible()
    assert serious(page) == []


def test_an_unbranded_clients_pages_show_linksvcs_own_look(browser, stack):
    context, page, _ = _page(browser, "desktop")
    try:
        link = stack.mint("plain", "user-plain")
        page.goto(link["url"])
        assert page.locator("#brand-logo").count() == 0
        assert page.locator("#brand-style").count() == 0
        button = page.locator("#confirm button")
        assert button.evaluate("el => getComputedStyle(el).backgroundColor") == _rgb("#0b57d0")
        html = page.content()
        assert all(c.id not in html for n, c in stack.clients.items() if n != "plain")
    finally:
        context.close()


def test_a_new_colour_shows_without_a_restart(browser, stack):
    context, page, _ = _page(browser, "desktop")
    c = stack.clients["plain"]
    try:
        resp = requests.put(
            f"{stack.url}/api/v1/branding",
            headers=c.headers,
            json={"brand_color": "#ffd700"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        link = stack.mint("plain", "user-recolour")
        page.goto(link["url"])
        button = page.locator("#confirm button")
        assert button.evaluate("el => getComputedStyle(el).backgroundColor") == _rgb("#ffd700")
        # gold takes the near-black text, which reads at 4.5:1 or better
        assert button.evaluate("el => getComputedStyle(el).color") == _rgb("#1b1f24")
        assert serious(page) == []
    finally:
        requests.put(
            f"{stack.url}/api/v1/branding",
            headers=c.headers,
            json={"brand_color": None},
            timeout=10,
        )
        context.close()
