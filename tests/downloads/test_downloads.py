"""Download links on local storage: mint-time checks (shape, prefixes, path escapes,
existence), the single-use redirect to a short-lived grant URL, Range resume inside the
grant window and 403/410 outside it, confirmation pages, HEAD, hostile tokens, and file
names in headers and in a real browser. Real HTTP against gunicorn where it matters."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from linksvc import create_app
from linksvc.clients import registry as clients_mod
from linksvc.downloads import storage
from linksvc.links import ledger
from linksvc.services import services
from linksvc.store import db
from tests.support import forge, hostile
from tests.support.apps import _prepare, make_api_user
from tests.support.env import base_env, missing
from tests.support.servers import mint_download, prepare_instance, start_gunicorn

#: File names every backend must deliver exactly (issue 5, "What it must show" 3).
NAMES = [
    "résumé 2026.pdf",
    "报告.pdf",
    'a"b;c.txt',
    ("x" * 96 + "-é-" + "y" * 97 + ".bin")[:196] + ".bin",
]
assert len(NAMES[3]) == 200

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# -- helpers shared with test_s3 ------------------------------------------------------


def disposition_name(header: str) -> str:
    """The file name an RFC 6266 reader takes from Content-Disposition (filename* wins)."""
    from werkzeug.http import parse_options_header

    kind, params = parse_options_header(header)
    assert kind == "attachment" and "filename" in params, header
    return params["filename"]


def check_disposition(header: str, expected: str) -> None:
    assert header.isascii(), header
    assert header.startswith("attachment;"), header
    assert disposition_name(header) == expected
    fallback = re.search(r'filename="([^"]*)"', header)
    assert fallback and fallback.group(1).isascii() and not set(fallback.group(1)) & set('"\\;%')
    if expected.isascii() and not set(expected) & set('"\\;%'):
        assert "filename*=" not in header
    else:
        assert "filename*=UTF-8''" in header


def browser_downloads(urls: list[str]) -> list[tuple[str, bytes]]:
    """Click each URL in headless Chromium; the browser's suggested file name and the bytes."""
    if not os.path.exists(CHROMIUM):
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "pip install -r requirements-test.txt")
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(accept_downloads=True).new_page()
            for url in urls:
                page.set_content(f'<a id="go" href="{url}">download</a>')
                with page.expect_download(timeout=15000) as info:
                    try:
                        page.click("#go")
                    except PlaywrightError as exc:  # navigation turned into a download
                        if "Download is starting" not in str(exc):
                            raise
                dl = info.value
                assert dl.failure() is None, dl.failure()
                out.append((dl.suggested_filename, Path(dl.path()).read_bytes()))
        finally:
            browser.close()
    return out


def link_state(engine: sa.Engine, jti: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT state FROM links WHERE jti = :j"), {"j": jti}
        ).scalar_one()


def rejection_reasons(log_text: str) -> list[str]:
    out = []
    for line in log_text.splitlines():
        if line.startswith("{") and '"link rejected"' in line:
            out.append(json.loads(line)["reason"])
    return out


