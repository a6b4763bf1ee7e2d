"""No token and no API key in the logs or the database after a mint-redeem cycle."""

from __future__ import annotations

import pytest
import requests

from tests.support.databases import dump_database
from tests.support.env import base_env
from tests.support.servers import prepare_instance, start_gunicorn

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_no_secret_in_logs_or_database(tmp_path, request, backend):
    database_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    env = base_env(tmp_path / "instance", database_url)
    creds = prepare_instance(env)
    api_key = creds["api_key"]
    headers = {"Authorization": f"Bearer {api_key}"}
    server = start_gunicorn(env, workers=2, log_path=tmp_path / "server.log")
    secrets = [api_key]
    try:
        for purpose in ("magic_link", "password_reset"):
            link = requests.post(
                f"{server.url}/api/v1/links",
                json={"purpose": purpose, "subject": "user-9"},
                headers=headers,
                timeout=10,
            ).json()
            secrets.append(link["token"])
            # the token in a path and a query string, as browsers and scanners send it
            requests.get(link["url"].replace("http://127.0.0.1:8000", server.url), timeout=10)
            requests.get(f"{server.url}/nothing?token={link['token']}", timeout=10)
            assert (
                requests.post(
                    f"{server.url}/api/v1/links/verify",
                    json={"token": link["token"], "purpose": purpose},
                    headers=headers,
                    timeout=10,
                ).status_code
                == 200
            )
            assert (
                requests.post(
                    f"{server.url}/api/v1/links/redeem",
                    json={"token": link["token"], "purpose": purpose},
                    headers=headers,
                    timeout=10,
                ).status_code
                == 200
            )
            replay = requests.post(
                f"{server.url}/api/v1/links/redeem",
                json={"token": link["token"], "purpose": purpose},
                headers=headers,
                timeout=10,
            )
            assert replay.status_code == 409 and link["token"] not in replay.text
        bad = requests.post(
            f"{server.url}/api/v1/links/redeem",
            json={"token": "x", "purpose": "magic_link"},
            headers={"Authorization": "Bearer " + api_key[:-1] + "Z"},
            timeout=10,
        )
        assert bad.status_code == 401 and api_key[:-1] not in bad.text
    finally:
        server.stop()
    log = server.log()
    assert '"jti"' in log, "the structured log should name the jti"
    stored = dump_database(env["LINKSVC_DATABASE_URL"])
    for secret in secrets:
        for needle in (secret, secret.split(".")[-1] if "." in secret else secret[4:]):
            assert needle not in log
            assert needle not in stored
