"""Shared fixtures: a fresh app and database per test (built by the migrations), an API
client with a registered application, and real servers where a test needs them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from linksvc import create_app
from linksvc.services import services
from linksvc.store import db, migrate
from tests.support.apps import ApiUser, _prepare, make_api_user
from tests.support.databases import pg_database
from tests.support.env import base_env


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
