"""Single use under a real race: gunicorn or granian with several worker processes, 32+ concurrent
redemptions of one link over HTTP, on SQLite and on PostgreSQL. Exactly one wins."""

from __future__ import annotations

import collections

import pytest
import requests
import sqlalchemy as sa

from tests.support.env import base_env
from tests.support.servers import SERVERS, prepare_instance, race, start_gunicorn, start_server

pytestmark = pytest.mark.slow

RACERS = 32


def _run_race(tmp_path, database_url=None, server_name="gunicorn"):
    env = base_env(tmp_path / "instance", database_url)
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    server = start_server(env, server=server_name, workers=3, log_path=tmp_path / "server.log")
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


@pytest.mark.parametrize("server_name", SERVERS)
def test_race_sqlite(tmp_path, server_name):
    results, server, _ = _run_race(tmp_path, server_name=server_name)
    for counts in results:
        assert counts == {200: 1, 409: RACERS - 1}, counts
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("server_name", SERVERS)
def test_race_postgresql(tmp_path, pg_url, server_name):
    results, _server, _env = _run_race(tmp_path, pg_url, server_name)
    for counts in results:
        assert counts == {200: 1, 409: RACERS - 1}, counts
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        consumed = conn.execute(
            sa.text("SELECT count(*) FROM links WHERE state = 'consumed'")
        ).scalar()
        # An API redemption stores no "consumed" event (the row says it; the history API
        # derives it, checked above): none may have been written beside the rows either.
        events = conn.execute(
            sa.text("SELECT count(*) FROM link_events WHERE event = 'consumed'")
        ).scalar()
    engine.dispose()
    assert consumed == 3 and events == 0


# -- supersede under a real race (issue 17 item 1) -------------------------------------

MINTERS = 6
ROUNDS = 10


def _supersede_race(tmp_path, database_url=None):
    """``MINTERS`` concurrent password_reset mints for one subject, ``ROUNDS`` times over,
    through gunicorn workers; returns, per subject, the states of its links."""
    env = base_env(tmp_path / "instance", database_url)
    creds = prepare_instance(env)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    try:
        for round_ in range(ROUNDS):
            codes = race(
                f"{server.url}/api/v1/links",
                MINTERS,
                {"purpose": "password_reset", "subject": f"reset-{round_}"},
                headers,
            )
            assert codes == [201] * MINTERS, codes
        log = server.log()
    finally:
        server.stop()
    engine = sa.create_engine(env["LINKSVC_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT subject, state FROM links")).all()
    engine.dispose()
    states: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for subject, state in rows:
        states[subject][state] += 1
    return states, log


def _assert_one_issued(states):
    assert len(states) == ROUNDS
    for subject, counts in states.items():
        assert counts == {"issued": 1, "superseded": MINTERS - 1}, (subject, counts)


def test_supersede_race_sqlite(tmp_path):
    states, log = _supersede_race(tmp_path)
    _assert_one_issued(states)
    assert "Traceback" not in log


def test_supersede_race_postgresql(tmp_path, pg_url):
    states, log = _supersede_race(tmp_path, pg_url)
    _assert_one_issued(states)
    assert "Traceback" not in log


# -- the page's button under a real race, for both forms of a link (PRODUCT §8) ----------

PRESSERS = 16


def _press_race(tmp_path, link_format, database_url=None):
    """``PRESSERS`` browsers open one link's page, then all press its button at once,
    through gunicorn workers; returns the statuses of the presses of each round."""
    import re
    import threading
    from concurrent.futures import ThreadPoolExecutor

    env = base_env(tmp_path / "instance", database_url, LINKSVC_PAGE_RATE_LIMIT="100000 per minute")
    creds = prepare_instance(env, "acme", "--link-format", link_format)
    headers = {"Authorization": f"Bearer {creds['api_key']}"}
    server = start_gunicorn(env, workers=3, log_path=tmp_path / "server.log")
    try:
        results = []
        for round_ in range(2):
            link = requests.post(
                f"{server.url}/api/v1/links",
                json={"purpose": "magic_link", "subject": f"u{round_}"},
                headers=headers,
                timeout=10,
            ).json()
            # The link's path on this server (the URL names the configured base URL).
            tail = link["url"].rsplit("/l/", 1)[-1]
            assert ("." in tail) == (link_format == "jwt")
            url = f"{server.url}/l/{tail}"
            browsers = [requests.Session() for _ in range(PRESSERS)]
            forms = []
            for b in browsers:
                page = b.get(url, timeout=10)
                assert page.status_code == 200, page.text
                forms.append(re.search(r'name="csrf" value="([^"]+)"', page.text).group(1))
            barrier = threading.Barrier(PRESSERS)

            def press(i: int, url: str = url) -> int:
                barrier.wait()
                return (
                    browsers[i]
                    .post(url, data={"csrf": forms[i]}, allow_redirects=False, timeout=30)
                    .status_code
                )

            with ThreadPoolExecutor(max_workers=PRESSERS) as pool:
                results.append(collections.Counter(pool.map(press, range(PRESSERS))))
            state = requests.get(
                f"{server.url}/api/v1/links/{link['jti']}", headers=headers, timeout=10
            ).json()
            assert state["state"] == "consumed"
        assert "Traceback" not in server.log()
        return results
    finally:
        server.stop()


@pytest.mark.parametrize("link_format", ["jwt", "short"])
def test_press_race_sqlite(tmp_path, link_format):
    for counts in _press_race(tmp_path, link_format):
        assert counts == {303: 1, 409: PRESSERS - 1}, counts


@pytest.mark.parametrize("link_format", ["jwt", "short"])
def test_press_race_postgresql(tmp_path, pg_url, link_format):
    for counts in _press_race(tmp_path, link_format, pg_url):
        assert counts == {303: 1, 409: PRESSERS - 1}, counts
