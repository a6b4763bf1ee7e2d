"""Settings: read from ``LINKSVC_*`` environment variables once, at start-up.

Three sources, read once (:func:`environment`): an optional TOML file named by
``LINKSVC_CONFIG`` whose keys are the setting names without the prefix, in lower case
(``database_url`` for ``LINKSVC_DATABASE_URL``); the environment, which overrides the file
key by key; and, for every secret, a ``_FILE`` variant (``LINKSVC_SECRET_KEY_FILE``, or
``secret_key_file`` in the TOML file) naming a file that holds the value, as container
platforms mount secrets.

Every value is coerced and validated here; an unsafe or malformed setting raises
:class:`ConfigError` naming the variable, and the application refuses to start.
Nothing else in linksvc reads ``os.environ`` (``gunicorn.conf.py`` and ``serve.py`` read
their own settings through :func:`environment` too). One variable without the prefix is read
here as well: ``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's own name for the folder of the
workers' counters (:attr:`Settings.metrics_dir`).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PURPOSES: tuple[str, ...] = ("magic_link", "password_reset", "download")
#: The purposes whose links open a page with a button (a download link redirects at once).
PAGE_PURPOSES: tuple[str, ...] = ("magic_link", "password_reset")

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


PREFIX = "LINKSVC_"
#: Every setting, without the prefix: the keys a ``LINKSVC_CONFIG`` file may hold (in lower
#: case). SERVER is serve.py's; BIND, WORKERS and THREADS are the server's (gunicorn.conf.py,
#: serve.py).
SETTINGS: tuple[str, ...] = (
    "ENV", "INSTANCE_PATH", "BASE_URL", "TRUSTED_HOSTS", "TRUSTED_PROXIES", "DATABASE_URL",
    "DB_POOL_SIZE", "DB_STATEMENT_TIMEOUT_MS", "DB_CONNECT_TIMEOUT", "KEY_ENCRYPTION_KEY",
    "SECRET_KEY", "KEY_REFRESH_SECONDS", "LEEWAY", "MAX_TTL_MAGIC_LINK",
    "MAX_TTL_PASSWORD_RESET", "MAX_TTL_DOWNLOAD", "SUPERSEDE_PURPOSES", "RETENTION_DAYS",
    "MAX_BODY_BYTES", "MAX_DATA_BYTES", "CODE_TTL", "STORAGE", "STORAGE_DIR", "S3_BUCKET",
    "S3_ENDPOINT_URL", "S3_REGION", "S3_ADDRESSING_STYLE", "DOWNLOAD_URL_SECONDS", "SMTP_URL",
    "MAIL_OUTBOX", "MAIL_FROM", "RATELIMIT_STORAGE_URL", "PAGE_RATE_LIMIT", "RECIPIENT_LIMIT",
    "LOG_LEVEL", "METRICS_TOKEN", "WEBHOOK_ALLOW_PRIVATE", "WEBHOOK_TIMEOUT",
    "WEBHOOK_DEADLINE", "WEBHOOK_ENDPOINT_CONCURRENCY", "BIND", "WORKERS", "THREADS",
    "SERVER", "TRACEPARENT",
)  # fmt: skip
#: The settings that are (or may carry) secrets: each may also be given as ``<NAME>_FILE``.
#: URLs are here because they carry passwords (database, SMTP, Redis).
SECRETS: tuple[str, ...] = (
    "KEY_ENCRYPTION_KEY", "SECRET_KEY", "DATABASE_URL", "SMTP_URL", "RATELIMIT_STORAGE_URL",
    "METRICS_TOKEN",
)  # fmt: skip
#: Largest secret file read: a secret is a line, and a wrong path (a disk image, /dev/zero)
#: must fail fast instead of filling memory.
_MAX_SECRET_FILE = 64 * 1024

#: What each setting is for, as the manual's configuration reference prints it. That page is
#: generated at build time (scripts/mkdocs_hooks.py) from SETTINGS, SECRETS, these lines and
#: the defaults and ranges ``load`` itself applies, so it cannot drift: a setting added to
#: SETTINGS without a line here fails the docs build and tests/system/test_docs_site.py.
HELP: dict[str, str] = {
    "ENV": "`production` refuses plain-HTTP base URLs and requires the secrets from the "
    "environment; `development` (`make run`) writes development secrets on `init-db` and "
    "serves the mail outbox page",
    "INSTANCE_PATH": "where the SQLite file, the development secrets, local files and the "
    "mail outbox live",
    "BASE_URL": "public URL used in links and as the token issuer (`iss`); its host is the only "
    "`Host` answered (`400 untrusted_host` otherwise; `/healthz`, `/readyz`, `/metrics` exempt; "
    "outside production also `127.0.0.1` and `localhost`)",
    "TRUSTED_HOSTS": "more host names to answer for, comma-separated (`.example.com` for "
    "subdomains)",
    "TRUSTED_PROXIES": "how many reverse proxies stand in front: `X-Forwarded-For` is honoured "
    "for exactly that many hops, never otherwise (a client could choose its own address)",
    "DATABASE_URL": "`sqlite:///…` or `postgresql://…` (add `?sslmode=verify-full` across a "
    "network)",
    "DB_POOL_SIZE": "PostgreSQL connections kept per worker process (as many again may open "
    "under load)",
    "DB_STATEMENT_TIMEOUT_MS": "PostgreSQL `statement_timeout` and `lock_timeout` of every "
    "linksvc connection, in milliseconds",
    "DB_CONNECT_TIMEOUT": "seconds to open a PostgreSQL connection (or wait for a pooled one) "
    "before answering 503",
    "KEY_ENCRYPTION_KEY": "the KEK: canonical base64url, at least 32 bytes; encrypts the signing "
    "keys in the database. Required in production",
    "SECRET_KEY": "as the KEK, and different from it; signs form tokens, download grants and "
    "cursors, and keys the hashes of codes and addresses. Required in production",
    "KEY_REFRESH_SECONDS": "how soon every worker sees a key rotation, in seconds",
    "LEEWAY": "clock-skew leeway in seconds",
    "MAX_TTL_MAGIC_LINK": "lifetime ceiling of a `magic_link`, in seconds",
    "MAX_TTL_PASSWORD_RESET": "lifetime ceiling of a `password_reset` link, in seconds",
    "MAX_TTL_DOWNLOAD": "lifetime ceiling of a `download` link, in seconds",
    "SUPERSEDE_PURPOSES": "purposes where a new link supersedes the subject's outstanding ones "
    "(comma-separated; empty for none)",
    "RETENTION_DAYS": "ledger rows are purged this many days after they expire",
    "MAX_BODY_BYTES": "largest accepted API request body, in bytes",
    "MAX_DATA_BYTES": "largest `data` a link may carry, in bytes",
    "CODE_TTL": "seconds a one-time code of a hosted sign-in or reset lives",
    "STORAGE": "where download links' files are: `local` files or `s3`",
    "STORAGE_DIR": "root of local storage",
    "S3_BUCKET": "default bucket (required with `s3`)",
    "S3_ENDPOINT_URL": "S3 endpoint for MinIO, Ceph, R2 … (boto3's default otherwise)",
    "S3_REGION": "the region of the SigV4 scope (boto3's default otherwise; `auto` for R2)",
    "S3_ADDRESSING_STYLE": "S3 addressing: `path` for MinIO and Ceph",
    "DOWNLOAD_URL_SECONDS": "lifetime of the presigned or grant URL a download redirects to "
    "(never longer than the link had left)",
    "SMTP_URL": "`smtp://host:25`, `smtp+starttls://user:pass@host:587` or "
    "`smtps://user:pass@host:465` (URL-encode special characters in the password; the "
    "certificate is verified against the system CAs). In production, credentials over plain "
    "`smtp://` refuse to start. Unset: mail goes to the outbox folder",
    "MAIL_OUTBOX": "with no SMTP URL, each message is written here as an `.eml` file (folder "
    "`0700`, files `0600`: they hold live links)",
    "MAIL_FROM": "the `From:` header: `name <address>` or `address`",
    "RATELIMIT_STORAGE_URL": "where rate-limit counters live: `memory://` (each worker counts "
    "on its own) or a Redis URL shared by every worker and node",
    "PAGE_RATE_LIMIT": "per-IP limit on the end-user pages (`/l/`, `/d/`, `/s/`)",
    "RECIPIENT_LIMIT": "mails per recipient address, across subjects and clients (several "
    "windows joined by `;`)",
    "LOG_LEVEL": "level of the JSON log",
    "METRICS_TOKEN": "when set (at least 16 characters), `GET /metrics` requires "
    "`Authorization: Bearer <token>`",
    "WEBHOOK_ALLOW_PRIVATE": "`1` lets webhook endpoints resolve to private, loopback and "
    "link-local addresses",
    "WEBHOOK_TIMEOUT": "seconds a webhook delivery may take to connect and for each read",
    "WEBHOOK_DEADLINE": "seconds one webhook delivery attempt may take in all, however slowly "
    "its receiver answers; the relay's lease is this plus 10 s",
    "WEBHOOK_ENDPOINT_CONCURRENCY": "deliveries one webhook endpoint may hold at once, across "
    "every relay",
    "BIND": "gunicorn.conf.py: the address gunicorn listens on",
    "TRACEPARENT": "what an incoming `traceparent` does when tracing is on (`OTEL_*`, "
    "docs/tracing.md): `link` (a trace of linksvc's own, linked to the caller's), `continue` "
    "(behind a proxy that sets or strips the header) or `ignore`",
    "SERVER": "serve.py: the HTTP server, `gunicorn` or `granian` (a tested option; "
    'bench/README.md, "Two servers")',
    "WORKERS": 'gunicorn.conf.py: worker processes (sync workers: bench/README.md, "Serving '
    'model")',
    "THREADS": "gunicorn.conf.py: threads per worker; above 1, threaded workers",
}


def _toml_value(name: str, value: object) -> str:
    """A TOML value as the environment would spell it: strings as they are, whole numbers in
    decimal, booleans as 1/0, a list of strings joined by commas (TRUSTED_HOSTS)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ConfigError(
        name, f"must be a string, a whole number, true/false or a list of strings in {PREFIX}CONFIG"
    )


