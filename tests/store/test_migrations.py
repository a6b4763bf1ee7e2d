"""Migrations: an empty database reaches head on SQLite and PostgreSQL, the models and the
migrated schema agree (Alembic's autogenerate finds nothing), every step downgrades and
upgrades again, and several nodes running `init-db` at once on PostgreSQL is safe."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from linksvc.store import db, migrate, partitions
from tests.support.env import ROOT, _clean_environ, base_env, flask_cli, venv_bin

TABLES = {"clients", "links", "link_events", "codes", "signing_keys"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'linksvc.db'}"
    return request.getfixturevalue("pg_url")


def _tables(engine: sa.engine.Engine) -> set[str]:
    """The tables, without the ledger's day partitions (PostgreSQL lists those as tables)."""
    names = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    return {n for n in names if not partitions.is_partition_name(n)}


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1, "migrations have branched: merge them"
    for rev in script.walk_revisions():
        assert rev.down_revision is None or isinstance(rev.down_revision, str)


def test_migrations_are_frozen() -> None:
    """A migration imports nothing of the application: its modules move and change after the
    migration was written, and an old step must keep doing what it did (0007 once imported
    linksvc.store.partitions)."""
    offenders = []
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "linksvc"]
    assert not offenders, offenders


def test_empty_database_to_head_matches_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        assert _tables(engine) == set()
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        assert TABLES <= _tables(engine) == set(db.metadata.tables)
        assert migrate.diff(engine) == []
        # Running it again (every deploy does) changes nothing.
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
    finally:
        engine.dispose()


def test_diff_sees_a_model_change_without_migration(database_url: str) -> None:
    """The check can fail: a column the models have and the migrations lack shows up."""
    engine = db.make_engine(database_url)
    try:
        migrate.upgrade(engine)
        with db.write(engine) as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP INDEX ix_links_exp")
            else:
                conn.exec_driver_sql("ALTER TABLE links DROP COLUMN completion_hash")
        changes = migrate.diff(engine)
        assert changes, "a schema that differs from the models must be reported"
    finally:
        engine.dispose()


def test_every_step_downgrades_and_upgrades_again(database_url: str) -> None:
    engine = db.make_engine(database_url)
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    try:
        for rev in revisions:  # an old database catches up one step at a time
            migrate.upgrade(engine, rev)
            assert migrate.current(engine) == rev
        from alembic import command

        command.downgrade(migrate.alembic_config(engine), "base")
        assert _tables(engine) == set()
        migrate.upgrade(engine)
        assert migrate.diff(engine) == []
    finally:
        engine.dispose()


def test_init_db_cli_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    env = base_env(tmp_path / "instance", pg_url)
    first = flask_cli(env, "init-db")
    assert f"database at schema {migrate.head()}" in first.stdout
    assert "signing key" in first.stdout
    again = flask_cli(env, "init-db")
    assert f"database at schema {migrate.head()}" in again.stdout
    assert "signing key" not in again.stdout  # keys exist; nothing new


def test_concurrent_init_db_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Three nodes deploying at once: the advisory lock lets one migrate, the others wait
    and find the schema at head; none fails on a half-built schema."""
    env = base_env(tmp_path / "instance", pg_url)
    full = {**_clean_environ(), **env}
    procs = [
        subprocess.Popen(
            [venv_bin("flask"), "--app", "app", "init-db"],
            cwd=ROOT,
            env=full,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outs = [(p.communicate(timeout=120)[0], p.returncode) for p in procs]
    for out, rc in outs:
        assert rc == 0, out
        assert f"database at schema {migrate.head()}" in out
    engine = db.make_engine(pg_url)
    try:
        assert migrate.diff(engine) == []
        with engine.connect() as conn:
            active = conn.execute(
                sa.text("SELECT count(*) FROM signing_keys WHERE state = 'active'")
            ).scalar()
        assert active == 1
    finally:
        engine.dispose()
