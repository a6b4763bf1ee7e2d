"""Schema migrations (Alembic), run by ``flask --app app init-db`` and by the tests.

Every schema change is a new file in ``migrations/versions/``; ``diff`` (empty in the tests)
proves the models and the migrations agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from linksvc.store import db

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

#: PostgreSQL advisory lock that serialises set-up across nodes: every node may run
#: ``init-db`` at deploy time; one at a time migrates and creates the first keys, the others
#: then find the schema at head and the keys in place.
SETUP_LOCK = 7_252_018_001


def serialise_setup(conn: Connection) -> None:
    """Hold the set-up lock until ``conn``'s transaction ends (PostgreSQL; SQLite's write
    transaction is already exclusive)."""
    if conn.dialect.name == "postgresql":
        db.advisory_xact_lock(conn, SETUP_LOCK)


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: the newest schema)."""
    command.upgrade(alembic_config(engine), revision)


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def diff(engine: Engine) -> list[Any]:
    """Differences between the models (``linksvc.store.db.metadata``) and the database's schema,
    as Alembic's autogenerate sees them. Empty when every model change has its migration."""
    from alembic.autogenerate import compare_metadata

    from linksvc.store.db import metadata
    from linksvc.store.partitions import is_partition_name

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                # The day partitions of the ledger are data, not schema (linksvc.store.partitions).
                "include_name": lambda name, type_, _parents: (
                    not (type_ == "table" and is_partition_name(name or ""))
                ),
            },
        )
        return list(compare_metadata(ctx, metadata))