# -- in-process: the mint-time checks and the clocked parts ----------------------------


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    (root / "reports").mkdir(parents=True)
    (root / "reports" / "q1.pdf").write_bytes(b"%PDF-1.7 quarterly" * 100)
    (root / "public").mkdir()
    (root / "public" / "hello.txt").write_bytes(b"hello world\n")
    (tmp_path / "outside.txt").write_bytes(b"secret outside the storage dir")
    (root / "reports" / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (root / "reports" / "escape-dir").symlink_to(tmp_path)
    (root / "reports" / "inside-link.txt").symlink_to(root / "public" / "hello.txt")
    return root


@pytest.fixture
def dl_app(env: dict[str, str], files: Path) -> Iterator[Any]:
    app = create_app(
        {**env, "LINKSVC_STORAGE_DIR": str(files), "LINKSVC_DOWNLOAD_URL_SECONDS": "20"}
    )
    _prepare(app)
    yield app
    services(app).links.engine.dispose()


@pytest.fixture(params=["jwt", "short"])
def link_format(request: pytest.FixtureRequest) -> str:
    """The in-process download tests run for both forms of a link (PRODUCT §8)."""
    return str(request.param)


@pytest.fixture
def dl_api(dl_app: Any, link_format: str) -> Any:
    return make_api_user(dl_app, link_format=link_format)


def dpath(link: dict[str, Any]) -> str:
    """The path of a minted download link's ``url``: ``/d/`` and the JWT or the handle."""
    return "/d/" + link["url"].rsplit("/d/", 1)[-1]


@pytest.mark.parametrize(
    "key, code",
    [
        ("../outside.txt", "invalid_key"),
        ("reports/../../outside.txt", "invalid_key"),
        ("/etc/passwd", "invalid_key"),
        ("C:/Windows/win.ini", "invalid_key"),
        ("reports\\..\\..\\outside.txt", "invalid_key"),
        ("reports//q1.pdf", "invalid_key"),
        ("./reports/q1.pdf", "invalid_key"),
        ("reports/q1.pdf\x00.txt", "invalid_key"),
        ("reports/escape.txt", "invalid_key"),  # symlink pointing out of the directory
        ("reports/escape-dir/outside.txt", "invalid_key"),
        ("reports/nope.pdf", "object_not_found"),
        ("reports", "object_not_found"),  # a directory is not a file
        ("x" * 1100, "invalid_key"),
    ],
)
def test_mint_refuses_escapes_and_missing_objects(
    dl_api: Any, dl_app: Any, key: str, code: str
) -> None:
    resp = dl_api.mint("download", download={"key": key})
    assert resp.status_code == 422, resp.get_json()
    body = resp.get_json()
    assert body["code"] == code and resp.mimetype == "application/problem+json"
    assert key not in body["detail"]  # the problem names the field, never echoes the path
    with services(dl_app).links.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM links")).scalar() == 0


def test_symlink_inside_the_directory_is_fine(dl_api: Any) -> None:
    assert dl_api.mint("download", download={"key": "reports/inside-link.txt"}).status_code == 201


@pytest.mark.parametrize(
    "download, code, field",
    [
        ({"key": "public/hello.txt", "path": "/etc"}, "unknown_field", "download.path"),
        ({"key": 7}, "invalid_field", "download.key"),
        ({"filename": "x"}, "missing_field", "download.key"),
        ({"key": "public/hello.txt", "bucket": "files"}, "invalid_field", "download.bucket"),
        (
            {"key": "public/hello.txt", "filename": "../../x"},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "filename": "a\r\nSet-Cookie: x=1"},
            "invalid_filename",
            "download.filename",
        ),
        ({"key": "public/hello.txt", "filename": ""}, "invalid_filename", "download.filename"),
        # Format characters (issue 17 item 6): "invoice\u202efdp.exe" shows as "invoiceexe.pdf".
        (
            {"key": "public/hello.txt", "filename": "invoice\u202efdp.exe"},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "filename": "report\u200b.pdf"},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "filename": "\ufeffreport.pdf"},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "filename": "a\u2066b\u2069.pdf"},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "filename": "x" * 256},
            "invalid_filename",
            "download.filename",
        ),
        (
            {"key": "public/hello.txt", "content_type": "text/plain\r\nX-Evil: 1"},
            "invalid_content_type",
            "download.content_type",
        ),
        (
            {"key": "public/hello.txt", "content_type": "pdf"},
            "invalid_content_type",
            "download.content_type",
        ),
    ],
)
def test_mint_checks_the_download_shape(dl_api: Any, download: dict, code: str, field: str) -> None:
    resp = dl_api.mint("download", download=download)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["code"] == code and resp.get_json()["field"] == field


def test_download_prefixes_limit_what_a_client_may_link(dl_app: Any) -> None:
    narrow = make_api_user(dl_app, "narrow", download_prefixes=["reports/"])
    assert narrow.mint("download", download={"key": "reports/q1.pdf"}).status_code == 201
    resp = narrow.mint("download", download={"key": "public/hello.txt"})
    assert resp.status_code == 403 and resp.get_json()["code"] == "download_not_allowed"
    # A prefix is a plain string prefix, checked on the key after the path checks.
    resp = narrow.mint("download", download={"key": "reports/../public/hello.txt"})
    assert resp.status_code == 422 and resp.get_json()["code"] == "invalid_key"
    bucketed = make_api_user(dl_app, "bucketed", download_prefixes=["somebucket:reports/"])
    resp = bucketed.mint("download", download={"key": "reports/q1.pdf"})
    assert resp.status_code == 403  # a bucket prefix never matches local storage


