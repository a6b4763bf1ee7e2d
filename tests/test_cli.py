"""The command line, run for real (subprocess) against a fresh instance folder."""

from __future__ import annotations

import json
import os
import stat

import sqlalchemy as sa

from linksvc import clients as clients_mod

from .support import flask_cli


def test_init_db_is_idempotent_and_makes_private_dev_secrets(tmp_path):
    env = {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_ENV": "development"}
    first = flask_cli(env, "init-db")
    assert "created active signing key" in first.stdout
    for name in ("kek.key", "secret.key"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    kek = (tmp_path / "kek.key").read_text()
    second = flask_cli(env, "init-db")
    assert "created" not in second.stdout
    assert "database at schema" in second.stdout
    assert (tmp_path / "kek.key").read_text() == kek
    keys = json.loads(flask_cli(env, "keys", "list", "--json").stdout)
    assert sorted(k["state"] for k in keys) == ["active", "next"]


def test_clients_create_json_stores_only_a_hash(tmp_path):
    env = {"LINKSVC_INSTANCE_PATH": str(tmp_path)}
    flask_cli(env, "init-db")
    out = flask_cli(
        env,
        "clients",
        "create",
        "acme",
        "--purposes",
        "magic_link,password_reset",
        "--redirect-uri",
        "https://acme.example/cb",
        "--redirect-uri",
        "https://acme.example/reset",
        "--json",
    )
    created = json.loads(out.stdout)
    assert created["client_id"].startswith("cl_") and created["api_key"].startswith("lsk_")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'linksvc.db'}")
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM clients")).mappings().one()
    engine.dispose()
    assert created["api_key"] not in repr(dict(row))
    assert row["api_key_hash"] == clients_mod.hash_api_key(created["api_key"])
    assert json.loads(row["redirect_uris"]) == [
        "https://acme.example/cb",
        "https://acme.example/reset",
    ]
    listed = flask_cli(env, "clients", "list").stdout
    assert "acme" in listed and created["api_key"] not in listed


def test_clients_create_refuses_bad_input(tmp_path):
    env = {"LINKSVC_INSTANCE_PATH": str(tmp_path)}
    flask_cli(env, "init-db")
    bad = flask_cli(env, "clients", "create", "x", "--purposes", "sudo", check=False)
    assert bad.returncode != 0 and "purposes" in bad.stderr
    bad = flask_cli(
        env, "clients", "create", "x", "--redirect-uri", "javascript:alert(1)", check=False
    )
    assert bad.returncode != 0 and "redirect URI" in bad.stderr
    flask_cli(env, "clients", "create", "dup")
    bad = flask_cli(env, "clients", "create", "dup", check=False)
    assert bad.returncode != 0 and "already exists" in bad.stderr


def test_mint_by_hand(tmp_path):
    env = {"LINKSVC_INSTANCE_PATH": str(tmp_path)}
    flask_cli(env, "init-db")
    flask_cli(env, "clients", "create", "acme", "--redirect-uri", "https://acme.example/cb")
    out = flask_cli(env, "mint", "acme", "--purpose", "magic_link", "--subject", "user-1")
    assert out.stdout.startswith("http://127.0.0.1:8000/l/ey")
    assert "jti" in out.stderr
