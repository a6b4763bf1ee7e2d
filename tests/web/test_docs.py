"""The front door: the landing page, the API reference (Swagger UI served by linksvc itself,
no CDN, CSP without inline script) and the problem-type page every problem ``type`` points to."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from linksvc import __version__
from linksvc.web import docs
from linksvc.web.problems import PROBLEMS


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append((tag, a[key]))
        if tag == "script":
            self._in_script = "src" not in a
        if any(k.startswith("on") for k in a) or "style" in a:
            self.inline_scripts += 1

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def parse(body: str) -> _Refs:
    p = _Refs()
    p.feed(body)
    return p


def test_landing_page_says_what_this_is_and_links_onwards(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    body = resp.get_data(as_text=True)
    assert "single-use, short-lived links" in body
    assert f'<span id="version">{__version__}</span>' in body
    refs = {href for _tag, href in parse(body).refs}
    for path in (
        "/api/v1/docs",
        "/api/v1/openapi.json",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/problems",
    ):
        assert path in refs, path
        assert client.get(path).status_code in (200, 503), path
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_api_reference_is_served_from_here_with_a_strict_csp(client):
    resp = client.get("/api/v1/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    page = parse(resp.get_data(as_text=True))
    assert page.inline_scripts == 0
    assets = [ref for tag, ref in page.refs if tag in ("script", "link")]
    assert len(assets) == 4
    for ref in assets:
        assert ref.startswith("/"), f"{ref} is not served by linksvc"  # no CDN, no other origin
        got = client.get(ref)
        assert got.status_code == 200 and len(got.data) > 100, ref
    bundle = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert bundle.data == (docs.swagger_dist() / "swagger-ui-bundle.js").read_bytes()
    assert bundle.headers["Cache-Control"] == "public, max-age=86400"
    # Only the files the page loads; nothing else of the package, no path games.
    for name in ("index.html", "oauth2-redirect.html", "../__init__.py", "%2e%2e%2fLICENSE"):
        assert client.get(f"/api/v1/docs/assets/{name}").status_code == 404, name


def test_every_problem_type_resolves_to_a_section_explaining_it(api, client):
    page = client.get("/problems")
    assert page.status_code == 200
    ids = parse(page.get_data(as_text=True)).ids
    assert set(PROBLEMS) <= ids
    # Real answers: their type is <base URL>/problems#<code>, a section of that page.
    answers = [
        client.post("/api/v1/links", json={"purpose": "magic_link", "subject": "x"}),
        api.mint("magic_link", "someone@example.com"),
        api.mint("teleport", "user-1"),
        api.redeem("not-a-token"),
        api.http.post(
            "/api/v1/links", data="{", headers={**api.headers, "Content-Type": "application/json"}
        ),
        api.http.get("/api/v1/nothing", headers=api.headers),
    ]
    link = api.minted()
    assert api.redeem(link["token"]).status_code == 200
    answers.append(api.redeem(link["token"]))
    base = "http://127.0.0.1:8000"
    for resp in answers:
        body = resp.get_json()
        assert resp.status_code >= 400 and resp.mimetype == "application/problem+json"
        assert body["type"] == f"{base}/problems#{body['code']}", body
        assert body["code"] in ids, body["code"]
        path, fragment = body["type"][len(base) :].split("#")
        assert client.get(path).status_code == 200 and fragment in ids


def test_problem_explanations_are_written_for_people():
    for code, p in PROBLEMS.items():
        assert re.fullmatch(r"[a-z_]+", code)
        assert 400 <= p.status < 600 and p.title and p.explanation.endswith((".", ")")), code


def test_try_it_out_works_out_of_the_box(tmp_path):
    """In a real browser: authorize with a key, open each call that takes a body, "Try it
    out", Execute the example as it is: the answer is the call's own (a minted link, a
    started sign-in, an unknown token), never a 4xx for the body's shape."""
    from pathlib import Path

    from tests.support.env import base_env, missing
    from tests.support.servers import prepare_instance, start_gunicorn

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    env = base_env(tmp_path / "instance")
    creds = prepare_instance(env)
    server = start_gunicorn(env, workers=1, log_path=tmp_path / "server.log")
    expected = {  # operationId: the status its example answers
        "mint": "201",
        "verify": "401",
        "redeem": "401",
        "revoke_subject": "200",
        "exchange_code": "404",
        "start_sign_in": "201",
    }
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(f"{server.url}/api/v1/docs")
                page.click("button.authorize")
                page.fill(".auth-container input", creds["api_key"])
                page.click(".auth-btn-wrapper button.authorize")
                page.click("button.btn-done")
                for operation, status in expected.items():
                    op = page.locator(f"[id$='-{operation}']").first
                    op.locator(".opblock-summary").first.click()
                    op.locator("button.try-out__btn").click()
                    if operation == "revoke_subject":
                        op.locator("input[placeholder='subject']").fill("user-42")
                    op.locator("button.execute").click()
                    code = op.locator(
                        ".live-responses-table tr.response .response-col_status"
                    ).first
                    code.wait_for()
                    assert code.inner_text().strip() == status, (operation, op.inner_text()[-800:])
            finally:
                browser.close()
    finally:
        server.stop()
