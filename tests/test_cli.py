"""The command line, run for real (subprocess) against a fresh instance folder."""

from __future__ import annotations

import json
import os
import stat

import sqlalchemy as sa

from linksvc.clients import registry as clients_mod
from linksvc.services import services
from tests.support.env import flask_cli


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


def _demo_env(tmp_path, mode: str = "development") -> dict[str, str]:
    return {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_ENV": mode}


def _demo_key(out: str) -> str:
    return next(w for w in out.split() if w.startswith("lsk_"))


def test_demo_key_stays_the_same_across_runs_in_development(tmp_path):
    """`make run` runs `demo` each time: an example app started with the printed key keeps working."""
    from linksvc import create_app

    env = _demo_env(tmp_path)
    flask_cli(env, "init-db")
    first = flask_cli(env, "demo", "--env-file", str(tmp_path / "demo.env")).stdout
    second = flask_cli(env, "demo", "--env-file", str(tmp_path / "demo.env")).stdout
    key = _demo_key(first)
    assert _demo_key(second) == key
    assert f"LINKSVC_API_KEY={key}" in (tmp_path / "demo.env").read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "demo.env").st_mode) == 0o600
    app = create_app(env)
    try:
        resp = app.test_client().post(
            "/api/v1/links",
            json={"purpose": "magic_link", "subject": "user-42"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert resp.status_code == 201, resp.get_json()
    finally:
        services(app).links.engine.dispose()


def test_demo_key_is_new_each_run_outside_development_and_refused_in_production(tmp_path):
    env = _demo_env(tmp_path, "test")
    flask_cli(env, "init-db")
    first = _demo_key(flask_cli(env, "demo").stdout)
    assert _demo_key(flask_cli(env, "demo").stdout) != first
    prod = {
        **env,
        "LINKSVC_ENV": "production",
        "LINKSVC_KEY_ENCRYPTION_KEY": (tmp_path / "kek.key").read_text().strip(),
        "LINKSVC_SECRET_KEY": (tmp_path / "secret.key").read_text().strip(),
    }
    refused = flask_cli(prod, "demo", check=False)
    assert refused.returncode != 0 and "development" in refused.stderr
    assert "lsk_" not in refused.stdout


def test_demo_follows_the_ports_of_make_run(tmp_path):
    """`make run PORT=8123 APP_PORT=5077`: the printed lines, the minted URLs and the demo
    client's redirect and restart URIs all name those ports (never 8000 or 5001)."""
    env = {**_demo_env(tmp_path), "LINKSVC_BASE_URL": "http://127.0.0.1:8123"}
    flask_cli(env, "init-db")
    out = flask_cli(env, "demo", "--app-url", "http://127.0.0.1:5077").stdout
    assert "http://127.0.0.1:8123/api/v1/links" in out and ":8000" not in out
    assert "http://127.0.0.1:5077/callback" in out and ":5001" not in out
    demo = next(
        c
        for c in json.loads(flask_cli(env, "clients", "list", "--json").stdout)
        if c["name"] == "demo"
    )
    assert demo["redirect_uris"] == ["http://127.0.0.1:5077/callback"]
    assert demo["restart_uri"] == "http://127.0.0.1:5077/"
    minted = flask_cli(env, "mint", "demo", "--purpose", "magic_link", "--subject", "u-1").stdout
    assert minted.startswith("http://127.0.0.1:8123/l/")


def test_clients_update_changes_redirects_prefixes_purposes_and_restart_uri(tmp_path):
    """A mistake at creation no longer means a new client."""
    env = {"LINKSVC_INSTANCE_PATH": str(tmp_path)}
    flask_cli(env, "init-db")
    flask_cli(env, "clients", "create", "acme", "--redirect-uri", "https://acme.example/cb")

    def show() -> dict:
        return json.loads(flask_cli(env, "clients", "list", "--json").stdout)[0]

    flask_cli(
        env,
        "clients",
        "update",
        "acme",
        "--add-redirect-uri",
        "https://acme.example/cb2",
        "--purposes",
        "magic_link,download",
        "--download-prefix",
        "reports/",
        "--restart-uri",
        "https://acme.example/sign-in",
    )
    c = show()
    assert c["redirect_uris"] == ["https://acme.example/cb", "https://acme.example/cb2"]
    assert c["purposes"] == ["magic_link", "download"]
    assert c["download_prefixes"] == ["reports/"]
    assert c["restart_uri"] == "https://acme.example/sign-in"

    flask_cli(env, "clients", "update", "acme", "--remove-redirect-uri", "https://acme.example/cb")
    flask_cli(env, "clients", "update", "acme", "--redirect-uri", "https://acme.example/new")
    flask_cli(env, "clients", "update", "acme", "--add-download-prefix", "exports/")
    flask_cli(env, "clients", "update", "acme", "--restart-uri", "")
    c = show()
    assert c["redirect_uris"] == ["https://acme.example/new"]
    assert c["download_prefixes"] == ["reports/", "exports/"]
    assert c["restart_uri"] is None

    # Each value is checked as at creation; a refused update changes nothing.
    for bad in (
        ("--purposes", "magic_link,teleport"),
        ("--redirect-uri", "javascript:alert(1)"),
        ("--restart-uri", "ftp://acme.example/"),
        ("--remove-redirect-uri", "https://not.registered/"),
    ):
        refused = flask_cli(env, "clients", "update", "acme", *bad, check=False)
        assert refused.returncode != 0 and "Error" in refused.stderr, bad
        assert "Traceback" not in refused.stderr
    assert show() == c
    nothing = flask_cli(env, "clients", "update", "acme", check=False)
    assert nothing.returncode != 0 and "nothing to change" in nothing.stderr


def test_display_names_with_format_characters_are_refused(runner):
    """Issue 17 item 6: a display name is shown on pages and in mail; a bidi override or a
    zero-width character could make it read as another application's."""
    for name in ("Acme\u202eknaB", "Ac\u200bme", "\ufeffAcme", "Acme\r\nBcc: x"):
        result = runner.invoke(args=["clients", "create", "spoof", "--display-name", name])
        assert result.exit_code != 0 and "display name" in result.output, (name, result.output)
    assert (
        runner.invoke(args=["clients", "create", "acme", "--display-name", "Acmé"]).exit_code == 0
    )
    result = runner.invoke(args=["clients", "update", "acme", "--display-name", "A\u202ecme"])
    assert result.exit_code != 0 and "display name" in result.output
    listed = runner.invoke(args=["clients", "list", "--json"]).output
    assert json.loads(listed)[0]["display_name"] == "Acmé"


def test_partitions_has_nothing_to_do_on_sqlite(app, runner):
    with app.app_context():
        out = runner.invoke(args=["partitions"])
    assert out.exit_code == 0 and "not partitioned" in out.output


def test_clients_link_format_is_set_shown_changed_and_checked(runner):
    """Issue 23: ``--link-format short|jwt`` on create and update; jwt by default."""
    made = runner.invoke(args=["clients", "create", "acme", "--json"])
    assert json.loads(made.output)["link_format"] == "jwt"
    made = runner.invoke(args=["clients", "create", "shorty", "--link-format", "short", "--json"])
    assert made.exit_code == 0 and json.loads(made.output)["link_format"] == "short"
    changed = runner.invoke(args=["clients", "update", "acme", "--link-format", "short", "--json"])
    assert changed.exit_code == 0 and json.loads(changed.output)["link_format"] == "short"
    bad = runner.invoke(args=["clients", "update", "acme", "--link-format", "tiny"])
    assert bad.exit_code != 0 and "tiny" in bad.output
    listed = {
        c["name"]: c["link_format"]
        for c in json.loads(runner.invoke(args=["clients", "list", "--json"]).output)
    }
    assert listed == {"acme": "short", "shorty": "short"}
