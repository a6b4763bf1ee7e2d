"""Security headers on every answer, no secret anywhere it should not be, and no hint
whether an account exists.

- Headers: every route of the app (walked from its URL map, so a new route is covered
  the day it lands), each with its success and failure answers, carries
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, no framing
  (``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``), a CSP without
  ``unsafe-inline``/``unsafe-eval``, and ``Cache-Control: no-store`` — except the JWKS,
  which verifiers must cache, and the stylesheet.
- Leaks: over a live server, a full journey through the API, the pages, the one-time
  code and a download; then no API key, token, code, grant or browser nonce is in the
  server's log or in the database, and no token is in a page or an error body.
- Existence: failure answers are the same whether the subject behind them exists or not.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from linksvc.services import services
from tests.support import forge
from tests.support.apps import _prepare, make_api_user
from tests.support.databases import dump_database
from tests.support.env import base_env, free_port
from tests.support.servers import prepare_instance, start_gunicorn

#: Routes allowed to be cached, and what their Cache-Control must still say.
CACHEABLE = {"ops.jwks": "public", "static": "", "docs.favicon": "public"}
FORBIDDEN_CSP = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "data:", "*")


def check_headers(resp: Any, endpoint: str | None, where: str) -> None:
    h = resp.headers
    assert h.get("X-Content-Type-Options") == "nosniff", where
    assert h.get("Referrer-Policy") == "no-referrer", where
    assert h.get("X-Frame-Options") == "DENY", where
    csp = h.get("Content-Security-Policy", "")
    if resp.mimetype == "text/html":
        assert "frame-ancestors 'none'" in csp, (where, csp)
    directives = dict(([*d.strip().split(" ", 1), ""])[:2] for d in csp.split(";") if d.strip())
    assert directives.get("default-src") == "'none'" or "sandbox" in directives, (where, csp)
    for name, value in directives.items():
        for bad in FORBIDDEN_CSP:
            # data: images (Swagger UI's icons on the API reference) cannot run anything.
            if bad == "data:" and name == "img-src":
                continue
            assert bad not in value.split(), (where, csp)
    assert "script-src" not in directives or directives["script-src"] in ("'none'", "'self'"), (
        where,
        csp,
    )
    cache = h.get("Cache-Control", "")
    if endpoint in CACHEABLE:
        assert CACHEABLE[endpoint] in cache, (where, cache)
    else:
        assert "no-store" in cache, (where, cache)
    if resp.mimetype == "text/html" and resp.status_code != 303:
        body = resp.get_data(as_text=True)
        if body:
            assert re.search(r"<html[^>]* lang=\"[a-z]", body), where
            # CSP forbids them; a page that needs them would be broken, not protected.
            # Scripts only as files of this origin, where the CSP allows 'self' (the API
            # reference); never inline.
            scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", body, re.I | re.S)
            assert all(re.search(r'\ssrc="/[^/]', a) and not code.strip() for a, code in scripts), (
                where
            )
            assert not scripts or directives.get("script-src") == "'self'", (where, csp)
            assert "<style" not in body.lower(), where
            assert not re.search(r"\son[a-z]+\s*=", body, re.I) and " style=" not in body, where
            assert "Traceback" not in body, where


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "report.pdf").write_bytes(b"%PDF-1.7 " + b"x" * 2000)
    return root


@pytest.fixture
def full_app(env: dict[str, str], files: Path) -> Iterator[Flask]:
    app = create_full_app(env, files)
    yield app
    services(app).links.engine.dispose()


def create_full_app(env: dict[str, str], files: Path) -> Flask:
    from linksvc import create_app

    app = create_app(
        {**env, "LINKSVC_STORAGE_DIR": str(files), "LINKSVC_PAGE_RATE_LIMIT": "100000 per minute"}
    )
    _prepare(app)
    return app


def _endpoint(app: Flask, path: str, method: str) -> str | None:
    try:
        return app.url_map.bind("localhost").match(path.split("?")[0], method=method)[0]
    except Exception:
        return None


def _args_for(app: Flask, rule: Any, tokens: dict[str, str]) -> list[dict[str, str]]:
    """Values for a rule's arguments: real ones first (success), then garbage (failure)."""
    variants = []
    for good in (True, False):
        values = {}
        for arg in rule.arguments:
            if arg == "token":
                purpose = "download" if rule.rule.startswith("/d/") else "magic_link"
                values[arg] = tokens[purpose] if good else "not-a-token"
            elif arg == "jti":
                values[arg] = tokens["jti"] if good else "A" * 22
            elif arg == "subject":
                values[arg] = "user-1"
            elif arg == "filename":
                values[arg] = "linksvc.css" if good else "nope.css"
            else:
                values[arg] = "x"
        variants.append(values)
    return variants