def test_symlink_leaving_the_prefix_is_refused_at_mint(dl_app: Any, files: Path) -> None:
    """Issue 17 item 5: the prefix is checked on the resolved path."""
    (files / "other").mkdir()
    (files / "other" / "secret.txt").write_bytes(b"other prefix's secret")
    (files / "reports" / "link_in.txt").symlink_to(files / "other" / "secret.txt")
    (files / "reports" / "dir_in").symlink_to(files / "other")
    (files / "reports" / "inside.txt").symlink_to(files / "reports" / "q1.pdf")
    narrow = make_api_user(dl_app, "narrow", download_prefixes=["reports/"])
    for key in ("reports/link_in.txt", "reports/dir_in/secret.txt", "reports/inside-link.txt"):
        resp = narrow.mint("download", download={"key": key})
        assert resp.status_code == 403, (key, resp.get_json())
        assert resp.get_json()["code"] == "download_not_allowed"
    # A symlink that stays inside the prefix is fine, and so is any link for an unlimited client.
    assert narrow.mint("download", download={"key": "reports/inside.txt"}).status_code == 201
    anyone = make_api_user(dl_app, "anyone")
    assert anyone.mint("download", download={"key": "reports/link_in.txt"}).status_code == 201


def test_file_swapped_for_a_symlink_leaving_the_prefix_is_not_served(
    dl_app: Any, files: Path
) -> None:
    (files / "other").mkdir()
    (files / "other" / "secret.txt").write_bytes(b"other prefix's secret")
    (files / "reports" / "a.txt").write_bytes(b"a")
    (files / "reports" / "b.txt").write_bytes(b"b")
    narrow = make_api_user(dl_app, "narrow", download_prefixes=["reports/"])
    engine = services(dl_app).links.engine
    http = dl_app.test_client()
    # Swapped before the click: refused, and the link is not spent.
    before = narrow.minted("download", download={"key": "reports/a.txt"})
    (files / "reports" / "a.txt").unlink()
    (files / "reports" / "a.txt").symlink_to(files / "other" / "secret.txt")
    resp = http.get(dpath(before))
    assert resp.status_code == 404 and b"secret" not in resp.data
    assert link_state(engine, before["jti"]) == "issued"
    # Swapped between the click and the grant: the grant refuses it.
    after = narrow.minted("download", download={"key": "reports/b.txt"})
    grant = _grant_path(http.get(dpath(after)).headers["Location"])
    (files / "reports" / "b.txt").unlink()
    (files / "reports" / "b.txt").symlink_to(files / "other" / "secret.txt")
    resp = http.get(grant)
    assert resp.status_code == 404 and b"secret" not in resp.data


def test_token_carries_no_file_data_and_ledger_keeps_it(dl_api: Any, dl_app: Any) -> None:
    link = dl_api.minted(
        "download",
        download={
            "key": "reports/q1.pdf",
            "filename": "Q1 report.pdf",
            "content_type": "application/pdf",
        },
    )
    _, claims, _ = forge.split(link["token"])
    assert set(claims) == {"iss", "aud", "sub", "pur", "jti", "iat", "nbf", "exp"}
    assert (
        "q1" not in json.dumps(claims).lower()
        and link["url"].split("/d/")[0] == "http://127.0.0.1:8000"
    )
    with services(dl_app).links.engine.connect() as conn:
        stored = json.loads(conn.execute(sa.text("SELECT download FROM links")).scalar_one())
    assert stored == {
        "storage": "local",
        "bucket": None,
        "key": "reports/q1.pdf",
        "filename": "Q1 report.pdf",
        "content_type": "application/pdf",
        "size": 1800,
    }


def _grant_path(location: str) -> str:
    assert location.startswith("http://127.0.0.1:8000/dl/"), location
    return urlsplit(location).path


