"""Webhook endpoints: where a client's events go, and the secrets that sign them.

An endpoint belongs to one client, has a URL (checked by :mod:`linksvc.webhooks.ssrf` when added and
again at every delivery), an optional list of event types (all by default) and a ``whsec_``
secret. The secret is shown once, when the endpoint is added or its secret rotated, and is
stored encrypted with AES-256-GCM under the key-encryption key, the endpoint id as
associated data (as signing keys are: a database dump holds nothing that signs). After a
rotation the previous secret keeps signing beside the new one for a grace period, so the
receiver can switch without losing a message.

Each client with endpoints also has a ``webhook_clients`` row: its replay policy
(``--on-replay revoke-subject``) and the high-water mark of the ``link.expired`` sweep.

This module knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from linksvc.config import Settings
from linksvc.store import db
from linksvc.webhooks import outbox, ssrf
from linksvc.webhooks import signature as webhook_signature

#: How long the previous secret still signs after ``rotate-secret`` (default).
ROTATION_GRACE_SECONDS = 86400
MAX_ENDPOINTS_PER_CLIENT = 10


class WebhookError(ValueError):
    """An operation on endpoints that cannot be done; the message is for operators."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    id: str
    client_id: str
    url: str
    events: tuple[str, ...] | None  # None: every event
    disabled: bool
    disabled_reason: str | None
    disabled_at: int | None
    failing_since: int | None
    rotating_until: int | None
    created_at: int


def policy(settings: Settings) -> ssrf.Policy:
    """Loopback receivers outside production; private ranges only when the operator says so."""
    return ssrf.Policy(
        allow_loopback=not settings.is_production,
        allow_private=settings.webhook_allow_private,
    )


def _aad(endpoint_id: str) -> bytes:
    return b"linksvc.webhook-secret|" + endpoint_id.encode()


def encrypt(kek: bytes, endpoint_id: str, secret: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek[:32]).encrypt(nonce, secret.encode(), _aad(endpoint_id))


def decrypt(kek: bytes, endpoint_id: str, blob: bytes) -> str:
    try:
        return AESGCM(kek[:32]).decrypt(blob[:12], blob[12:], _aad(endpoint_id)).decode()
    except (InvalidTag, ValueError):
        raise WebhookError(
            f"LINKSVC_KEY_ENCRYPTION_KEY cannot decrypt the secret of webhook endpoint"
            f" {endpoint_id} (a different key-encryption key than the one it was stored with?)"
        ) from None


