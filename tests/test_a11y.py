"""Accessibility: every end-user page passes axe-core (the engine itself, pinned through
axe-playwright-python, which bundles axe.min.js: nothing is fetched at run time) with no
serious or critical violation, at phone (Pixel 7) and desktop sizes; and the sign-in journey
works with the keyboard alone. Runs against the real stack of tests/test_browser.py
(gunicorn + the example application); skips where Chromium is missing, except in CI."""

from __future__ import annotations

from typing import Any

import pytest

from .test_browser import _failure_cases, _request_link, browser, stack  # noqa: F401

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