def test_grant_window_range_and_expiry(dl_api: Any, dl_app: Any, files: Path) -> None:
    """The grant URL serves Range/206 inside its window, 410 after it, 403 when forged."""
    svc = services(dl_app).links
    now = svc.now()
    svc.clock = lambda: now
    link = dl_api.minted("download", download={"key": "reports/q1.pdf"})
    http = dl_app.test_client()
    resp = http.get(dpath(link))
    assert resp.status_code == 303
    grant = _grant_path(resp.headers["Location"])
    whole = (files / "reports" / "q1.pdf").read_bytes()
    first = http.get(grant)
    assert first.status_code == 200 and first.data == whole
    etag = first.headers["ETag"]
    svc.clock = lambda: (
        now + 20
    )  # the last second of the 20 s window: an interrupted download resumes
    part = http.get(grant, headers={"Range": "bytes=1000-", "If-Range": etag})
    assert part.status_code == 206 and part.data == whole[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(whole) - 1}/{len(whole)}"
    svc.clock = lambda: now + 21
    late = http.get(grant, headers={"Range": "bytes=1000-"})
    assert late.status_code == 410 and b"expired" in late.data and whole[1000:1010] not in late.data
    forged = grant[:-3] + ("AAA" if not grant.endswith("AAA") else "BBB")
    assert http.get(forged).status_code == 403
    assert http.get("/dl/" + "x" * 600).status_code == 403


def test_grant_never_outlives_the_link(dl_api: Any, dl_app: Any) -> None:
    svc = services(dl_app).links
    now = svc.now()
    svc.clock = lambda: now
    link = dl_api.minted("download", ttl=60, download={"key": "public/hello.txt"})
    svc.clock = lambda: now + 55  # 5 s of the link left, though grants may live 20 s
    http = dl_app.test_client()
    grant = _grant_path(http.get(dpath(link)).headers["Location"])
    svc.clock = lambda: now + 60
    assert http.get(grant).status_code == 200
    svc.clock = lambda: now + 61
    assert http.get(grant).status_code == 410


def test_grant_for_a_link_not_consumed_by_download_is_refused(dl_api: Any, dl_app: Any) -> None:
    """A grant signed with our secret but naming an outstanding link gives nothing."""
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    store = services(dl_app).storage
    url = store.presigned_url(
        storage.ObjectInfo(None, "public/hello.txt", None, None),
        jti=link["jti"],
        expires_in=30,
        disposition="attachment",
        content_type=None,
        now=services(dl_app).links.now(),
    )
    assert dl_app.test_client().get(_grant_path(url)).status_code == 403


def test_grant_signed_with_a_long_expiry_still_ends_with_the_window(
    dl_api: Any, dl_app: Any
) -> None:
    """Even a grant made with our own secret (say, a leaked one) and an expiry hours away
    stops working when the window that began at consumption ends."""
    svc = services(dl_app).links
    now = svc.now()
    svc.clock = lambda: now
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    http = dl_app.test_client()
    assert http.get(dpath(link)).status_code == 303
    store = services(dl_app).storage
    url = store.presigned_url(
        storage.ObjectInfo(None, "public/hello.txt", None, None),
        jti=link["jti"],
        expires_in=86400,
        disposition="attachment",
        content_type=None,
        now=now,
    )
    window = svc.settings.download_url_seconds
    svc.clock = lambda: now + window
    assert http.get(_grant_path(url)).status_code == 200
    svc.clock = lambda: now + window + 1
    assert http.get(_grant_path(url)).status_code == 410


def test_disabled_clients_download_links_stop_working(dl_api: Any, dl_app: Any) -> None:
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    svc = services(dl_app).links
    with db.write(svc.engine) as conn:
        clients_mod.update(conn, dl_api.client.id, disabled=True)
    http = dl_app.test_client()
    for method in ("head", "get"):
        resp = getattr(http, method)(dpath(link))
        assert resp.status_code == 400, resp.status_code
    with db.read(svc.engine) as conn:
        assert ledger.get(conn, link["jti"]).state == "issued"


def test_head_never_consumes(dl_api: Any, dl_app: Any) -> None:
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    http = dl_app.test_client()
    for _ in range(3):
        resp = http.head(dpath(link))
        assert resp.status_code == 200 and resp.data == b""
    assert link_state(services(dl_app).links.engine, link["jti"]) == "issued"
    assert http.get(dpath(link)).status_code == 303
    assert http.head(dpath(link)).status_code == 409