def signing_secrets(
    kek: bytes,
    endpoint_id: str,
    secret_enc: bytes,
    old_secret_enc: bytes | None,
    old_secret_until: int | None,
    now: int,
) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one
    while its rotation grace lasts."""
    out = [decrypt(kek, endpoint_id, bytes(secret_enc))]
    if old_secret_enc is not None and old_secret_until is not None and now < old_secret_until:
        out.append(decrypt(kek, endpoint_id, bytes(old_secret_enc)))
    return out


def _events_column(events: Iterable[str] | None) -> str | None:
    if events is None:
        return None
    chosen = list(dict.fromkeys(e.strip() for e in events if e.strip()))
    if not chosen:
        return None
    unknown = [e for e in chosen if e not in outbox.event_types()]
    if unknown:
        raise WebhookError(
            f"unknown event type(s) {', '.join(unknown)}; choose from {', '.join(outbox.event_types())}"
        )
    return "," + ",".join(chosen) + ","


def _endpoint(r: sa.Row[tuple[object, ...]] | sa.RowMapping) -> Endpoint:
    m = r._mapping if isinstance(r, sa.Row) else r
    events = m["events"]
    return Endpoint(
        id=m["id"],
        client_id=m["client_id"],
        url=m["url"],
        events=tuple(events.strip(",").split(",")) if events else None,
        disabled=bool(m["disabled"]),
        disabled_reason=m["disabled_reason"],
        disabled_at=m["disabled_at"],
        failing_since=m["failing_since"],
        rotating_until=m["old_secret_until"],
        created_at=m["created_at"],
    )


def add(
    conn: Connection,
    kek: bytes,
    client_id: str,
    url: str,
    *,
    events: Sequence[str] | None,
    rules: ssrf.Policy,
    now: int,
    resolver: ssrf.Resolver = socket.getaddrinfo,
) -> tuple[Endpoint, str]:
    """Register an endpoint; returns it and its secret (shown once, stored encrypted)."""
    try:
        ssrf.check_url(url, rules, resolver)
    except ssrf.Refused as exc:
        raise WebhookError(f"URL refused: {exc}") from None
    column = _events_column(events)
    e = db.webhook_endpoints
    count = conn.execute(
        sa.select(sa.func.count()).select_from(e).where(e.c.client_id == client_id)
    ).scalar_one()
    if count >= MAX_ENDPOINTS_PER_CLIENT:
        raise WebhookError(f"a client has at most {MAX_ENDPOINTS_PER_CLIENT} endpoints")
    endpoint_id = "wh_" + secrets.token_hex(8)
    secret = webhook_signature.new_secret()
    conn.execute(
        sa.insert(e).values(
            id=endpoint_id,
            client_id=client_id,
            url=url,
            events=column,
            secret_enc=encrypt(kek, endpoint_id, secret),
            disabled=False,
            created_at=now,
        )
    )
    _ensure_client_row(conn, client_id, now)
    row = conn.execute(sa.select(e).where(e.c.id == endpoint_id)).one()
    return _endpoint(row), secret


def _ensure_client_row(conn: Connection, client_id: str, now: int) -> None:
    wc = db.webhook_clients
    exists = conn.execute(sa.select(wc.c.client_id).where(wc.c.client_id == client_id)).first()
    if exists is None:
        # link.expired is reported for links that expire from now on, not for older ones.
        conn.execute(sa.insert(wc).values(client_id=client_id, on_replay=None, swept_until=now))


def list_endpoints(conn: Connection, client_id: str | None = None) -> list[Endpoint]:
    e = db.webhook_endpoints
    q = sa.select(e).order_by(e.c.created_at, e.c.id)
    if client_id is not None:
        q = q.where(e.c.client_id == client_id)
    return [_endpoint(r) for r in conn.execute(q)]


def get(conn: Connection, endpoint_id: str) -> Endpoint:
    e = db.webhook_endpoints
    row = conn.execute(sa.select(e).where(e.c.id == endpoint_id)).first()
    if row is None:
        raise WebhookError(f"no webhook endpoint {endpoint_id!r}")
    return _endpoint(row)


def rotate_secret(
    conn: Connection, kek: bytes, endpoint_id: str, *, now: int, grace: int = ROTATION_GRACE_SECONDS
) -> tuple[Endpoint, str]:
    """A new secret signs from now on; the current one keeps signing beside it for
    ``grace`` seconds. Returns the endpoint and the new secret (shown once)."""
    e = db.webhook_endpoints
    row = conn.execute(sa.select(e).where(e.c.id == endpoint_id)).first()
    if row is None:
        raise WebhookError(f"no webhook endpoint {endpoint_id!r}")
    decrypt(kek, endpoint_id, bytes(row.secret_enc))  # the KEK is right before anything changes
    secret = webhook_signature.new_secret()
    conn.execute(
        sa.update(e)
        .where(e.c.id == endpoint_id)
        .values(
            secret_enc=encrypt(kek, endpoint_id, secret),
            old_secret_enc=row.secret_enc if grace > 0 else None,
            old_secret_until=now + grace if grace > 0 else None,
        )
    )
    return get(conn, endpoint_id), secret


def set_disabled(conn: Connection, endpoint_id: str, disabled: bool, *, now: int) -> Endpoint:
    e = db.webhook_endpoints
    get(conn, endpoint_id)
    values: dict[str, object] = (
        {"disabled": True, "disabled_reason": "operator", "disabled_at": now}
        if disabled
        else {
            "disabled": False,
            "disabled_reason": None,
            "disabled_at": None,
            "failing_since": None,
        }
    )
    conn.execute(sa.update(e).where(e.c.id == endpoint_id).values(**values))
    return get(conn, endpoint_id)


def remove(conn: Connection, endpoint_id: str) -> int:
    """Delete an endpoint with its queued and past deliveries. Returns how many rows went."""
    e, o, a = db.webhook_endpoints, db.webhook_outbox, db.webhook_attempts
    get(conn, endpoint_id)
    ids = sa.select(o.c.id).where(o.c.endpoint_id == endpoint_id)
    conn.execute(sa.delete(a).where(a.c.outbox_id.in_(ids)))
    n = conn.execute(sa.delete(o).where(o.c.endpoint_id == endpoint_id)).rowcount
    conn.execute(sa.delete(e).where(e.c.id == endpoint_id))
    return int(n)


def set_on_replay(conn: Connection, client_id: str, on_replay: str | None, *, now: int) -> None:
    """What a replayed consumed link does besides its event: ``revoke-subject`` or nothing."""
    if on_replay is not None and on_replay not in outbox.ON_REPLAY:
        raise WebhookError(f"--on-replay must be one of {', '.join(outbox.ON_REPLAY)} or none")
    _ensure_client_row(conn, client_id, now)
    wc = db.webhook_clients
    conn.execute(sa.update(wc).where(wc.c.client_id == client_id).values(on_replay=on_replay))


def on_replay(conn: Connection, client_id: str) -> str | None:
    wc = db.webhook_clients
    return conn.execute(sa.select(wc.c.on_replay).where(wc.c.client_id == client_id)).scalar()
