"""Databases for tests: a fresh PostgreSQL database on the machine's server, the Redis URL,
and a dump of every row (to assert that a secret was never stored)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

from .env import missing

PG_ADMIN_URL = os.environ.get("LINKSVC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LINKSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pg_available() -> tuple[bool, str]:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextlib.contextmanager
def pg_database(prefix: str = "linksvc_t") -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server; dropped afterwards.
    Where the server is absent: skipped, or a failure in CI (see :func:`missing`)."""
    ok, why = pg_available()
    if not ok:
        missing("PostgreSQL at 127.0.0.1:5432", why)
    with fresh_pg_database(prefix) as url:
        yield url


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """Create a uniquely named database (``prefix_…``) and drop it afterwards."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        # template0 accepts no connections, so concurrent CREATE DATABASE calls never trip
        # over "source database is being accessed by other users".
        conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dump_database(url: str) -> str:
    """Every row of every table, as text: for asserting that a secret was never stored."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    parts = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    engine.dispose()
    return "\n".join(parts)
