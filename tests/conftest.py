"""Shared fixtures: a fresh app and database per test (built by the migrations), an API
client with a registered application, and real servers where a test needs them."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from linksvc import clients as clients_mod
from linksvc import create_app, db, keys, migrate
from linksvc.config import PURPOSES
from linksvc.services import services

from .support import base_env, pg_database

REDIRECT = "http://127.0.0.1:5001/callback"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file brought to head by the migrations once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "linksvc.db"
    engine = db.make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def env(tmp_path: Path, migrated_sqlite: Path) -> dict[str, str]:
    instance = tmp_path / "instance"
    instance.mkdir()
    shutil.copy(migrated_sqlite, instance / "linksvc.db")
    return base_env(instance)


def _prepare(app: Flask) -> None:
    svc = services(app).links
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, int(time.time()))


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Flask]:
    app = create_app(env)
    _prepare(app)
    yield app
    services(app).links.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@dataclass
class ApiUser:
    """A registered client application talking to the API through the test client."""

    http: FlaskClient
    client: clients_mod.Client
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def mint(self, purpose: str = "magic_link", subject: str = "user-42", **fields: Any) -> Any:
        return self.http.post(
            "/api/v1/links",
            json={"purpose": purpose, "subject": subject, **fields},
            headers=self.headers,
        )

    def minted(
        self, purpose: str = "magic_link", subject: str = "user-42", **fields: Any
    ) -> dict[str, Any]:
        resp = self.mint(purpose, subject, **fields)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()

    def redeem(self, token: Any, purpose: str = "magic_link") -> Any:
        return self.http.post(
            "/api/v1/links/redeem", json={"token": token, "purpose": purpose}, headers=self.headers
        )

    def verify(self, token: Any, purpose: str = "magic_link") -> Any:
        return self.http.post(
            "/api/v1/links/verify", json={"token": token, "purpose": purpose}, headers=self.headers
        )

    def status(self, jti: str) -> Any:
        return self.http.get(f"/api/v1/links/{jti}", headers=self.headers)


def make_api_user(app: Flask, name: str = "acme", **kwargs: Any) -> ApiUser:
    svc = services(app).links
    options: dict[str, Any] = {
        "purposes": list(PURPOSES),
        "redirect_uris": [REDIRECT],
        "display_name": "Acme",
        "mint_limit": "100000 per minute",
        "subject_limit": "100000 per minute",
    }
    options.update(kwargs)
    with db.write(svc.engine) as conn:
        record, key = clients_mod.create(conn, name, now=int(time.time()), **options)
    return ApiUser(app.test_client(), record, key)


@pytest.fixture
def link_format() -> str:
    """How ``api``'s links are written; a module parametrises it (``jwt``, ``short``) to run
    its tests over both forms of a link (PRODUCT §8)."""
    return "jwt"


@pytest.fixture
def api(app: Flask, link_format: str) -> ApiUser:
    return make_api_user(app, link_format=link_format)


@pytest.fixture
def other_api(app: Flask) -> ApiUser:
    return make_api_user(app, "globex", display_name="Globex")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (skips outside CI when the server is absent)."""
    with pg_database() as url:
        yield url


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Say plainly what this machine did not test: each skip reason once, with its count
    (the reasons name the missing part and how to install it)."""
    from collections import Counter

    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("not tested on this machine")
        for reason, n in reasons.most_common():
            terminalreporter.write_line(f"{n:4d} skipped: {reason}")
