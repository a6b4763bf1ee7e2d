import pytest

from linksvc import config
from linksvc.config import ConfigError

from .support import secret_b64


def test_defaults(tmp_path):
    s = config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path)})
    assert s.base_url == "http://127.0.0.1:8000"
    assert s.database_url == f"sqlite:///{tmp_path / 'linksvc.db'}"
    assert s.leeway == 5
    assert s.max_ttl == {"magic_link": 300, "password_reset": 300, "download": 300}
    assert s.supersede_purposes == {"password_reset"}
    assert s.storage == "local"
    assert s.key_encryption_key is None  # never invented: init-db writes it


def test_multi_host_database_url_reaches_libpq_whole(tmp_path):
    """The failover shape: every data host in one URL, libpq keeping the one that accepts
    writes. The URL passes the checks and the engine hands libpq both hosts and the attribute."""
    from linksvc import db

    url = (
        "postgresql://linksvc@/linksvc?host=db-a,db-b&port=5432,6432"
        "&target_session_attrs=read-write"
    )
    s = config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_DATABASE_URL": url})
    assert s.database_url == "postgresql+psycopg" + url[len("postgresql") :]
    engine = db.make_engine(s.database_url)
    _, params = engine.dialect.create_connect_args(engine.url)
    assert params["host"] == "db-a,db-b" and params["port"] == "5432,6432"
    assert params["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(
    "name,value",
    [
        ("LINKSVC_LEEWAY", "61"),
        ("LINKSVC_LEEWAY", "five"),
        ("LINKSVC_LEEWAY", "-1"),
        ("LINKSVC_MAX_TTL_MAGIC_LINK", "901"),
        ("LINKSVC_MAX_TTL_DOWNLOAD", "3600"),
        ("LINKSVC_BASE_URL", "ftp://example.com"),
        ("LINKSVC_BASE_URL", "https://example.com/?next=x"),
        ("LINKSVC_DATABASE_URL", "mysql://localhost/x"),
        ("LINKSVC_ENV", "staging"),
        ("LINKSVC_SUPERSEDE_PURPOSES", "password_reset,bogus"),
        ("LINKSVC_STORAGE", "gcs"),
        ("LINKSVC_KEY_ENCRYPTION_KEY", "c2hvcnQ"),
        ("LINKSVC_SMTP_URL", "http://mail"),
    ],
)
def test_bad_value_names_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), name: value})
    assert info.value.name == name
    assert name in str(info.value)


def test_production_requires_secrets_and_https(tmp_path):
    base = {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_ENV": "production"}
    with pytest.raises(ConfigError) as info:
        config.load({**base, "LINKSVC_BASE_URL": "https://links.example.com"})
    assert info.value.name == "LINKSVC_KEY_ENCRYPTION_KEY"
    secrets = {"LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(), "LINKSVC_SECRET_KEY": secret_b64()}
    with pytest.raises(ConfigError) as info:
        config.load({**base, **secrets, "LINKSVC_BASE_URL": "http://links.example.com"})
    assert info.value.name == "LINKSVC_BASE_URL"
    s = config.load({**base, **secrets, "LINKSVC_BASE_URL": "https://links.example.com"})
    assert s.is_production and s.issuer == "https://links.example.com"


def test_s3_needs_bucket(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_STORAGE": "s3"})
    assert info.value.name == "LINKSVC_S3_BUCKET"


def test_bad_setting_stops_startup_with_message(tmp_path):
    import os
    import subprocess

    from .support import ROOT, venv_bin

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env.update({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_LEEWAY": "600"})
    proc = subprocess.run(
        [venv_bin("python"), "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 4  # gunicorn's 'app failed to load': no respawn loop
    assert "LINKSVC_LEEWAY" in proc.stderr
    assert "Traceback" not in proc.stderr
