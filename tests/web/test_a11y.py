"""Accessibility: every end-user page passes axe-core (the engine itself, pinned through
axe-playwright-python, which bundles axe.min.js: nothing is fetched at run time) with no
serious or critical violation, at phone (Pixel 7) and desktop sizes; and the sign-in journey
works with the keyboard alone. Runs against the real stack of tests/web/test_browser.py
(gunicorn + the example application); skips where Chromium is missing, except in CI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.test_browser import _failure_cases, _request_link, browser, stack  # noqa: F401

#: Pixel 7 (Playwright's device descriptor, written out) and a desktop window.
SIZES = {
    "pixel7": {
        "viewport": {"width": 412, "height": 839},
        "device_scale_factor": 2.625,
        "is_mobile": True,
        "has_touch": True,
    },
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}


def serious(page: Any) -> list[str]:
    """The serious and critical violations axe-core finds on the page, as readable lines."""
    from axe_playwright_python.sync_playwright import Axe

    result = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in result.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_page_passes_axe(browser, stack, size):  # noqa: F811
    context = browser.new_context(**SIZES[size])
    try:
        page = context.new_page()
        page.set_default_timeout(15000)
        checked: list[str] = []

        def check(name: str) -> None:
            assert serious(page) == [], (name, size)
            checked.append(name)

        page.goto(stack.linksvc + "/")
        check("landing")
        page.goto(stack.linksvc + "/problems")
        check("problems")
        url = _request_link(page, stack, f"a11y-{size}", "#send-sign-in")
        page.goto(url)
        check("confirm")
        url = _request_link(page, stack, f"a11y-reset-{size}", "#send-reset")
        page.goto(url)
        check("confirm_reset")
        for reason, url, _status in _failure_cases(stack):
            page.goto(url)
            check(f"failure_{reason}")
        assert len(checked) == 10
    finally:
        context.close()


def test_sign_in_with_the_keyboard_alone(browser, stack):  # noqa: F811
    """Tab to each control and press Enter or type: no pointer anywhere in the journey."""
    context = browser.new_context(**SIZES["desktop"])
    try:
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto(stack.app + "/")

        def tab_to(selector: str) -> None:
            target = page.locator(selector)
            for _ in range(30):
                page.keyboard.press("Tab")
                if target.evaluate("el => el === document.activeElement"):
                    return
            raise AssertionError(f"{selector} cannot be reached with Tab")

        tab_to("#user_id")
        page.keyboard.type("user-keys")
        tab_to("#send-sign-in")
        page.keyboard.press("Enter")
        page.wait_for_selector("#mailed-link")
        tab_to("#mailed-link")
        page.keyboard.press("Enter")
        page.wait_for_url(stack.linksvc + "/l/**")
        tab_to("#confirm button")
        # The focused button shows it is focused (a visible outline), then Enter presses it.
        outline = page.locator("#confirm button").evaluate(
            "el => getComputedStyle(el).outlineStyle"
        )
        assert outline != "none"
        page.keyboard.press("Enter")
        page.wait_for_url(stack.app + "/")
        assert page.locator("#subject").inner_text() == "user-keys"
    finally:
        context.close()


def _sign_in_mail_link(stack: Any, jti: str) -> str:  # noqa: F811
    import email
    import email.policy
    import re
    from pathlib import Path

    outbox = Path(stack.env["LINKSVC_INSTANCE_PATH"]) / "outbox"
    for path in outbox.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg["X-Linksvc-Jti"] == jti:
            text = msg.get_body(("plain",)).get_content()
            return re.search(r"https?://\S+/l/\S+", text).group(0)
    raise AssertionError(f"no mail for {jti}")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_sign_in_page_passes_axe(browser, stack, size):  # noqa: F811
    """The sign-in pages (PRODUCT §6): the waiting page, the approval page on the device
    that opened the mail, and each end page — approved, denied, wrong number — on both."""
    import requests

    from linksvc_client import code_challenge
    from tests.web.test_browser import VERIFIER, _asked_here

    def start(subject: str) -> tuple[str, str]:
        resp = requests.post(
            f"{stack.linksvc}/api/v1/sign-ins",
            headers=stack.headers,
            timeout=10,
            json={
                "subject": subject,
                "email": f"{subject}.a11y@example.org",
                "ip": "127.0.0.1",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36",
                "code_challenge": code_challenge(VERIFIER),
            },
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return body["wait_url"], _sign_in_mail_link(stack, body["jti"])

    asking = browser.new_context(**SIZES[size])
    other = browser.new_context(**SIZES[size])
    checked: list[str] = []
    try:
        wait, mailed = asking.new_page(), other.new_page()
        for p in (wait, mailed):
            p.set_default_timeout(15000)
        _asked_here(wait, stack)

        def check(page: Any, name: str) -> None:
            assert serious(page) == [], (name, size, serious(page))
            checked.append(name)

        # denied on the other device: the approval page, its end page, the waiting page's
        wait_url, link = start(f"a11y-deny-{size}")
        wait.goto(wait_url)
        check(wait, "waiting")
        mailed.goto(link)
        check(mailed, "approval")
        mailed.get_by_role("button", name="Deny").click()
        mailed.wait_for_selector("[data-reason]")
        check(mailed, "denied")
        wait.wait_for_selector("[data-reason]")
        check(wait, "waiting_denied")
        # a wrong number
        wait_url, link = start(f"a11y-wrong-{size}")
        wait.goto(wait_url)
        number = wait.locator("#match-number").inner_text()
        mailed.goto(link)
        mailed.get_by_label("Number shown where you asked").fill("10" if number != "10" else "11")
        mailed.get_by_role("button", name="Approve").click()
        mailed.wait_for_selector("[data-reason]")
        check(mailed, "wrong_number")
        # approved: the other device's end page
        wait_url, link = start(f"a11y-ok-{size}")
        wait.goto(wait_url)
        number = wait.locator("#match-number").inner_text()
        mailed.goto(link)
        mailed.get_by_label("Number shown where you asked").fill(number)
        mailed.get_by_role("button", name="Approve").click()
        mailed.wait_for_selector("[data-reason]")
        check(mailed, "approved")
        # the link opened again after completion
        mailed.goto(link)
        check(mailed, "link_after_completion")
        assert len(checked) == 7
    finally:
        asking.close()
        other.close()