def test_a_used_download_replayed_from_another_browser_is_a_replay(
    dl_api: Any, dl_app: Any
) -> None:
    """Issue 24: the GET of a used ``/d/`` link consumes nothing, yet from another browser
    (or a caller keeping no cookies) it is a replay — ``link.replayed`` and the client's
    replay policy — while the browser that downloaded may click again, however late."""
    from tests.webhooks.test_webhooks import add_endpoint, types

    add_endpoint(dl_app, dl_api.client.id)
    runner = dl_app.test_cli_runner()
    runner.invoke(args=["webhooks", "on-replay", dl_api.client.id, "revoke-subject"])
    svc = services(dl_app).links
    svc.sinks.clear()
    link = dl_api.minted("download", subject="user-7", download={"key": "public/hello.txt"})
    other = dl_api.minted(subject="user-7")
    browser, other_browser = dl_app.test_client(), dl_app.test_client()
    t0 = svc.now()
    assert browser.get(dpath(link)).status_code == 303
    cookie = browser.get_cookie("linksvc_dl_browser", path="/d/")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    with db.read(svc.engine) as conn:  # only a keyed hash of it is kept
        stored = ledger.get(conn, link["jti"]).completion_hash
    assert stored is not None and cookie.value not in stored
    assert stored != hashlib.sha256(cookie.value.encode()).hexdigest()
    svc.clock = lambda: t0 + 12
    assert browser.get(dpath(link)).status_code == 409
    assert browser.head(dpath(link)).status_code == 409
    assert other_browser.head(dpath(link)).status_code == 409  # HEAD: a look only
    assert "link.replayed" not in types(dl_app, link["jti"])
    assert link_state(svc.engine, other["jti"]) == "issued"

    assert other_browser.get(dpath(link)).status_code == 409
    assert types(dl_app, link["jti"]).count("link.replayed") == 1
    assert link_state(svc.engine, other["jti"]) == "revoked"


def test_missing_file_at_click_does_not_consume(dl_api: Any, dl_app: Any, files: Path) -> None:
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    moved = files / "hello.bak"
    (files / "public" / "hello.txt").rename(moved)
    http = dl_app.test_client()
    resp = http.get(dpath(link))
    assert resp.status_code == 404 and b"no longer available" in resp.data
    assert link_state(services(dl_app).links.engine, link["jti"]) == "issued"
    moved.rename(files / "public" / "hello.txt")
    assert http.get(dpath(link)).status_code == 303


def test_file_swapped_for_symlink_after_mint_is_not_served(
    dl_api: Any, dl_app: Any, files: Path, tmp_path: Path
) -> None:
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    http = dl_app.test_client()
    grant = _grant_path(http.get(dpath(link)).headers["Location"])
    (files / "public" / "hello.txt").unlink()
    (files / "public" / "hello.txt").symlink_to(tmp_path / "outside.txt")
    resp = http.get(grant)
    assert resp.status_code == 404 and b"secret outside" not in resp.data


def test_confirm_page_then_csrf_protected_post(dl_api: Any, dl_app: Any) -> None:
    link = dl_api.minted(
        "download", confirm=True, download={"key": "reports/q1.pdf", "filename": "Q1 <b>.pdf"}
    )
    engine = services(dl_app).links.engine
    http = dl_app.test_client()
    page = http.get(dpath(link))
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "Q1 &lt;b&gt;.pdf" in text and "1.8 KB" in text and "Acme" in text
    assert "<script" not in text and "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert link_state(engine, link["jti"]) == "issued"
    csrf = re.search(r'name="csrf" value="([^"]+)"', text).group(1)
    # Without the form token, with a token for another link, or without the cookie: refused.
    assert http.post(dpath(link), data={}).status_code == 403
    other = dl_api.minted("download", confirm=True, download={"key": "public/hello.txt"})
    other_page = http.get(dpath(other)).get_data(as_text=True)
    other_csrf = re.search(r'name="csrf" value="([^"]+)"', other_page).group(1)
    assert http.post(dpath(link), data={"csrf": other_csrf}).status_code == 403
    cookieless = dl_app.test_client()
    assert cookieless.post(dpath(link), data={"csrf": csrf}).status_code == 403
    assert link_state(engine, link["jti"]) == "issued"
    # The page again (a fresh cookie), then the button: consumed, 303 to the grant.
    text = http.get(dpath(link)).get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', text).group(1)
    resp = http.post(dpath(link), data={"csrf": csrf})
    assert resp.status_code == 303 and "/dl/" in resp.headers["Location"]
    assert link_state(engine, link["jti"]) == "consumed"
    assert http.post(dpath(link), data={"csrf": csrf}).status_code == 409
    assert http.get(dpath(link)).status_code == 409


