"""Settings: read from ``LINKSVC_*`` environment variables once, at start-up.

Every value is coerced and validated here; an unsafe or malformed setting raises
:class:`ConfigError` naming the variable, and the application refuses to start.
Nothing else in linksvc reads ``os.environ``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PURPOSES: tuple[str, ...] = ("magic_link", "password_reset", "download")

#: No purpose may ever carry a lifetime above this, whatever the configuration says.
HARD_MAX_TTL = 900
HARD_MAX_LEEWAY = 60
#: The longest a one-time code may live (``LINKSVC_CODE_TTL``).
HARD_MAX_CODE_TTL = 300


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe. ``name`` is the variable."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


@dataclasses.dataclass(frozen=True)
class Settings:
    env: str
    instance_path: Path
    base_url: str
    database_url: str
    leeway: int
    max_ttl: Mapping[str, int]
    supersede_purposes: frozenset[str]
    retention_days: int
    key_encryption_key: bytes | None
    secret_key: bytes | None
    key_refresh_seconds: int
    max_body_bytes: int
    max_data_bytes: int
    code_ttl: int
    db_pool_size: int
    db_statement_timeout_ms: int
    db_connect_timeout: int
    storage: str
    storage_dir: Path
    s3_bucket: str | None
    s3_endpoint_url: str | None
    s3_region: str | None
    s3_addressing_style: str
    download_url_seconds: int
    smtp_url: str | None
    mail_outbox: Path
    mail_from: str
    ratelimit_storage_url: str
    page_rate_limit: str
    log_level: str
    trusted_proxies: int
    #: Webhook endpoints may resolve to private, loopback and link-local addresses.
    webhook_allow_private: bool = False
    #: Seconds a webhook delivery may take to connect and for each read.
    webhook_timeout: int = 5
    #: When set, ``GET /metrics`` wants ``Authorization: Bearer <this>`` (off by default).
    metrics_token: str | None = None

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def ttl_ceiling(self, purpose: str) -> int:
        return self.max_ttl[purpose]


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]+", raw.strip()):
        raise ConfigError(name, f"must be a whole number, got {raw!r}")
    value = int(raw.strip())
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "0").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(name, f"must be 1 or 0, got {value!r}")
    return value in ("1", "true", "yes")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _secret(
    env: Mapping[str, str], name: str, instance_file: Path, *, production: bool
) -> bytes | None:
    """A 32-byte secret from the variable (base64url) or, in development, a 0600 file.

    The file is written only by ``flask init-db``; a worker never invents a secret, so a
    forgotten setting fails loudly instead of silently minting links nobody else can check.
    """
    raw = env.get(name)
    if raw:
        try:
            value = base64.urlsafe_b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4))
        except (ValueError, TypeError):
            raise ConfigError(name, "must be base64url") from None
        if len(value) < 32:
            raise ConfigError(name, "must decode to at least 32 bytes")
        return value
    if production:
        raise ConfigError(name, "is required when LINKSVC_ENV=production")
    try:
        text = instance_file.read_text().strip()
    except FileNotFoundError:
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _base_url(env: Mapping[str, str], production: bool) -> str:
    name = "LINKSVC_BASE_URL"
    value = (env.get(name) or "http://127.0.0.1:8000").strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(name, "must not carry a query, fragment or credentials")
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if production and parts.scheme != "https" and not local:
        # Links are bearer credentials: over plain HTTP anyone on the path can take them.
        raise ConfigError(name, "must use https when LINKSVC_ENV=production")
    return value


def load(
    environ: Mapping[str, str] | None = None, instance_path: str | os.PathLike[str] | None = None
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``)."""
    env = dict(os.environ if environ is None else environ)
    envname = _choice(env, "LINKSVC_ENV", "development", ("development", "production", "test"))
    production = envname == "production"
    instance = Path(
        env.get("LINKSVC_INSTANCE_PATH") or instance_path or Path.cwd() / "instance"
    ).resolve()

    database_url = (
        env.get("LINKSVC_DATABASE_URL") or f"sqlite:///{instance / 'linksvc.db'}"
    ).strip()
    if database_url.startswith("postgresql://") or database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
    if not re.match(r"^(sqlite|postgresql\+psycopg)://", database_url):
        raise ConfigError("LINKSVC_DATABASE_URL", "must be a sqlite:/// or postgresql:// URL")

    max_ttl = {}
    for purpose in PURPOSES:
        max_ttl[purpose] = _int(env, f"LINKSVC_MAX_TTL_{purpose.upper()}", 300, 10, HARD_MAX_TTL)

    supersede_raw = env.get("LINKSVC_SUPERSEDE_PURPOSES", "password_reset")
    supersede = frozenset(p.strip() for p in supersede_raw.split(",") if p.strip())
    unknown = supersede - set(PURPOSES)
    if unknown:
        raise ConfigError(
            "LINKSVC_SUPERSEDE_PURPOSES", f"unknown purpose(s): {', '.join(sorted(unknown))}"
        )

    storage = _choice(env, "LINKSVC_STORAGE", "local", ("local", "s3"))
    s3_bucket = env.get("LINKSVC_S3_BUCKET") or None
    if storage == "s3" and not s3_bucket:
        raise ConfigError("LINKSVC_S3_BUCKET", "is required when LINKSVC_STORAGE=s3")
    s3_endpoint = env.get("LINKSVC_S3_ENDPOINT_URL") or None
    if s3_endpoint and urlsplit(s3_endpoint).scheme not in ("http", "https"):
        raise ConfigError("LINKSVC_S3_ENDPOINT_URL", "must be an http(s) URL")

    smtp_url = env.get("LINKSVC_SMTP_URL") or None
    if smtp_url and urlsplit(smtp_url).scheme not in ("smtp", "smtps", "smtp+starttls"):
        raise ConfigError(
            "LINKSVC_SMTP_URL", "must start with smtp://, smtp+starttls:// or smtps://"
        )

    page_limit = env.get("LINKSVC_PAGE_RATE_LIMIT", "60 per minute").strip()
    if not re.fullmatch(r"[0-9]+ ?(/|per) ?[0-9]* ?(second|minute|hour|day)s?", page_limit):
        raise ConfigError(
            "LINKSVC_PAGE_RATE_LIMIT", f"must look like '60 per minute', got {page_limit!r}"
        )

    metrics_token = (env.get("LINKSVC_METRICS_TOKEN") or "").strip() or None
    if metrics_token is not None and (
        len(metrics_token) < 16 or not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", metrics_token)
    ):
        raise ConfigError(
            "LINKSVC_METRICS_TOKEN", "must be at least 16 characters of a bearer token (RFC 6750)"
        )

    return Settings(
        env=envname,
        instance_path=instance,
        base_url=_base_url(env, production),
        database_url=database_url,
        leeway=_int(env, "LINKSVC_LEEWAY", 5, 0, HARD_MAX_LEEWAY),
        max_ttl=max_ttl,
        supersede_purposes=supersede,
        retention_days=_int(env, "LINKSVC_RETENTION_DAYS", 7, 1, 3650),
        key_encryption_key=_secret(
            env, "LINKSVC_KEY_ENCRYPTION_KEY", instance / "kek.key", production=production
        ),
        secret_key=_secret(
            env, "LINKSVC_SECRET_KEY", instance / "secret.key", production=production
        ),
        key_refresh_seconds=_int(env, "LINKSVC_KEY_REFRESH_SECONDS", 5, 1, 10),
        max_body_bytes=_int(env, "LINKSVC_MAX_BODY_BYTES", 64 * 1024, 1024, 1024 * 1024),
        max_data_bytes=_int(env, "LINKSVC_MAX_DATA_BYTES", 4096, 0, 64 * 1024),
        code_ttl=_int(env, "LINKSVC_CODE_TTL", 60, 10, HARD_MAX_CODE_TTL),
        db_pool_size=_int(env, "LINKSVC_DB_POOL_SIZE", 5, 1, 100),
        db_statement_timeout_ms=_int(env, "LINKSVC_DB_STATEMENT_TIMEOUT_MS", 5000, 100, 600_000),
        db_connect_timeout=_int(env, "LINKSVC_DB_CONNECT_TIMEOUT", 3, 1, 60),
        storage=storage,
        storage_dir=Path(env.get("LINKSVC_STORAGE_DIR") or instance / "files").resolve(),
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
        s3_region=env.get("LINKSVC_S3_REGION") or None,
        s3_addressing_style=_choice(
            env, "LINKSVC_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")
        ),
        download_url_seconds=_int(env, "LINKSVC_DOWNLOAD_URL_SECONDS", 60, 1, 300),
        smtp_url=smtp_url,
        mail_outbox=Path(env.get("LINKSVC_MAIL_OUTBOX") or instance / "outbox").resolve(),
        mail_from=env.get("LINKSVC_MAIL_FROM") or "linksvc <no-reply@localhost>",
        ratelimit_storage_url=env.get("LINKSVC_RATELIMIT_STORAGE_URL") or "memory://",
        page_rate_limit=page_limit,
        log_level=_choice(env, "LINKSVC_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        trusted_proxies=_int(env, "LINKSVC_TRUSTED_PROXIES", 0, 0, 5),
        webhook_allow_private=_flag(env, "LINKSVC_WEBHOOK_ALLOW_PRIVATE"),
        webhook_timeout=_int(env, "LINKSVC_WEBHOOK_TIMEOUT", 5, 1, 30),
        metrics_token=metrics_token,
    )


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` (for tests and the CLI)."""
    return dataclasses.replace(settings, **changes)
