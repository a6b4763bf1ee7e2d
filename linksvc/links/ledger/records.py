"""The ledger's records: a link's states, its row as a :class:`LinkRecord`, and the
events of its history. Pure data; no statement runs here."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from linksvc.i18n import locales
from linksvc.store import db

ISSUED, CONSUMED, REVOKED, SUPERSEDED = "issued", "consumed", "revoked", "superseded"


@dataclasses.dataclass(frozen=True)
class LinkRecord(locales.L10n):
    jti: str
    client_id: str
    purpose: str
    subject: str
    kid: str
    iat: int
    exp: int
    state: str = ISSUED
    state_at: int | None = None
    state_via: str | None = None
    state_detail: str | None = None
    redirect_uri: str | None = None
    download: dict[str, Any] | None = None
    data: Any = None
    confirm: bool = False
    completion_hash: str | None = None
    #: The S256 challenge of the flow's ``code_verifier`` (linksvc.links.codes): its one-time code
    #: is exchanged only with the matching verifier, by the browser session that started it.
    code_challenge: str | None = None
    #: The language and time zone of the link's pages and mail, ``"<locale>|<zone>"`` (either
    #: side may be empty): one optional column, never in the token (PRODUCT §8).
    l10n: str | None = None
    #: A short link's handle, as its keyed hash (linksvc.links.handles); None for a JWT-only link.
    handle_hash: str | None = None


#: How ``links.state_detail`` holds a link's code challenge while it is issued or consumed.
#: That column otherwise only says why a link was revoked or superseded, which ends any
#: flow, so the two never need the row at once; a column of its own needs a migration.
CHALLENGE_PREFIX = "S256:"

#: An S256 challenge: BASE64URL(SHA-256(code_verifier)), 43 characters (RFC 7636).
CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def stored_challenge(challenge: str | None) -> str | None:
    """What ``links.state_detail`` holds for a flow bound to ``challenge`` (None: unbound)."""
    return None if challenge is None else CHALLENGE_PREFIX + challenge


@dataclasses.dataclass(frozen=True)
class Event:
    at: int
    event: str
    reason: str | None
    via: str | None


def from_mapping(row: Mapping[str, Any] | sa.RowMapping) -> LinkRecord:
    detail: str | None = row["state_detail"]
    challenge: str | None = None
    if row["state"] in (ISSUED, CONSUMED) and detail and detail.startswith(CHALLENGE_PREFIX):
        challenge = detail[len(CHALLENGE_PREFIX) :]
        detail = None
    return LinkRecord(
        jti=row["jti"],
        client_id=row["client_id"],
        purpose=row["purpose"],
        subject=row["subject"],
        kid=row["kid"],
        iat=row["iat"],
        exp=row["exp"],
        state=row["state"],
        state_at=row["state_at"],
        state_via=row["state_via"],
        state_detail=detail,
        redirect_uri=row["redirect_uri"],
        download=json.loads(row["download"]) if row["download"] else None,
        data=json.loads(row["data"]) if row["data"] is not None else None,
        confirm=bool(row["confirm"]),
        completion_hash=row["completion_hash"],
        code_challenge=challenge,
        l10n=row["l10n"],
        handle_hash=row["handle_hash"],
    )


#: The columns of ``links``, in order, as the statements return its rows.
LINK_COLUMNS = tuple(c.name for c in db.links.c)


def from_row(row: Sequence[Any]) -> LinkRecord:
    """The record of a row of ``links`` (all its columns, in order)."""
    return from_mapping(dict(zip(LINK_COLUMNS, row, strict=True)))
