import pytest

from linksvc import config
from linksvc.config import ConfigError
from linksvc.services import services
from tests.support.env import secret_b64


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
    from linksvc.store import db

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

    from tests.support.env import ROOT, venv_bin

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env.update({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_LEEWAY": "600"})
    proc = subprocess.run(
        [venv_bin("python"), "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 4  # gunicorn's 'app failed to load': no respawn loop
    assert "LINKSVC_LEEWAY" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- under gunicorn: one line and status 4, every time (issue 24 item 12) ----------------

_PRODUCTION = {"LINKSVC_ENV": "production", "LINKSVC_BASE_URL": "https://links.example.com"}
STARTUP_REFUSALS = {
    "production_without_a_kek": (
        {**_PRODUCTION, "LINKSVC_SECRET_KEY": secret_b64()},
        "linksvc: configuration error: LINKSVC_KEY_ENCRYPTION_KEY: is required",
    ),
    "a_bad_setting": ({"LINKSVC_LEEWAY": "600"}, "linksvc: configuration error: LINKSVC_LEEWAY"),
    "production_without_a_signing_key": (
        {
            **_PRODUCTION,
            "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(),
            "LINKSVC_SECRET_KEY": secret_b64(),
        },
        "linksvc: cannot start: cannot read the signing keys from the database",
    ),
}


@pytest.mark.parametrize("case", sorted(STARTUP_REFUSALS))
def test_gunicorn_refuses_to_start_with_one_line_and_status_4_every_time(tmp_path, case):
    """`gunicorn -c gunicorn.conf.py app:app` (what `make serve` runs) with several workers:
    the master checks once, before forking, so the message is printed once, with no
    traceback, and the status is 4 on every run — not once per worker, and not, when two
    workers exited together, gunicorn's HaltServer traceback and status 1."""
    import os
    import subprocess

    from tests.support.env import ROOT, free_port, venv_bin

    settings, message = STARTUP_REFUSALS[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env.update({"LINKSVC_INSTANCE_PATH": str(tmp_path), **settings, "PYTHONUNBUFFERED": "1"})
    for _run in range(4):
        proc = subprocess.run(
            [
                venv_bin("gunicorn"),
                *("-c", str(ROOT / "gunicorn.conf.py"), "--workers", "3"),
                *("--bind", f"127.0.0.1:{free_port()}", "app:app"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 4, output
        assert "Traceback" not in output, output
        said = [line for line in output.splitlines() if line.startswith("linksvc: ")]
        assert len(said) == 1 and said[0].startswith(message), output
        assert "Booting worker" not in output  # refused before any worker was forked


# -- every setting fails cleanly, naming itself (issue 17 item 10) ----------------------

MALFORMED = [
    ("LINKSVC_MAIL_FROM", "linksvc <no-reply@example.com>\r\nBcc: victim@example.com"),
    ("LINKSVC_MAIL_FROM", "no-reply@example.com\nBcc: x@example.com"),
    ("LINKSVC_MAIL_FROM", "no-reply@example.com\x00"),
    ("LINKSVC_MAIL_FROM", "not an address"),
    ("LINKSVC_MAIL_FROM", "a@b@c"),
    ("LINKSVC_MAIL_FROM", "<>"),
    ("LINKSVC_RATELIMIT_STORAGE_URL", "redis//localhost"),
    ("LINKSVC_RATELIMIT_STORAGE_URL", "foo://x"),
    ("LINKSVC_RATELIMIT_STORAGE_URL", "redis://localhost:99999/0"),
    ("LINKSVC_RATELIMIT_STORAGE_URL", "memcached://localhost"),
    ("LINKSVC_DATABASE_URL", "postgresql://u@localhost:99999/x"),
    ("LINKSVC_DATABASE_URL", "postgresql://u@[::1/x"),
    ("LINKSVC_BASE_URL", "https://links.example.com:99999"),
    ("LINKSVC_BASE_URL", "https://[::1"),
    ("LINKSVC_SMTP_URL", "smtp://mail.example:99999"),
    ("LINKSVC_SMTP_URL", "smtp://[::1"),
    ("LINKSVC_S3_ENDPOINT_URL", "http://s3.example:99999"),
    ("LINKSVC_PAGE_RATE_LIMIT", "lots"),
    ("LINKSVC_RECIPIENT_LIMIT", "5 per fortnight"),
    ("LINKSVC_LOG_LEVEL", "loud"),
    ("LINKSVC_TRUSTED_PROXIES", "1.5"),
    ("LINKSVC_WEBHOOK_DEADLINE", "0"),
    ("LINKSVC_WEBHOOK_DEADLINE", "121"),
    ("LINKSVC_WEBHOOK_ENDPOINT_CONCURRENCY", "0"),
    ("LINKSVC_WEBHOOK_ENDPOINT_CONCURRENCY", "many"),
    ("LINKSVC_TRUSTED_HOSTS", "links.example.com, evil example"),
    ("LINKSVC_SECRET_KEY", "A" * 20),
    ("LINKSVC_KEY_ENCRYPTION_KEY", "not base64!" * 5),
]


@pytest.mark.parametrize("name,value", MALFORMED)
def test_every_setting_fails_cleanly_naming_itself(env, name, value):
    """create_app (what gunicorn and the CLI run) raises ConfigError naming the variable,
    which app.py turns into one line and exit status 4 — never a traceback or a 500 later."""
    from linksvc import create_app

    with pytest.raises(ConfigError) as info:
        app = create_app({**env, name: value})
        services(app).links.engine.dispose()
    assert info.value.name == name, info.value
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_malformed_ratelimit_url_stops_startup_without_a_traceback(tmp_path):
    import os
    import subprocess

    from tests.support.env import ROOT, venv_bin

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env.update(
        {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_RATELIMIT_STORAGE_URL": "redis//x"}
    )
    proc = subprocess.run(
        [venv_bin("python"), "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 4
    assert "LINKSVC_RATELIMIT_STORAGE_URL" in proc.stderr and "Traceback" not in proc.stderr


# -- degenerate secrets refused in production (issue 17 item 9) ------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


DEGENERATE = {
    "all_zero": _b64(bytes(32)),
    "one_byte_repeated": _b64(b"\x5a" * 32),
    "short_pattern": _b64(b"\x01\x02\x03\x04" * 8),
    "passphrase": "correct-horse-battery-staple-correct-horse-battery",
    "camel_passphrase": "CorrectHorseBatteryStapleCorrectHorseBattery",
    "dashed_letters": "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-W-X-Y-Z",
    "outside_alphabet": secret_b64()[:40] + "!!!" + secret_b64()[:10],
    "spaces_inside": secret_b64()[:21] + " " + secret_b64()[:22],
    "standard_base64": secret_b64()[:41] + "+/",
    "spare_trailing_bits": secret_b64()[:42] + "B",
    "too_short": secret_b64()[:40],
}


@pytest.mark.parametrize("which", ["LINKSVC_KEY_ENCRYPTION_KEY", "LINKSVC_SECRET_KEY"])
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_production_refuses_degenerate_secrets(tmp_path, which, case):
    good = {"LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(), "LINKSVC_SECRET_KEY": secret_b64()}
    base = {
        "LINKSVC_INSTANCE_PATH": str(tmp_path),
        "LINKSVC_ENV": "production",
        "LINKSVC_BASE_URL": "https://links.example.com",
        **good,
    }
    with pytest.raises(ConfigError) as info:
        config.load({**base, which: DEGENERATE[case]})
    assert info.value.name == which
    assert DEGENERATE[case] not in str(info.value)  # the message never echoes the secret
    assert config.load(base).is_production  # and the good ones pass


def test_production_refuses_the_same_secret_twice(tmp_path):
    same = secret_b64()
    with pytest.raises(ConfigError) as info:
        config.load(
            {
                "LINKSVC_INSTANCE_PATH": str(tmp_path),
                "LINKSVC_ENV": "production",
                "LINKSVC_BASE_URL": "https://links.example.com",
                "LINKSVC_KEY_ENCRYPTION_KEY": same,
                "LINKSVC_SECRET_KEY": same,
            }
        )
    assert info.value.name == "LINKSVC_SECRET_KEY"
    assert "LINKSVC_KEY_ENCRYPTION_KEY" in str(info.value)


def test_generated_secrets_are_accepted_in_production(tmp_path):
    """What init-db writes and the manual's one-liner (docs/configuration.md) prints always passes the checks."""
    import secrets

    for _ in range(2000):
        config.decode_secret("X", secrets.token_urlsafe(32), production=True)
        config.decode_secret("X", secret_b64(), production=True)


def test_trusted_hosts_come_from_the_base_url(tmp_path):
    base = {
        "LINKSVC_INSTANCE_PATH": str(tmp_path),
        "LINKSVC_ENV": "production",
        "LINKSVC_BASE_URL": "https://Links.Example.com:8443",
        "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(),
        "LINKSVC_SECRET_KEY": secret_b64(),
    }
    assert config.load(base).trusted_hosts == ("links.example.com",)
    extra = config.load({**base, "LINKSVC_TRUSTED_HOSTS": "internal.example, .svc.local"})
    assert extra.trusted_hosts == ("links.example.com", "internal.example", ".svc.local")
    dev = config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path)})
    assert dev.trusted_hosts == ("127.0.0.1", "localhost")


# -- the LINKSVC_CONFIG file and the _FILE secrets (container configuration) ----------------


def _toml(tmp_path, text):
    path = tmp_path / "linksvc.toml"
    path.write_text(text)
    return str(path)


def test_config_file_sets_every_kind_of_value(tmp_path):
    path = _toml(
        tmp_path,
        'base_url = "https://links.example.com"\n'
        "leeway = 7\n"
        "webhook_allow_private = true\n"
        'trusted_hosts = ["a.example.com", "b.example.com"]\n'
        'supersede_purposes = "password_reset,magic_link"\n',
    )
    s = config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
    assert s.base_url == "https://links.example.com"
    assert s.leeway == 7
    assert s.webhook_allow_private is True
    assert {"a.example.com", "b.example.com"} <= set(s.trusted_hosts)
    assert s.supersede_purposes == {"password_reset", "magic_link"}


def test_environment_overrides_the_file(tmp_path):
    path = _toml(tmp_path, 'leeway = 7\nlog_level = "debug"\n')
    s = config.load(
        {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path, "LINKSVC_LEEWAY": "9"}
    )
    assert s.leeway == 9  # the environment wins
    assert s.log_level == "debug"  # what the environment leaves alone comes from the file


def test_gunicorn_settings_are_keys_too(tmp_path):
    path = _toml(tmp_path, 'bind = "0.0.0.0:8000"\nworkers = 3\n')
    env = config.environment({"LINKSVC_CONFIG": path, "LINKSVC_WORKERS": "5"})
    assert env["LINKSVC_BIND"] == "0.0.0.0:8000" and env["LINKSVC_WORKERS"] == "5"


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("levway = 7\n", "unknown key 'levway'"),
        ("LEEWAY = 7\n", "unknown key 'LEEWAY'"),
        ("linksvc_leeway = 7\n", "unknown key 'linksvc_leeway'"),
        ('config = "/etc/other.toml"\n', "unknown key 'config'"),
        ("leeway = 7\nleeway = 8\n", "not valid TOML"),
        ('leeway = "7\n', "not valid TOML"),
        ("[tables]\nleeway = 7\n", "unknown key 'tables'"),
    ],
)
def test_bad_config_file_names_the_setting(tmp_path, text, fragment):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
    assert info.value.name == "LINKSVC_CONFIG"
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(
            {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": str(tmp_path / "no.toml")}
        )
    assert info.value.name == "LINKSVC_CONFIG"
    assert "no.toml" in str(info.value) and "No such file" in str(info.value)


def test_bad_value_from_the_file_names_the_setting(tmp_path):
    for text, name in (
        ("leeway = 61\n", "LINKSVC_LEEWAY"),
        ("leeway = 1.5\n", "LINKSVC_LEEWAY"),
        ('storage = "gcs"\n', "LINKSVC_STORAGE"),
        ("trusted_hosts = [1, 2]\n", "LINKSVC_TRUSTED_HOSTS"),
    ):
        path = _toml(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
        assert info.value.name == name, text


def test_secrets_from_files(tmp_path):
    kek, secret = secret_b64(), secret_b64()
    (tmp_path / "kek").write_text(kek + "\n")  # as `echo … > file` writes it
    (tmp_path / "secret").write_text(secret)
    (tmp_path / "db").write_text("postgresql://linksvc:pw@db:5432/linksvc\n")
    (tmp_path / "metrics").write_text("m" * 20)
    s = config.load(
        {
            "LINKSVC_INSTANCE_PATH": str(tmp_path),
            "LINKSVC_ENV": "production",
            "LINKSVC_BASE_URL": "https://links.example.com",
            "LINKSVC_KEY_ENCRYPTION_KEY_FILE": str(tmp_path / "kek"),
            "LINKSVC_SECRET_KEY_FILE": str(tmp_path / "secret"),
            "LINKSVC_DATABASE_URL_FILE": str(tmp_path / "db"),
            "LINKSVC_METRICS_TOKEN_FILE": str(tmp_path / "metrics"),
        }
    )
    assert s.key_encryption_key == config.decode_secret("k", kek, production=True)
    assert s.secret_key == config.decode_secret("k", secret, production=True)
    assert s.database_url == "postgresql+psycopg://linksvc:pw@db:5432/linksvc"
    assert s.metrics_token == "m" * 20


def test_secret_file_named_in_the_config_file(tmp_path):
    (tmp_path / "smtp").write_text("smtp://user:pw@mail.example.com:25\n")
    path = _toml(tmp_path, f'smtp_url_file = "{tmp_path / "smtp"}"\n')
    s = config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
    assert s.smtp_url == "smtp://user:pw@mail.example.com:25"


def test_secret_file_in_the_environment_overrides_the_value_in_the_file(tmp_path):
    (tmp_path / "rl").write_text("redis://:pw@redis:6379/0")
    path = _toml(tmp_path, 'ratelimit_storage_url = "memory://"\n')
    s = config.load(
        {
            "LINKSVC_INSTANCE_PATH": str(tmp_path),
            "LINKSVC_CONFIG": path,
            "LINKSVC_RATELIMIT_STORAGE_URL_FILE": str(tmp_path / "rl"),
        }
    )
    assert s.ratelimit_storage_url == "redis://:pw@redis:6379/0"


@pytest.mark.parametrize("content", [None, "", "  \n", b"\xff\xfe"])
def test_bad_secret_file_names_the_file_setting(tmp_path, content):
    path = tmp_path / "kek"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        config.load(
            {"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_KEY_ENCRYPTION_KEY_FILE": str(path)}
        )
    assert info.value.name == "LINKSVC_KEY_ENCRYPTION_KEY_FILE"
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_secret_from_a_file_names_the_setting(tmp_path):
    (tmp_path / "kek").write_text("c2hvcnQ")
    with pytest.raises(ConfigError) as info:
        config.load(
            {
                "LINKSVC_INSTANCE_PATH": str(tmp_path),
                "LINKSVC_KEY_ENCRYPTION_KEY_FILE": str(tmp_path / "kek"),
            }
        )
    assert info.value.name == "LINKSVC_KEY_ENCRYPTION_KEY"
    assert "c2hvcnQ" not in str(info.value)  # the message never echoes a secret


def test_secret_given_both_as_value_and_as_file_is_refused(tmp_path):
    (tmp_path / "secret").write_text(secret_b64())
    both = {
        "LINKSVC_SECRET_KEY": secret_b64(),
        "LINKSVC_SECRET_KEY_FILE": str(tmp_path / "secret"),
    }
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), **both})
    assert info.value.name == "LINKSVC_SECRET_KEY"
    assert "LINKSVC_SECRET_KEY_FILE" in str(info.value)
    # The same in the configuration file.
    path = _toml(
        tmp_path, f'secret_key = "{secret_b64()}"\nsecret_key_file = "{tmp_path / "secret"}"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
    assert info.value.name == "LINKSVC_SECRET_KEY"
    assert str(path) in str(info.value)


def test_non_secret_has_no_file_variant(tmp_path):
    path = _toml(tmp_path, 'leeway_file = "/etc/leeway"\n')
    with pytest.raises(ConfigError) as info:
        config.load({"LINKSVC_INSTANCE_PATH": str(tmp_path), "LINKSVC_CONFIG": path})
    assert "unknown key 'leeway_file'" in str(info.value)


def test_every_setting_read_is_a_config_key():
    """A setting added to config.py, gunicorn.conf.py or serve.py without its key would be
    unreachable from the file (and refused there as unknown)."""
    import re

    from tests.support.env import ROOT

    names = set()
    for source in ("linksvc/config.py", "gunicorn.conf.py", "serve.py"):
        text = (ROOT / source).read_text()
        names |= set(re.findall(r'"LINKSVC_([A-Z0-9_]+)"', text))
    names |= {f"MAX_TTL_{p.upper()}" for p in config.PURPOSES}
    names -= {"CONFIG"}
    assert names <= set(config.SETTINGS), names - set(config.SETTINGS)
