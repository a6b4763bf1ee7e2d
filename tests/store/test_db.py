"""linksvc.db's hot connections: one per thread, kept between statements, outside the pool,
closed on dispose, replaced when lost — on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from linksvc import errors
from linksvc.store import db
from tests.support.databases import pg_database

SELECT_ONE = db.Statement(sa.select(sa.literal(1)))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = db.make_engine(f"sqlite:///{tmp_path / 'hot.db'}", pool_size=1)
        yield eng
        eng.dispose()
    else:
        with pg_database("linksvc_hot") as url:
            eng = db.make_engine(url, pool_size=1)
            yield eng
            eng.dispose()


def _driver_conn(engine: Engine) -> object:
    with db.driver(engine, writes=False) as conn:
        return conn


def test_a_thread_keeps_its_connection_and_threads_do_not_share(engine: Engine) -> None:
    first = _driver_conn(engine)
    assert db.execute(engine, SELECT_ONE, {}, writes=False) == (1,)
    assert _driver_conn(engine) is first  # the same connection, statement after statement
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(_driver_conn(engine)))
    t.start()
    t.join()
    assert seen and seen[0] is not first


def test_held_connections_leave_the_pool_to_everything_else(engine: Engine) -> None:
    # pool_size=1 (and as many again of overflow): four threads each holding a hot
    # connection still leave the pool free for a write transaction.
    done = threading.Barrier(5)

    def hold() -> None:
        db.execute(engine, SELECT_ONE, {}, writes=False)
        done.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    with db.write(engine) as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    done.wait(timeout=10)
    for t in threads:
        t.join()


def test_dispose_closes_the_held_connections(engine: Engine) -> None:
    conn = _driver_conn(engine)
    engine.dispose()
    closed = conn.closed if isinstance(conn, psycopg.Connection) else _sqlite_closed(conn)
    assert closed
    assert db.execute(engine, SELECT_ONE, {}, writes=False) == (1,)  # a fresh one, on demand
    assert _driver_conn(engine) is not conn


def _sqlite_closed(conn: object) -> bool:
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_a_connection_the_server_ended_is_a_503_then_replaced() -> None:
    with pg_database("linksvc_hot") as url:
        engine = db.make_engine(url, pool_size=2)
        try:
            conn = _driver_conn(engine)
            assert isinstance(conn, psycopg.Connection)
            # The pool's own connection too: after a server restart both are dead.
            with db.read(engine) as c:
                c.execute(sa.text("SELECT 1"))
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            # Used a moment ago, so not pinged: the statement finds it dead, a clean 503.
            with pytest.raises(errors.ServiceUnavailable):
                db.execute(engine, SELECT_ONE, {}, writes=False)
            # The next one gets a live connection, not the pool's dead one.
            assert db.execute(engine, SELECT_ONE, {}, writes=False) == (1,)
            assert _driver_conn(engine) is not conn
        finally:
            engine.dispose()