def test_every_route_answers_with_the_security_headers(full_app):
    app = full_app
    user = make_api_user(app)
    auth = {"Authorization": f"Bearer {user.api_key}"}
    http = app.test_client()
    checked: set[str] = set()

    def call(method: str, path: str, **kw: Any) -> Any:
        resp = http.open(path, method=method, **kw)
        endpoint = _endpoint(app, path, method)
        check_headers(resp, endpoint, f"{method} {path[:60]} → {resp.status_code}")
        checked.add(endpoint or f"<{resp.status_code}>")
        return resp

    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"OPTIONS"}):
            fresh = {
                "magic_link": user.minted("magic_link")["token"],
                "download": user.minted("download", download={"key": "docs/report.pdf"})["token"],
            }
            fresh["jti"] = forge.split(fresh["magic_link"])[1]["jti"]
            for values in _args_for(app, rule, fresh):
                path = rule.build(values, append_unknown=False)[1] if rule.arguments else rule.rule
                body = (
                    {"token": fresh["magic_link"], "purpose": "magic_link"}
                    if method == "POST"
                    else None
                )
                call(method, path, json=body, headers=auth)
                call(method, path)  # without the API key
    # the journeys: confirmation page, button, done; download confirm, redirect, grant stream
    link = user.minted("magic_link")
    page = call("GET", f"/l/{link['token']}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    call("POST", f"/l/{link['token']}", data={"csrf": csrf})
    call("POST", f"/l/{link['token']}", data={"csrf": "forged"})
    dl = user.minted("download", download={"key": "docs/report.pdf", "filename": "r.pdf"})
    grant = call("GET", f"/d/{dl['token']}")
    assert grant.status_code == 303
    call("GET", urllib.parse.urlsplit(grant.headers["Location"]).path)
    call(
        "GET", urllib.parse.urlsplit(grant.headers["Location"]).path, headers={"Range": "bytes=0-9"}
    )
    confirm = user.minted("download", download={"key": "docs/report.pdf"}, confirm=True)
    call("GET", f"/d/{confirm['token']}")
    call("GET", "/no/such/page")
    call("GET", "/api/v1/no/such/thing", headers=auth)
    call("DELETE", "/healthz")
    routed = {r.endpoint for r in app.url_map.iter_rules()}
    assert routed <= checked, routed - checked


def test_jwks_is_cacheable_but_short(client):
    resp = client.get("/.well-known/jwks.json")
    cache = resp.headers["Cache-Control"]
    assert cache.startswith("public, max-age=")
    assert int(cache.split("max-age=")[1].split(",")[0]) <= 3600
    assert "private" not in cache


# -- leaks -----------------------------------------------------------------------------


@pytest.mark.slow
def test_no_secret_reaches_a_log_the_database_a_page_or_an_error(tmp_path):
    port = free_port()
    files = tmp_path / "files"
    (files / "docs").mkdir(parents=True)
    (files / "docs" / "report.pdf").write_bytes(b"%PDF-1.7 " + b"y" * 5000)
    env = base_env(
        tmp_path / "instance",
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
        LINKSVC_STORAGE_DIR=str(files),
        LINKSVC_PAGE_RATE_LIMIT="100000 per minute",
    )
    creds = prepare_instance(env)
    key = creds["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    server = start_gunicorn(env, workers=2, port=port, log_path=tmp_path / "server.log")
    secrets_seen: dict[str, str] = {"api_key": key}
    bodies: list[tuple[str, str]] = []

    def keep(what: str, resp: requests.Response) -> requests.Response:
        bodies.append(
            (
                what,
                resp.text
                + "\n"
                + "\n".join(
                    f"{k}: {v}"
                    for k, v in resp.headers.items()
                    if k.lower() not in ("location", "set-cookie")
                ),
            )
        )
        return resp

    try:
        url = server.url
        # sign-in through the page, then the code exchange
        link = requests.post(
            f"{url}/api/v1/links",
            json={"purpose": "magic_link", "subject": "user-9", "data": {"next": "/inbox"}},
            headers=auth,
            timeout=10,
        ).json()
        secrets_seen["magic_token"] = link["token"]
        browser = requests.Session()
        page = keep("confirm page", browser.get(link["url"], timeout=10))
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        pressed = browser.post(link["url"], data={"csrf": csrf}, allow_redirects=False, timeout=10)
        assert pressed.status_code == 303
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(pressed.headers["Location"]).query)[
            "code"
        ][0]
        assert link["token"] not in pressed.headers["Location"]
        secrets_seen["code"] = code
        for n, cookie in enumerate(c for c in browser.cookies if c.value and len(c.value) >= 16):
            secrets_seen[f"cookie_{n}"] = cookie.value
        keep("replayed page", browser.get(link["url"], timeout=10))
        keep(
            "exchange",
            requests.post(
                f"{url}/api/v1/codes/exchange", json={"code": code}, headers=auth, timeout=10
            ),
        )
        keep(
            "exchange again",
            requests.post(
                f"{url}/api/v1/codes/exchange", json={"code": code}, headers=auth, timeout=10
            ),
        )
        # password reset through the API, with failures
        reset = requests.post(
            f"{url}/api/v1/links",
            json={"purpose": "password_reset", "subject": "user-9"},
            headers=auth,
            timeout=10,
        ).json()
        secrets_seen["reset_token"] = reset["token"]
        keep(
            "wrong purpose",
            requests.post(
                f"{url}/api/v1/links/redeem",
                json={"token": reset["token"], "purpose": "magic_link"},
                headers=auth,
                timeout=10,
            ),
        )
        keep(
            "tampered",
            requests.post(
                f"{url}/api/v1/links/verify",
                json={"token": reset["token"][:-3] + "AAA", "purpose": "password_reset"},
                headers=auth,
                timeout=10,
            ),
        )
        keep(
            "redeem",
            requests.post(
                f"{url}/api/v1/links/redeem",
                json={"token": reset["token"], "purpose": "password_reset"},
                headers=auth,
                timeout=10,
            ),
        )
        keep(
            "replay",
            requests.post(
                f"{url}/api/v1/links/redeem",
                json={"token": reset["token"], "purpose": "password_reset"},
                headers=auth,
                timeout=10,
            ),
        )
        keep("tampered page", requests.get(f"{url}/l/{reset['token'][:-3]}AAA", timeout=10))
        keep(
            "bad key",
            requests.post(
                f"{url}/api/v1/links",
                json={"purpose": "magic_link", "subject": "u"},
                headers={"Authorization": f"Bearer {key[:-2]}xx"},
                timeout=10,
            ),
        )
        keep(
            "token in query",
            requests.get(f"{url}/nothing?token={reset['token']}&key={key}", timeout=10),
        )
        # a download: redirect to a grant, then stream
        dl = requests.post(
            f"{url}/api/v1/links",
            json={
                "purpose": "download",
                "subject": "user-9",
                "download": {"key": "docs/report.pdf", "filename": "r.pdf"},
            },
            headers=auth,
            timeout=10,
        ).json()
        secrets_seen["download_token"] = dl["token"]
        first = requests.get(dl["url"], allow_redirects=False, timeout=10)
        assert first.status_code == 303
        grant = urllib.parse.urlsplit(first.headers["Location"]).path.rsplit("/", 1)[1]
        secrets_seen["grant"] = grant
        assert requests.get(first.headers["Location"], timeout=10).status_code == 200
        keep("used download", requests.get(dl["url"], allow_redirects=False, timeout=10))
        keep("forged grant", requests.get(f"{url}/dl/{grant[:-4]}AAAA", timeout=10))
        keep("metrics", requests.get(f"{url}/metrics", timeout=10))
        keep("jwks", requests.get(f"{url}/.well-known/jwks.json", timeout=10))
    finally:
        server.stop()
    log = server.log()
    stored = dump_database(env["LINKSVC_DATABASE_URL"])
    assert '"jti"' in log
    for name, secret in secrets_seen.items():
        needles = {secret}
        if secret.count(".") == 2:
            needles.add(secret.split(".")[2])  # the signature alone
        for needle in needles:
            assert needle not in log, f"{name} reached the server log"
            assert needle not in stored, f"{name} reached the database"
            for what, body in bodies:
                assert needle not in body, f"{name} reached the answer to {what}"


# -- no hint whether an account exists --------------------------------------------------


def _normalise(text: str) -> str:
    """The page without what differs per request: ids, tokens, the support reference."""
    text = re.sub(r'(support-ref">)[0-9a-f]+<', r"\1…<", text)
    return re.sub(
        r'"(request_id|jti)": "[^"]*"', r'"\1": "…"', re.sub(r"[A-Za-z0-9_-]{20,}", "…", text)
    )


def test_failures_do_not_reveal_whether_a_subject_exists(full_app):
    app = full_app
    user = make_api_user(app)
    http = app.test_client()
    real = user.minted("magic_link", "alice")  # alice exists; "nobody" never had a link
    key = forge.signing_key(app)
    h, c, sig = forge.split(real["token"])
    tampered = {
        "alice": f"{real['token'].rsplit('.', 1)[0]}.{sig[:-4]}AAAA",
        "nobody": f"{forge.seg(h)}.{forge.seg({**c, 'sub': 'nobody'})}.{sig}",
    }
    well_signed = {
        who: forge.resign(h, {**c, "sub": who, "jti": forge.b64(bytes(16))}, key)
        for who in ("alice", "nobody")
    }
    for pair in (tampered, well_signed):
        pages = {who: http.get(f"/l/{token}") for who, token in pair.items()}
        assert pages["alice"].status_code == pages["nobody"].status_code
        assert _normalise(pages["alice"].get_data(as_text=True)) == _normalise(
            pages["nobody"].get_data(as_text=True)
        )
        answers = {who: user.redeem(token) for who, token in pair.items()}
        assert answers["alice"].status_code == answers["nobody"].status_code
        assert answers["alice"].get_json()["code"] == answers["nobody"].get_json()["code"]
    # minting for a known and an unknown subject looks the same
    shapes = {who: user.mint("password_reset", who) for who in ("alice", "nobody")}
    assert {r.status_code for r in shapes.values()} == {201}
    assert set(shapes["alice"].get_json()) == set(shapes["nobody"].get_json())
    # another client's link and a link that never existed: the same 404
    other = make_api_user(app, "other")
    theirs = other.minted("magic_link", "alice")
    a = http.get(f"/api/v1/links/{theirs['jti']}", headers=user.headers)
    b = http.get(f"/api/v1/links/{forge.b64(bytes(16))}", headers=user.headers)
    assert a.status_code == b.status_code == 404
    assert _normalise(a.get_data(as_text=True)) == _normalise(b.get_data(as_text=True))
    # a code of another client and a made-up code: the same 404
    page = http.get("/l/" + other.minted("magic_link", "alice")["token"])
    if page.status_code == 200:
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
        pressed = http.post(page.request.full_path.rstrip("?"), data={"csrf": csrf})
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(pressed.headers["Location"]).query)[
            "code"
        ][0]
        a = http.post("/api/v1/codes/exchange", json={"code": code}, headers=user.headers)
        b = http.post(
            "/api/v1/codes/exchange", json={"code": code[:-4] + "AAAA"}, headers=user.headers
        )
        assert a.status_code == b.status_code == 404
        assert a.get_data(as_text=True) == b.get_data(as_text=True)
        assert (
            other.http.post(
                "/api/v1/codes/exchange", json={"code": code}, headers=other.headers
            ).status_code
            == 200
        )
