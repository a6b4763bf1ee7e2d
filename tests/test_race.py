"""Single use under a real race: gunicorn with several worker processes, 32+ concurrent
redemptions of one link over HTTP, on SQLite and on PostgreSQL. Exactly one wins."""

from __future__ import annotations

import collections

import pytest
import requests
import sqlalchemy as sa

from .support import base_env, prepare_instance, race, start_gunicorn

pytestmark = pytest.mark.slow

RACERS = 32


def _run_race(tmp_path, database_url=None):
    env = base_env(tmp_path / "instance", database_url)
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    try:
        results = []
        for round_ in range(3):
            link = requests.post(
                f"{server.url}/api/v1/links",
                json={"purpose": "magic_link", "subject": f"u{round_}"},
                headers=headers,
                timeout=10,
            ).json()
            codes = race(
                f"{server.url}/api/v1/links/redeem",
                RACERS,
                {"token": link["token"], "purpose": "magic_link"},
                headers,
            )
            results.append(collections.Counter(codes))
            state = requests.get(
                f"{server.url}/api/v1/links/{link['jti']}", headers=headers, timeout=10
            ).json()
            assert state["state"] == "consumed"
            assert [e["event"] for e in state["events"]].count("consumed") == 1
        return results, server, env
    finally:
        server.stop()


def test_race_sqlite(tmp_path):
    results, server, _ = _run_race(tmp_path)
    for counts in results:
        assert counts == {200: 1, 409: RACERS - 1}, counts
    assert "Traceback" not in server.log()


def test_race_postgresql(tmp_path, pg_url):
    results, _server, _env = _run_race(tmp_path, pg_url)
    for counts in results:
        assert counts == {200: 1, 409: RACERS - 1}, counts
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        consumed = conn.execute(
            sa.text("SELECT count(*) FROM links WHERE state = 'consumed'")
        ).scalar()
        events = conn.execute(
            sa.text("SELECT count(*) FROM link_events WHERE event = 'consumed'")
        ).scalar()
    engine.dispose()
    assert consumed == 3 and events == 3