def _read_file_setting(name: str, path: str) -> str:
    """The value a ``_FILE`` setting names: the file's text, without its trailing newline."""
    if not path.strip():
        raise ConfigError(name, "is empty; it must name a file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(name, f"{path} is larger than {_MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(name, f"{path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(name, f"{path} is empty")
    return text


def _read_config_file(path: str) -> dict[str, str]:
    """The ``LINKSVC_CONFIG`` TOML file as ``LINKSVC_*`` variables."""
    name = f"{PREFIX}CONFIG"
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"{path} is not valid TOML ({exc})") from None
    known = {k.lower() for k in SETTINGS} | {f"{k.lower()}_file" for k in SECRETS}
    out: dict[str, str] = {}
    for key, value in table.items():
        if key not in known:
            # A misspelt key would silently leave a default in force (a secret, a limit).
            raise ConfigError(
                name,
                f"unknown key {key!r} in {path} (keys are setting names without LINKSVC_, "
                "in lower case)",
            )
        out[PREFIX + key.upper()] = _toml_value(PREFIX + key.upper(), value)
    return out


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ``LINKSVC_*`` setting from the three sources, as one mapping of variables.

    The ``LINKSVC_CONFIG`` file first; the environment overrides it setting by setting (for a
    secret, either of its two forms in the environment replaces both forms in the file); each
    ``<SECRET>_FILE`` is then read and replaced by its value. A secret given both as a value
    and as a file in one source is refused: which one was meant cannot be known.
    """
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    config_path = env.get(f"{PREFIX}CONFIG", "")
    if config_path.strip():
        from_file = _read_config_file(config_path)
        _check_both_forms(from_file, f" in {config_path}")
        merged.update(from_file)
    _check_both_forms(env, "")
    for key in env:
        setting = key.removeprefix(PREFIX).removesuffix("_FILE")
        if key.startswith(PREFIX) and setting in SECRETS:
            merged.pop(PREFIX + setting, None)
            merged.pop(f"{PREFIX}{setting}_FILE", None)
    merged.update({k: v for k, v in env.items() if k != f"{PREFIX}CONFIG"})
    for secret in SECRETS:
        file_name = f"{PREFIX}{secret}_FILE"
        path = merged.pop(file_name, None)
        if path is not None:
            merged[PREFIX + secret] = _read_file_setting(file_name, path)
    return merged


def _check_both_forms(source: Mapping[str, str], where: str) -> None:
    for secret in SECRETS:
        value, file_name = PREFIX + secret, f"{PREFIX}{secret}_FILE"
        if source.get(value) and file_name in source:
            raise ConfigError(
                value, f"is given both as a value and as {file_name}{where}; keep one"
            )


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
    recipient_limit: str = "5 per 15 minutes"
    #: Host names a request may carry in ``Host`` (LINKSVC_BASE_URL's, LINKSVC_TRUSTED_HOSTS,
    #: and outside production the loopback names). Empty: any (only for hand-made Settings).
    trusted_hosts: tuple[str, ...] = ()
    #: Webhook endpoints may resolve to private, loopback and link-local addresses.
    webhook_allow_private: bool = False
    #: Seconds a webhook delivery may take to connect and for each read.
    webhook_timeout: int = 5
    #: Seconds one webhook delivery attempt may take in all, however its receiver trickles;
    #: the relay's lease outlasts it, so an attempt is cut before its row can go to another.
    webhook_deadline: int = 15
    #: Deliveries one webhook endpoint may hold at once, across every relay.
    webhook_endpoint_concurrency: int = 2
    #: When set, ``GET /metrics`` wants ``Authorization: Bearer <this>`` (off by default).
    metrics_token: str | None = None
    #: ``PROMETHEUS_MULTIPROC_DIR`` (the environment only, never the file: prometheus_client
    #: reads the same variable when it is imported): a scrape sums the counter files every
    #: worker writes there (gunicorn.conf.py, serve.py). ``None``: this process's counters.
    metrics_dir: Path | None = None

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def ttl_ceiling(self, purpose: str) -> int:
        return self.max_ttl[purpose]


_ONE_LIMIT = r"[0-9]+ ?(/|per) ?[0-9]* ?(second|minute|hour|day)s?"


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


_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
GENERATE_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _char_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character frequencies: about 4.85 for a random
    43-character base64url string (never below 4.2 in 200 000 draws), about 3.5 for words."""
    counts = collections.Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def decode_secret(name: str, raw: str, *, production: bool) -> bytes:
    """A secret given as base64url: canonical (nothing the decoder would silently drop or
    ignore, such as characters outside the alphabet or spare trailing bits), at least 32
    bytes, and — in production — random-looking: not all one byte or a short pattern, not a
    passphrase of words (a one-case string, or few distinct characters)."""
    text = raw.strip()
    if not _B64URL.fullmatch(text):
        raise ConfigError(
            name, f"must be base64url (A-Z a-z 0-9 - _ only, nothing else); {GENERATE_HINT}"
        )
    body = text.rstrip("=")
    value = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if base64.urlsafe_b64encode(value).decode().rstrip("=") != body:
        raise ConfigError(
            name, f"is not canonical base64url (spare trailing bits); {GENERATE_HINT}"
        )
    if len(value) < 32:
        raise ConfigError(name, f"must decode to at least 32 bytes; {GENERATE_HINT}")
    if production:
        letters = [c for c in body if c.isalpha()]
        if (
            len(set(value)) < 16
            or len(set(body)) < 20
            or all(c.islower() for c in letters)
            or all(c.isupper() for c in letters)
            or sum(c in "-_" for c in body) > 4 + len(body) // 8
            or _char_entropy(body) < 4.0
        ):
            raise ConfigError(
                name,
                "looks degenerate (a repeated byte or pattern, or a passphrase rather than "
                f"random bytes); {GENERATE_HINT}",
            )
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
        return decode_secret(name, raw, production=production)
    if production:
        raise ConfigError(name, "is required when LINKSVC_ENV=production")
    try:
        text = instance_file.read_text().strip()
    except FileNotFoundError:
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _split(name: str, url: str) -> SplitResult:
    """``urlsplit`` whose every complaint (a bad IPv6 literal, a port out of range) is a
    ConfigError naming the variable, not a traceback at start-up or a 500 later."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError as exc:
        raise ConfigError(name, f"is not a valid URL ({exc})") from None
    return parts


#: The rate-limit stores whose client library linksvc installs (``redis``).
RATELIMIT_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
_MAIL_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*"
)


def _mail_from(env: Mapping[str, str]) -> str:
    """The ``From:`` header: ``name <address>`` or ``address``, no line breaks or controls
    (a CR/LF in it made every mint with ``email`` fail with 500 after minting)."""
    name = "LINKSVC_MAIL_FROM"
    value = (env.get(name) or "linksvc <no-reply@localhost>").strip()
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise ConfigError(name, "must not contain line breaks or control characters")
    _display, address = parseaddr(value)
    if not _MAIL_ADDRESS.fullmatch(address) or len(address) > 254:
        raise ConfigError(
            name, "must be an address, optionally with a name: 'linksvc <no-reply@example.com>'"
        )
    try:
        EmailMessage()["From"] = value
    except (ValueError, IndexError):  # pragma: no cover - the checks above come first
        raise ConfigError(name, "is not a valid From header") from None
    return value


def _ratelimit_url(env: Mapping[str, str]) -> str:
    name = "LINKSVC_RATELIMIT_STORAGE_URL"
    value = (env.get(name) or "memory://").strip()
    scheme = value.partition("://")[0] if "://" in value else ""
    if scheme not in RATELIMIT_SCHEMES:
        raise ConfigError(
            name,
            f"must be memory:// or a Redis URL ({', '.join(s + '://' for s in RATELIMIT_SCHEMES[1:])})",
        )
    _split(name, value)
    return value


def _base_url(env: Mapping[str, str], production: bool) -> str:
    name = "LINKSVC_BASE_URL"
    value = (env.get(name) or "http://127.0.0.1:8000").strip().rstrip("/")
    parts = _split(name, value)
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
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``), with the
    ``LINKSVC_CONFIG`` file and the ``_FILE`` secrets it names (:func:`environment`)."""
    env = environment(environ)
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
    if database_url.startswith("postgresql"):
        _split("LINKSVC_DATABASE_URL", database_url)
        try:
            make_url(database_url)
        except ArgumentError:
            raise ConfigError("LINKSVC_DATABASE_URL", "is not a valid database URL") from None

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
    if s3_endpoint and _split("LINKSVC_S3_ENDPOINT_URL", s3_endpoint).scheme not in (
        "http",
        "https",
    ):
        raise ConfigError("LINKSVC_S3_ENDPOINT_URL", "must be an http(s) URL")

    smtp_url = env.get("LINKSVC_SMTP_URL") or None
    if smtp_url and _split("LINKSVC_SMTP_URL", smtp_url).scheme not in (
        "smtp",
        "smtps",
        "smtp+starttls",
    ):
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

    recipient_limit = env.get("LINKSVC_RECIPIENT_LIMIT", "5 per 15 minutes").strip()
    if not re.fullmatch(rf"{_ONE_LIMIT}(;{_ONE_LIMIT})*", recipient_limit):
        raise ConfigError(
            "LINKSVC_RECIPIENT_LIMIT",
            f"must look like '5 per 15 minutes' (several joined by ';'), got {recipient_limit!r}",
        )

    kek = _secret(env, "LINKSVC_KEY_ENCRYPTION_KEY", instance / "kek.key", production=production)
    secret_key = _secret(env, "LINKSVC_SECRET_KEY", instance / "secret.key", production=production)
    if production and kek is not None and kek == secret_key:
        raise ConfigError(
            "LINKSVC_SECRET_KEY",
            "must differ from LINKSVC_KEY_ENCRYPTION_KEY (two secrets, two uses)",
        )

    base_url = _base_url(env, production)
    hosts = [urlsplit(base_url).hostname or ""]
    for extra in (env.get("LINKSVC_TRUSTED_HOSTS") or "").split(","):
        extra = extra.strip().lower()
        if extra and not re.fullmatch(r"\.?[a-z0-9]([a-z0-9.-]*[a-z0-9])?", extra):
            raise ConfigError(
                "LINKSVC_TRUSTED_HOSTS",
                f"must be host names separated by commas ('.example.com' for subdomains), got {extra!r}",
            )
        if extra:
            hosts.append(extra)
    if not production:
        hosts += ["127.0.0.1", "localhost"]

    return Settings(
        env=envname,
        recipient_limit=recipient_limit,
        trusted_hosts=tuple(dict.fromkeys(hosts)),
        instance_path=instance,
        base_url=base_url,
        database_url=database_url,
        leeway=_int(env, "LINKSVC_LEEWAY", 5, 0, HARD_MAX_LEEWAY),
        max_ttl=max_ttl,
        supersede_purposes=supersede,
        retention_days=_int(env, "LINKSVC_RETENTION_DAYS", 7, 1, 3650),
        key_encryption_key=kek,
        secret_key=secret_key,
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
        mail_from=_mail_from(env),
        ratelimit_storage_url=_ratelimit_url(env),
        page_rate_limit=page_limit,
        log_level=_choice(env, "LINKSVC_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        trusted_proxies=_int(env, "LINKSVC_TRUSTED_PROXIES", 0, 0, 5),
        webhook_allow_private=_flag(env, "LINKSVC_WEBHOOK_ALLOW_PRIVATE"),
        webhook_timeout=_int(env, "LINKSVC_WEBHOOK_TIMEOUT", 5, 1, 30),
        webhook_deadline=_int(env, "LINKSVC_WEBHOOK_DEADLINE", 15, 1, 120),
        webhook_endpoint_concurrency=_int(env, "LINKSVC_WEBHOOK_ENDPOINT_CONCURRENCY", 2, 1, 64),
        metrics_token=metrics_token,
        metrics_dir=Path(multiproc) if (multiproc := env.get("PROMETHEUS_MULTIPROC_DIR")) else None,
    )


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` (for tests and the CLI)."""
    return dataclasses.replace(settings, **changes)