def test_mailed_download_link_confirms_by_default(dl_api: Any, dl_app: Any) -> None:
    """Issue 14 item 7: a mail scanner's GET must not spend a download link sent by mail."""
    engine = services(dl_app).links.engine
    http = dl_app.test_client()
    mailed = dl_api.minted("download", email="a@mail.example", download={"key": "public/hello.txt"})
    page = http.get(dpath(mailed))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert http.get(dpath(mailed)).status_code == 200  # a second scanner, too
    assert link_state(engine, mailed["jti"]) == "issued"
    # confirm: false stays possible, and a link the application shows itself is unchanged.
    for extra in ({"email": "a@mail.example", "confirm": False}, {}):
        link = dl_api.minted("download", download={"key": "public/hello.txt"}, **extra)
        assert http.get(dpath(link)).status_code == 303
        assert link_state(engine, link["jti"]) == "consumed"


def test_ledger_records_a_keyed_hash_of_the_requester(dl_api: Any, dl_app: Any) -> None:
    link = dl_api.minted("download", download={"key": "public/hello.txt"})
    http = dl_app.test_client()
    http.get(dpath(link), environ_base={"REMOTE_ADDR": "203.0.113.9"})
    http.get(dpath(link), environ_base={"REMOTE_ADDR": "198.51.100.7"})
    with services(dl_app).links.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event, reason, via, actor FROM link_events WHERE jti = :j ORDER BY id"),
            {"j": link["jti"]},
        ).all()
    secret = dl_app.config["LINKSVC"].secret_key
    expect = [
        hmac.new(secret, b"actor:" + ip, hashlib.sha256).hexdigest()
        for ip in (b"203.0.113.9", b"198.51.100.7")
    ]
    # "minted" is not stored (the row says it); the press and the replay are, with their actors.
    assert [tuple(r) for r in rows] == [
        ("consumed", None, "download", expect[0]),
        ("rejected", "used", "download", expect[1]),
    ]
    assert "203.0.113" not in json.dumps([list(r) for r in rows])
    history = dl_api.status(link["jti"]).get_json()
    assert history["state"] == "consumed" and history["state_via"] == "download"


def test_content_disposition_encoding() -> None:
    assert storage.content_disposition("report.pdf") == 'attachment; filename="report.pdf"'
    assert storage.content_disposition("résumé 2026.pdf") == (
        "attachment; filename=\"resume 2026.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202026.pdf"
    )
    assert storage.content_disposition('a"b;c.txt') == (
        "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%3Bc.txt"
    )
    assert storage.content_disposition("报告.pdf").startswith('attachment; filename=".pdf"; ')
    for name in NAMES:
        check_disposition(storage.content_disposition(name), name)


# -- real HTTP against gunicorn ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dl-local")
    files = tmp / "files"
    files.mkdir()
    from tests.support.env import free_port

    port = free_port()
    # The page rate limit is tested elsewhere; here it would only count the hostile cases.
    env = base_env(
        tmp / "instance",
        LINKSVC_STORAGE_DIR=str(files),
        LINKSVC_BASE_URL=f"http://127.0.0.1:{port}",
        LINKSVC_PAGE_RATE_LIMIT="100000 per minute",
    )
    creds = prepare_instance(env)
    server = start_gunicorn(env, workers=2, port=port, log_path=tmp / "server.log")
    try:
        yield {
            "url": server.url,
            "files": files,
            "server": server,
            "env": env,
            "headers": {"Authorization": f"Bearer {creds['api_key']}"},
        }
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def _put_local(files: Path, data: bytes) -> str:
    key = f"objects/{secrets.token_hex(6)}.bin"
    (files / "objects").mkdir(exist_ok=True)
    (files / key).write_bytes(data)
    return key


def _mint(srv: dict[str, Any], **download: Any) -> dict[str, Any]:
    return mint_download(srv["url"], srv["headers"], "user-7", **download)


