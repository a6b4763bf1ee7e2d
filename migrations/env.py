"""Alembic environment: runs against the engine linksvc hands over (see linksvc/migrate.py)."""

from alembic import context

from linksvc.db import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: build the engine from the usual settings
    from linksvc import config as settings_mod
    from linksvc.db import make_engine

    engine = make_engine(settings_mod.load().database_url)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
