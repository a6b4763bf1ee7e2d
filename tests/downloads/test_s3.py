"""Download links on S3, against a real S3-API server: the npm package s3rver (in
tests/s3rver/, `npm ci` there), started on a free port. s3rver enforces presigned-URL
expiry and honours the response-header overrides and Range; it does *not* check SigV4
signatures, so a test recomputes each signature with botocore instead."""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
import requests

from linksvc import create_app
from linksvc.downloads.storage import S3Storage
from linksvc.downloads.views import check_download
from linksvc.services import services
from tests.downloads.test_downloads import NAMES, browser_downloads, check_disposition, link_state
from tests.support.apps import _prepare, make_api_user
from tests.support.env import ROOT, base_env, free_port, missing
from tests.support.servers import mint_download, prepare_instance, start_gunicorn

S3RVER_DIR = ROOT / "tests" / "s3rver"
S3RVER_BIN = S3RVER_DIR / "node_modules" / "s3rver" / "bin" / "s3rver.js"
ACCESS_KEY = SECRET_KEY = "S3RVER"  # s3rver's built-in account
REGION = "us-east-1"
BUCKET = "linksvc-test"
OTHER_BUCKET = "other-bucket"
URL_SECONDS = 3

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_SESSION_TOKEN": "",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node = shutil.which("node")
    if node is None:
        missing("Node.js", "s3rver needs node")
    if not S3RVER_BIN.exists():
        missing("s3rver", "run `npm ci` in tests/s3rver")
    data = tmp_path_factory.mktemp("s3rver")
    port = free_port()
    log = open(data.parent / "s3rver.log", "wb")
    proc = subprocess.Popen(
        [
            node,
            str(S3RVER_BIN),
            "-d",
            str(data),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--silent",
            "--no-vhost-buckets",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"s3rver did not start: {(data.parent / 's3rver.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.create_bucket(Bucket=OTHER_BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def s3_env(instance: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return base_env(
        instance,
        LINKSVC_STORAGE="s3",
        LINKSVC_S3_BUCKET=BUCKET,
        LINKSVC_S3_ENDPOINT_URL=endpoint,
        LINKSVC_S3_REGION=REGION,
        LINKSVC_S3_ADDRESSING_STYLE="path",
        LINKSVC_DOWNLOAD_URL_SECONDS=str(URL_SECONDS),
        LINKSVC_PAGE_RATE_LIMIT="100000 per minute",
        **extra,
    )


@pytest.fixture(scope="module")
def server(s3rver: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dl-s3")
    port = free_port()
    env = {
        **s3_env(tmp / "instance", s3rver, LINKSVC_BASE_URL=f"http://127.0.0.1:{port}"),
        **AWS_ENV,
    }
    creds = prepare_instance(env)
    srv = start_gunicorn(env, workers=2, port=port, log_path=tmp / "server.log")
    try:
        yield {
            "url": srv.url,
            "env": env,
            "server": srv,
            "s3": s3_client(s3rver),
            "tmp": tmp,
            "headers": {"Authorization": f"Bearer {creds['api_key']}"},
        }
    finally:
        srv.stop()
    assert "Traceback" not in srv.log()


def _put(srv: dict[str, Any], data: bytes, bucket: str = BUCKET) -> str:
    key = f"objects/{secrets.token_hex(6)}/file.bin"
    srv["s3"].put_object(Bucket=bucket, Key=key, Body=data)
    return key


def _mint(srv: dict[str, Any], **download: Any) -> dict[str, Any]:
    return mint_download(srv["url"], srv["headers"], "user-9", **download)


def _click(url: str) -> str:
    resp = requests.get(url, allow_redirects=False, timeout=10)
    assert resp.status_code == 303, (resp.status_code, resp.text[:300])
    return resp.headers["Location"]


def test_s3_end_to_end_exact_bytes_then_used(server: dict[str, Any], s3rver: str) -> None:
    data = secrets.token_bytes(200_000)
    key = _put(server, data)
    link = _mint(server, key=key, filename="report.pdf", content_type="application/pdf")
    location = _click(link["url"])
    assert location.startswith(f"{s3rver}/{BUCKET}/{key}?")
    got = requests.get(location, timeout=10)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert got.headers["Content-Type"] == "application/pdf"
    part = requests.get(location, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206 and part.content == data[1000:2000]
    again = requests.get(link["url"], allow_redirects=False, timeout=10)
    assert (
        again.status_code == 409
        and "already been used" in again.text
        and "Location" not in again.headers
    )
    log = server["server"].log()
    assert (
        link["token"] not in log and "X-Amz-Signature" not in log
    )  # neither link nor storage URL is logged


def test_presigned_url_stops_working_after_its_seconds(server: dict[str, Any]) -> None:
    data = b"short-lived"
    link = _mint(server, key=_put(server, data))
    location = _click(link["url"])
    assert dict(parse_qsl(urlsplit(location).query))["X-Amz-Expires"] == str(URL_SECONDS)
    assert requests.get(location, timeout=10).content == data
    time.sleep(URL_SECONDS + 1.5)  # s3rver checks expiry against its own clock: a real wait
    late = requests.get(location, timeout=10)
    assert late.status_code == 403 and "Request has expired" in late.text


def _recompute_signature(location: str, *, expires: int) -> str:
    """SigV4 query signature of ``location`` as botocore computes it for the known keys."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urlsplit(location)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    # Rebuild the request as it was before signing, then let botocore add the auth
    # parameters for the URL's own timestamp and sign it.
    plain = [(k, v) for k, v in query if not k.startswith("X-Amz-")]
    req = AWSRequest(
        method="GET",
        url=urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(plain, quote_via=quote), "")
        ),
        headers={},
    )
    auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION, expires=expires)
    req.context["timestamp"] = params["X-Amz-Date"]
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    return auth.signature(auth.string_to_sign(req, canonical), req)


def test_presigned_url_is_sigv4_with_configured_expiry_and_signed_overrides(
    server: dict[str, Any],
) -> None:
    link = _mint(
        server, key=_put(server, b"sig"), filename="résumé 2026.pdf", content_type="application/pdf"
    )
    location = _click(link["url"])
    params = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
    assert "Signature" not in params and "AWSAccessKeyId" not in params  # not SigV2
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Credential"].startswith(f"{ACCESS_KEY}/") and params[
        "X-Amz-Credential"
    ].endswith(f"/{REGION}/s3/aws4_request")
    assert params["X-Amz-Expires"] == str(URL_SECONDS) and params["X-Amz-SignedHeaders"] == "host"
    assert params["response-content-type"] == "application/pdf"
    check_disposition(params["response-content-disposition"], "résumé 2026.pdf")
    assert _recompute_signature(location, expires=URL_SECONDS) == params["X-Amz-Signature"]
    # The overrides and the expiry are inside the signature: change any and it no longer matches.
    for old, new in (
        ("application%2Fpdf", "text%2Fhtml"),
        ("attachment", "inline"),
        (f"X-Amz-Expires={URL_SECONDS}", "X-Amz-Expires=604800"),
    ):
        assert old in location
        assert (
            _recompute_signature(
                location.replace(old, new), expires=URL_SECONDS if "Expires" not in old else 604800
            )
            != params["X-Amz-Signature"]
        )


def test_s3_file_names_in_headers_and_in_chromium(server: dict[str, Any]) -> None:
    data = b"names on s3\n"
    for name in NAMES:
        link = _mint(server, key=_put(server, data), filename=name)
        got = requests.get(_click(link["url"]), timeout=10)
        assert got.status_code == 200 and got.content == data
        check_disposition(got.headers["Content-Disposition"], name)
    chosen = [NAMES[0], NAMES[1], NAMES[3]]
    urls = [_mint(server, key=_put(server, data), filename=name)["url"] for name in chosen]
    results = browser_downloads(urls)
    assert [r[0] for r in results] == chosen and all(r[1] == data for r in results)


def test_head_never_consumes(server: dict[str, Any]) -> None:
    link = _mint(server, key=_put(server, b"head"))
    for _ in range(3):
        assert requests.head(link["url"], timeout=10).status_code == 200
    assert requests.get(link["url"], timeout=10).content == b"head"


def test_presign_failure_answers_503_and_keeps_the_link(server: dict[str, Any]) -> None:
    """A worker without credentials cannot presign: 503, nothing consumed; a healthy one
    then delivers the same link."""
    data = b"still mine"
    link = _mint(server, key=_put(server, data))
    env = {**server["env"], **dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "")}
    broken = start_gunicorn(env, workers=1, log_path=server["tmp"] / "broken.log")
    try:
        path = urlsplit(link["url"]).path
        resp = requests.get(broken.url + path, allow_redirects=False, timeout=20)
        assert (
            resp.status_code == 503
            and resp.headers.get("Retry-After")
            and "Location" not in resp.headers
        )
        assert "try again" in resp.text.lower() and "Traceback" not in resp.text
        assert "Traceback" not in broken.log()
    finally:
        broken.stop()
    state = requests.get(
        f"{server['url']}/api/v1/links/{link['jti']}", headers=server["headers"], timeout=10
    ).json()
    assert state["state"] == "issued"
    assert requests.get(link["url"], timeout=10).content == data


def test_confirm_page_posts_then_redirects_to_s3(server: dict[str, Any], s3rver: str) -> None:
    data = b"confirmed"
    resp = requests.post(
        f"{server['url']}/api/v1/links",
        headers=server["headers"],
        timeout=10,
        json={
            "purpose": "download",
            "subject": "u",
            "confirm": True,
            "download": {"key": _put(server, data), "filename": "报告.pdf"},
        },
    )
    link = resp.json()
    http = requests.Session()
    page = http.get(link["url"], timeout=10)
    assert page.status_code == 200 and "报告.pdf" in page.text and "9 bytes" in page.text
    assert (
        s3rver in page.headers["Content-Security-Policy"]
    )  # the form may land on the storage origin
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    resp = http.post(link["url"], data={"csrf": csrf}, allow_redirects=False, timeout=10)
    assert resp.status_code == 303 and resp.headers["Location"].startswith(s3rver)
    assert requests.get(resp.headers["Location"], timeout=10).content == data


# -- in-process against the same s3rver: the mint-time checks -------------------------


@pytest.fixture
def s3_app(
    s3rver: str, tmp_path: Path, migrated_sqlite: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    instance = tmp_path / "instance"
    instance.mkdir()
    shutil.copy(migrated_sqlite, instance / "linksvc.db")
    app = create_app(s3_env(instance, s3rver))
    _prepare(app)
    yield app
    services(app).links.engine.dispose()


def test_s3_mint_checks(s3_app: Any, s3rver: str) -> None:
    s3 = s3_client(s3rver)
    s3.put_object(Bucket=BUCKET, Key="reports/a.pdf", Body=b"a")
    s3.put_object(Bucket=OTHER_BUCKET, Key="public/b.txt", Body=b"b")
    anyone = make_api_user(s3_app, "anyone")
    ok = anyone.mint("download", download={"key": "reports/a.pdf"})
    assert ok.status_code == 201
    for key, code in (
        ("reports/missing.pdf", "object_not_found"),
        ("reports/../a.pdf", "invalid_key"),
        ("/reports/a.pdf", "invalid_key"),
    ):
        resp = anyone.mint("download", download={"key": key})
        assert resp.status_code == 422 and resp.get_json()["code"] == code, (key, resp.get_json())
    # No prefixes: the configured bucket only.
    resp = anyone.mint("download", download={"bucket": OTHER_BUCKET, "key": "public/b.txt"})
    assert resp.status_code == 403 and resp.get_json()["code"] == "download_not_allowed"
    scoped = make_api_user(
        s3_app, "scoped", download_prefixes=[f"{OTHER_BUCKET}:public/", "reports/"]
    )
    assert (
        scoped.mint(
            "download", download={"bucket": OTHER_BUCKET, "key": "public/b.txt"}
        ).status_code
        == 201
    )
    assert scoped.mint("download", download={"key": "reports/a.pdf"}).status_code == 201
    assert (
        scoped.mint("download", download={"bucket": OTHER_BUCKET, "key": "private/c"}).status_code
        == 403
    )
    resp = scoped.mint("download", download={"bucket": "Bad_Bucket", "key": "public/b.txt"})
    assert resp.status_code == 422 and resp.get_json()["field"] == "download.bucket"
    # A bucket-qualified link is served from that bucket.
    link = scoped.minted("download", download={"bucket": OTHER_BUCKET, "key": "public/b.txt"})
    location = s3_app.test_client().get(f"/d/{link['token']}").headers["Location"]
    assert urlsplit(location).path == f"/{OTHER_BUCKET}/public/b.txt"
    assert requests.get(location, timeout=10).content == b"b"


def test_presigned_url_never_outlives_the_link(s3_app: Any, s3rver: str) -> None:
    s3_client(s3rver).put_object(Bucket=BUCKET, Key="short.txt", Body=b"s")
    svc = services(s3_app).links
    now = svc.now()
    svc.clock = lambda: now
    link = make_api_user(s3_app).minted("download", ttl=60, download={"key": "short.txt"})
    svc.clock = lambda: now + 59  # one second of the link left, though URLs may live 3 s
    location = s3_app.test_client().get(f"/d/{link['token']}").headers["Location"]
    assert dict(parse_qsl(urlsplit(location).query))["X-Amz-Expires"] == "1"


def test_storage_outage_answers_503_on_mint_and_on_click(
    s3_app: Any, s3rver: str, tmp_path: Path
) -> None:
    s3_client(s3rver).put_object(Bucket=BUCKET, Key="outage.txt", Body=b"o")
    api = make_api_user(s3_app)
    link = api.minted("download", download={"key": "outage.txt"})
    store = services(s3_app).storage
    dead = S3Storage(
        bucket=BUCKET,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region=REGION,
        addressing_style="path",
    )
    services(s3_app).storage = dead
    services(s3_app).links.download_checker = lambda c, d: check_download(dead, c, d)
    resp = api.mint("download", download={"key": "outage.txt"})
    assert resp.status_code == 503 and resp.get_json()["code"] == "unavailable"
    page = s3_app.test_client().get(f"/d/{link['token']}")
    assert page.status_code == 503 and page.headers["Retry-After"]
    assert link_state(services(s3_app).links.engine, link["jti"]) == "issued"
    services(s3_app).storage = store
    assert s3_app.test_client().get(f"/d/{link['token']}").status_code == 303