def test_local_end_to_end_exact_bytes_then_used(local_server: dict[str, Any]) -> None:
    data = secrets.token_bytes(300_000)
    key = _put_local(local_server["files"], data)
    link = _mint(
        local_server, key=key, filename="data.bin", content_type="application/octet-stream"
    )
    first = requests.get(link["url"], allow_redirects=False, timeout=10)
    assert first.status_code == 303
    location = first.headers["Location"]
    assert location.startswith(local_server["url"] + "/dl/") and key not in location
    got = requests.get(location, timeout=10)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    assert got.headers["Accept-Ranges"] == "bytes" and got.headers["ETag"]
    assert (
        got.headers["Cache-Control"] == "private, no-store"
        and "sandbox" in got.headers["Content-Security-Policy"]
    )
    again = requests.get(link["url"], allow_redirects=False, timeout=10)
    assert again.status_code == 409 and "already been used" in again.text
    assert again.headers["Content-Type"].startswith("text/html") and "Traceback" not in again.text
    # Resume an interrupted download on the real server, inside the grant window.
    part = requests.get(location, headers={"Range": "bytes=123456-"}, timeout=10)
    assert part.status_code == 206 and part.content == data[123456:]
    two = requests.get(location, headers={"Range": "bytes=0-9,20-29"}, timeout=10)
    assert two.status_code == 200 and two.content == data  # multi-range: answered whole, never 416
    # The access log never holds the link token or the grant.
    log = local_server["server"].log()
    assert link["token"] not in log and urlsplit(location).path.split("/")[-1] not in log


def test_local_file_names_in_headers_and_in_chromium(local_server: dict[str, Any]) -> None:
    data = b"name test\n"
    urls = []
    for name in NAMES:
        link = _mint(local_server, key=_put_local(local_server["files"], data), filename=name)
        first = requests.get(link["url"], allow_redirects=False, timeout=10)
        got = requests.get(first.headers["Location"], timeout=10)
        assert got.status_code == 200 and got.content == data
        check_disposition(got.headers["Content-Disposition"], name)
        urls.append(
            _mint(local_server, key=_put_local(local_server["files"], data), filename=name)["url"]
        )
    results = browser_downloads(urls[:2] + urls[3:])  # the quote is not a legal name on every OS
    assert [r[0] for r in results] == NAMES[:2] + NAMES[3:]
    assert all(r[1] == data for r in results)


def test_hostile_tokens_refused_on_d_and_real_link_still_works(
    local_server: dict[str, Any], tmp_path: Path
) -> None:
    data = b"the real file"
    link = _mint(local_server, key=_put_local(local_server["files"], data))
    # forge needs the signing key: load it through an app on the same instance.
    app = create_app(local_server["env"])
    try:
        for case in hostile.CASES:
            before = len(rejection_reasons(local_server["server"].log()))
            bad = case.build(app, link["token"])
            resp = requests.get(f"{local_server['url']}/d/{bad}", allow_redirects=False, timeout=10)
            assert 400 <= resp.status_code < 500, (case.name, resp.status_code)
            assert "Location" not in resp.headers and bad not in resp.text, case.name
            head = requests.head(f"{local_server['url']}/d/{bad}", timeout=10)
            assert 400 <= head.status_code < 500, case.name
            if case.name == "oversized" and resp.status_code == 400 and "linksvc" not in resp.text:
                continue  # refused by gunicorn's request-line limit before linksvc sees it
            assert resp.status_code == (410 if case.reason == "expired" else 400), (
                case.name,
                resp.status_code,
            )
            # The page is coarse; the log (and the API) has the precise reason, for GET and HEAD.
            assert rejection_reasons(local_server["server"].log())[before:] == [case.reason] * 2, (
                case.name
            )
    finally:
        services(app).links.engine.dispose()
    final = requests.get(link["url"], timeout=10)  # follows the 303
    assert final.status_code == 200 and final.content == data


def test_short_download_link_fits_65_characters_and_any_spelling_works(
    env: dict[str, str], files: Path
) -> None:
    from linksvc.links import handles

    base = "https://files.example-corp.com"
    assert len(base) == 30
    app = create_app({**env, "LINKSVC_STORAGE_DIR": str(files), "LINKSVC_BASE_URL": base})
    _prepare(app)
    try:
        api = make_api_user(app, link_format="short")
        link = api.minted("download", download={"key": "reports/q1.pdf"})
        assert len(link["url"]) <= 65 and link["url"].startswith(base + "/d/")
        handle = link["url"].rsplit("/d/", 1)[-1]
        assert handles.decode(handle) is not None
        http = app.test_client()
        assert http.head("/d/" + handle.lower(), base_url=base).status_code == 200
        forged = handles.encode(handles.new())
        assert http.get("/d/" + forged, base_url=base).status_code == 400
        resp = http.get("/d/" + handle.lower().replace("1", "l"), base_url=base)
        assert resp.status_code == 303
        assert http.get("/d/" + handle, base_url=base).status_code == 409
    finally:
        services(app).links.engine.dispose()
