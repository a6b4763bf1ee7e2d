"""Alembic environment: runs against the engine linksvc hands over (see linksvc/store/migrate.py)."""

import sqlalchemy as sa
from alembic import context

from linksvc.store.db import metadata
from linksvc.store.migrate import SETUP_LOCK

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: build the engine from the usual settings
    from linksvc import config as settings_mod
    from linksvc.store.db import make_engine

    engine = make_engine(settings_mod.load().database_url)

with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # The service's engine caps statements at a few seconds; a migration on a big table
        # may take longer, and waits for the lock of a migration running on another node.
        connection.execute(sa.text("SET statement_timeout = 0"))
        connection.execute(sa.text("SET lock_timeout = 0"))
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SETUP_LOCK})
        connection.commit()
    try:
        context.configure(
            connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if connection.dialect.name == "postgresql":
            connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SETUP_LOCK})
            # The session settings above must not follow this connection back into the pool.
            connection.execute(sa.text("RESET statement_timeout"))
            connection.execute(sa.text("RESET lock_timeout"))
            connection.commit()
