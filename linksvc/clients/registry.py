"""The client registry: applications that mint and redeem links.

API keys are 256-bit random strings shown once; only their SHA-256 is stored (a fast
hash is right here: the key has full entropy, so there is nothing to brute-force).
This module knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from linksvc.clients import branding
from linksvc.config import PURPOSES
from linksvc.i18n import locales
from linksvc.store import db

API_KEY_PREFIX = "lsk_"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
_LIMIT_RE = re.compile(
    r"[0-9]+ ?(/|per) ?[0-9]* ?(second|minute|hour|day)s?(;[0-9]+ ?(/|per) ?[0-9]* ?(second|minute|hour|day)s?)*"
)


@dataclasses.dataclass(frozen=True)
class Client:
    id: str
    name: str
    display_name: str
    purposes: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    download_prefixes: tuple[str, ...]
    mint_limit: str | None
    subject_limit: str | None
    allow_pii_subject: bool
    disabled: bool
    created_at: int
    #: Where a user whose link failed can ask for a new one ("Request a new link").
    restart_uri: str | None = None
    #: The default language (BCP 47, shipped) of its links' pages and mails (PRODUCT §8).
    locale: str | None = None
    #: How its links are written: ``jwt`` (the token in the path) or ``short`` (a handle,
    #: linksvc.links.handles); either names the same ledger row (PRODUCT §8).
    link_format: str = "jwt"
    #: Its face on pages and mails (linksvc.clients.branding): the primary button's colour
    #: (``#rrggbb``), where its users find help, and the mails' sender name.
    brand_color: str | None = None
    support_url: str | None = None
    support_email: str | None = None
    mail_from_name: str | None = None


LINK_FORMATS = ("jwt", "short")


class ClientError(ValueError):
    """An invalid client definition; the message says which field."""


#: The brand settings a client may change itself (``PUT /api/v1/branding``); the logo is
#: apart (linksvc.clients.branding, ``client_logos``).
BRAND_FIELDS = ("display_name", "brand_color", "support_url", "support_email", "mail_from_name")


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _row_to_client(row: sa.RowMapping) -> Client:
    return Client(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        purposes=tuple(json.loads(row["purposes"])),
        redirect_uris=tuple(json.loads(row["redirect_uris"])),
        download_prefixes=tuple(json.loads(row["download_prefixes"])),
        mint_limit=row["mint_limit"],
        subject_limit=row["subject_limit"],
        allow_pii_subject=bool(row["allow_pii_subject"]),
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        restart_uri=row.get("restart_uri"),
        locale=row.get("locale"),
        link_format=row.get("link_format") or "jwt",
        brand_color=row.get("brand_color"),
        support_url=row.get("support_url"),
        support_email=row.get("support_email"),
        mail_from_name=row.get("mail_from_name"),
    )


def validate_locale(tag: str | None) -> str | None:
    """A client's default locale, as the shipped BCP 47 tag it resolves to (``de-AT`` →
    ``de``); ``None`` or ``''`` for none. An operator naming a language linksvc does not ship
    is told so, rather than have its users silently read English."""
    if not tag:
        return None
    try:
        found = locales.resolve(tag)
    except ValueError:
        raise ClientError(
            f"locale must be a BCP 47 language tag such as de or pt-BR: {tag!r}"
        ) from None
    if found is None:
        shipped = ", ".join(locales.to_bcp47(loc) for loc in locales.LOCALES)
        raise ClientError(f"linksvc has no {tag!r} pages and mails; it ships {shipped}")
    return locales.to_bcp47(found)


def validate_redirect_uri(uri: str, *, allow_http: bool) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClientError(f"redirect URI must be an absolute http(s) URL: {uri!r}")
    if parts.fragment or parts.username or parts.password:
        raise ClientError(f"redirect URI must not carry a fragment or credentials: {uri!r}")
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme == "http" and not (allow_http or local):
        raise ClientError(f"redirect URI must use https: {uri!r}")
    return uri


def validate_restart_uri(uri: str | None, *, allow_http: bool) -> str | None:
    """The page where a user asks the application for a new link; the failure pages link to
    it. Same rules as a redirect URI (it is shown to users who hold a dead link)."""
    if uri is None or uri == "":
        return None
    try:
        return validate_redirect_uri(uri, allow_http=allow_http)
    except ClientError as exc:
        raise ClientError(str(exc).replace("redirect URI", "restart URI")) from None


def validate_display_name(name: str) -> str:
    """Shown on pages and in mail: no control or format characters (bidi overrides such as
    U+202E, zero-width characters, BOM), which could make it read as something else."""
    if not name.strip() or len(name) > 200:
        raise ClientError("display name must be 1-200 characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in name):
        raise ClientError(
            "display name must not contain control or format characters (bidi, zero-width)"
        )
    return name


def validate_link_format(value: str | None) -> str:
    if value is None:
        return "jwt"
    if value not in LINK_FORMATS:
        raise ClientError(f"link format must be one of {', '.join(LINK_FORMATS)}: {value!r}")
    return value


def validate_limit(limit: str | None, what: str) -> str | None:
    if limit is None:
        return None
    limit = limit.strip()
    if not _LIMIT_RE.fullmatch(limit):
        raise ClientError(f"{what} must look like '100 per minute', got {limit!r}")
    return limit


def create(
    conn: Connection,
    name: str,
    *,
    purposes: Sequence[str],
    redirect_uris: Iterable[str] = (),
    download_prefixes: Iterable[str] = (),
    display_name: str | None = None,
    mint_limit: str | None = None,
    subject_limit: str | None = None,
    allow_pii_subject: bool = False,
    allow_http_redirects: bool = True,
    restart_uri: str | None = None,
    locale: str | None = None,
    link_format: str | None = None,
    brand_color: str | None = None,
    support_url: str | None = None,
    support_email: str | None = None,
    mail_from_name: str | None = None,
    now: int,
) -> tuple[Client, str]:
    """Register a client; returns it and its API key (which is not stored)."""
    if not _NAME_RE.fullmatch(name):
        raise ClientError("name must be 1-100 letters, digits, spaces, '.', '_' or '-'")
    purposes = tuple(dict.fromkeys(p.strip() for p in purposes if p.strip()))
    if not purposes or set(purposes) - set(PURPOSES):
        raise ClientError(f"purposes must be some of {', '.join(PURPOSES)}")
    uris = tuple(
        dict.fromkeys(
            validate_redirect_uri(u, allow_http=allow_http_redirects) for u in redirect_uris
        )
    )
    prefixes = tuple(dict.fromkeys(p.strip() for p in download_prefixes if p.strip()))
    existing = conn.execute(sa.select(db.clients.c.id).where(db.clients.c.name == name)).first()
    if existing is not None:
        raise ClientError(f"a client named {name!r} already exists")
    client_id = "cl_" + secrets.token_hex(8)
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    values = {
        "id": client_id,
        "name": name,
        "display_name": validate_display_name(display_name) if display_name else name,
        "api_key_hash": hash_api_key(api_key),
        "purposes": json.dumps(purposes),
        "redirect_uris": json.dumps(uris),
        "download_prefixes": json.dumps(prefixes),
        "mint_limit": validate_limit(mint_limit, "mint limit"),
        "subject_limit": validate_limit(subject_limit, "subject limit"),
        "allow_pii_subject": allow_pii_subject,
        "disabled": False,
        "created_at": now,
        "restart_uri": validate_restart_uri(restart_uri, allow_http=allow_http_redirects),
        "locale": validate_locale(locale),
        "link_format": validate_link_format(link_format),
        "brand_color": branding.validate_brand_color(brand_color),
        "support_url": branding.validate_support_url(support_url, allow_http=allow_http_redirects),
        "support_email": branding.validate_support_email(support_email),
        "mail_from_name": branding.validate_mail_from_name(mail_from_name),
    }
    conn.execute(sa.insert(db.clients).values(**values))
    return _row_to_client(values), api_key  # type: ignore[arg-type]


def by_api_key(conn: Connection, api_key: str) -> Client | None:
    """The enabled client holding ``api_key``, or ``None``."""
    return by_api_key_hash(conn, hash_api_key(api_key))


def by_api_key_hash(conn: Connection, key_hash: str) -> Client | None:
    """The enabled client whose API key hashes to ``key_hash``, or ``None``."""
    row = (
        conn.execute(sa.select(db.clients).where(db.clients.c.api_key_hash == key_hash))
        .mappings()
        .first()
    )
    if row is None or row["disabled"]:
        return None
    return _row_to_client(row)


class ClientCache:
    """API-key hash → enabled client, kept ``seconds`` (monotonic clock) in one process.

    Every API request authenticates; asking the database each time costs a round trip on
    the hot path. The price is staleness: a disabled client, or a rotated-out key, keeps
    working in a worker that cached it for at most ``seconds``. Only hits are cached, and
    at most ``max_entries`` of them, so made-up keys can neither fill memory nor be
    remembered as absent.
    """

    def __init__(
        self,
        seconds: float = 5.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, Client]] = {}

    def get(self, key_hash: str) -> Client | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def put(self, key_hash: str, client: Client) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (self.clock() + self.seconds, client)

    def clear(self) -> None:
        self._entries.clear()


def get(conn: Connection, client_id: str) -> Client | None:
    row = conn.execute(sa.select(db.clients).where(db.clients.c.id == client_id)).mappings().first()
    return None if row is None else _row_to_client(row)


def find(conn: Connection, id_or_name: str) -> Client | None:
    c = db.clients.c
    row = (
        conn.execute(sa.select(db.clients).where(sa.or_(c.id == id_or_name, c.name == id_or_name)))
        .mappings()
        .first()
    )
    return None if row is None else _row_to_client(row)


def list_all(conn: Connection) -> list[Client]:
    return [
        _row_to_client(r)
        for r in conn.execute(sa.select(db.clients).order_by(db.clients.c.created_at)).mappings()
    ]


def _strings(value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ClientError("expected a list of strings")
    return [str(v) for v in value]


def update(
    conn: Connection, client_id: str, *, allow_http_redirects: bool = True, **values: object
) -> None:
    """Change some of a client's fields; each is checked as :func:`create` checks it."""
    allowed = {
        "restart_uri",
        "disabled",
        "mint_limit",
        "subject_limit",
        "allow_pii_subject",
        "display_name",
        "redirect_uris",
        "download_prefixes",
        "purposes",
        "locale",
        "link_format",
        *BRAND_FIELDS,
    }
    unknown = set(values) - allowed
    if unknown:
        raise ClientError(f"cannot update {', '.join(sorted(unknown))}")
    if "purposes" in values:
        purposes = tuple(
            dict.fromkeys(p.strip() for p in _strings(values["purposes"]) if p.strip())
        )
        if not purposes or set(purposes) - set(PURPOSES):
            raise ClientError(f"purposes must be some of {', '.join(PURPOSES)}")
        values["purposes"] = purposes
    if "redirect_uris" in values:
        values["redirect_uris"] = tuple(
            dict.fromkeys(
                validate_redirect_uri(u, allow_http=allow_http_redirects)
                for u in _strings(values["redirect_uris"])
            )
        )
    if "download_prefixes" in values:
        values["download_prefixes"] = tuple(
            dict.fromkeys(p.strip() for p in _strings(values["download_prefixes"]) if p.strip())
        )
    if "restart_uri" in values:
        values["restart_uri"] = validate_restart_uri(
            values["restart_uri"],  # type: ignore[arg-type]
            allow_http=allow_http_redirects,
        )
    if "display_name" in values:
        validate_display_name(str(values["display_name"]))
    if "locale" in values:
        values["locale"] = validate_locale(values["locale"])  # type: ignore[arg-type]
    if "link_format" in values:
        values["link_format"] = validate_link_format(values["link_format"])  # type: ignore[arg-type]
    if "brand_color" in values:
        values["brand_color"] = branding.validate_brand_color(values["brand_color"])  # type: ignore[arg-type]
    if "support_url" in values:
        values["support_url"] = branding.validate_support_url(
            values["support_url"],  # type: ignore[arg-type]
            allow_http=allow_http_redirects,
        )
    if "support_email" in values:
        values["support_email"] = branding.validate_support_email(values["support_email"])  # type: ignore[arg-type]
    if "mail_from_name" in values:
        values["mail_from_name"] = branding.validate_mail_from_name(values["mail_from_name"])  # type: ignore[arg-type]
    for key in ("redirect_uris", "download_prefixes", "purposes"):
        if key in values:
            values[key] = json.dumps(list(values[key]))  # type: ignore[call-overload]
    for key in ("mint_limit", "subject_limit"):
        if key in values:
            values[key] = validate_limit(values[key], key.replace("_", " "))  # type: ignore[arg-type]
    conn.execute(sa.update(db.clients).where(db.clients.c.id == client_id).values(**values))
