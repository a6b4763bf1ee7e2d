"""The development outbox page: the mail `make run` sent, readable in the browser — and only
in development (never in production, never in tests' own instances)."""

from __future__ import annotations

import pytest

from linksvc import create_app
from linksvc.services import services
from tests.support.apps import _prepare, make_api_user

ADDRESS = "someone@example.com"


def _app(env: dict[str, str], mode: str, tmp_path, **extra: str):
    app = create_app(
        {**env, "LINKSVC_ENV": mode, "LINKSVC_MAIL_OUTBOX": str(tmp_path / "outbox"), **extra}
    )
    _prepare(app)
    return app


def test_outbox_lists_the_mails_with_their_links_in_development(env, tmp_path):
    app = _app(env, "development", tmp_path)
    try:
        api = make_api_user(app)
        empty = app.test_client().get("/dev/outbox")
        assert empty.status_code == 200 and 'id="empty"' in empty.text
        first = api.minted("magic_link", "user-1", email=ADDRESS)
        second = api.minted("password_reset", "user-2", email="other@example.com")
        page = app.test_client().get("/dev/outbox")
        assert page.status_code == 200
        html = page.text
        # Newest first, each with its subject, recipient and link.
        assert html.index(second["url"]) < html.index(first["url"])
        assert "Your sign-in link for Acme" in html and ADDRESS in html
        assert f'class="mail-link" href="{first["url"]}"' in html
        # A page like the others: no script, no caching of live links.
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"
        assert "<script" not in html
    finally:
        services(app).links.engine.dispose()


@pytest.mark.parametrize("mode", ["production", "test"])
def test_outbox_is_not_served_outside_development(env, tmp_path, mode):
    # The test client says Host: localhost, which production answers only when it is trusted.
    app = _app(env, mode, tmp_path, LINKSVC_TRUSTED_HOSTS="localhost")
    try:
        api = make_api_user(app)
        link = api.minted("magic_link", "user-1", email=ADDRESS)
        assert list((tmp_path / "outbox").glob("*.eml")), "the mail was written to the folder"
        resp = app.test_client().get("/dev/outbox")
        assert resp.status_code == 404
        assert link["url"] not in resp.text
        assert services(app).dev_outbox is None
    finally:
        services(app).links.engine.dispose()


def test_outbox_is_not_served_with_smtp(env, tmp_path):
    app = _app(env, "development", tmp_path, LINKSVC_SMTP_URL="smtp://127.0.0.1:2525")
    try:
        assert app.test_client().get("/dev/outbox").status_code == 404
    finally:
        services(app).links.engine.dispose()
