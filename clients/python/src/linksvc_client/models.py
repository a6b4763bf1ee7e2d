"""What the API answers, as frozen dataclasses with timezone-aware ``datetime`` times.

A token or a link URL is a bearer secret: it is left out of every ``repr`` so that a
log line or a traceback that prints a result does not leak it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: The purposes linksvc mints.
PURPOSES = ("magic_link", "password_reset", "download")
#: The states of a link in the ledger.
STATES = ("issued", "consumed", "revoked", "superseded")


def parse_time(value: Any) -> datetime:
    """An API time (``2026-12-01T10:00:00Z``) or epoch seconds, as an aware datetime."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _opt_time(value: Any) -> datetime | None:
    return None if value is None else parse_time(value)


@dataclasses.dataclass(frozen=True)
class MintedLink:
    """A freshly minted link. Send ``url`` (or let linksvc mail it); never log it."""

    jti: str
    purpose: str
    subject: str
    issued_at: datetime
    expires_at: datetime
    superseded: int
    emailed: bool
    #: True when linksvc answered an earlier request with the same Idempotency-Key.
    replayed: bool
    idempotency_key: str | None
    url: str = dataclasses.field(repr=False)
    token: str = dataclasses.field(repr=False)
    #: The verifier the link's one-time code is bound to (None: unbound, or no code).
    #: Keep it in the session of the browser that asked, and pass it to ``exchange_code``.
    code_verifier: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_api(
        cls,
        body: Mapping[str, Any],
        *,
        replayed: bool = False,
        idempotency_key: str | None = None,
        code_verifier: str | None = None,
    ) -> MintedLink:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            subject=body["subject"],
            issued_at=parse_time(body["issued_at"]),
            expires_at=parse_time(body["expires_at"]),
            superseded=int(body.get("superseded", 0)),
            emailed=bool(body.get("emailed", False)),
            replayed=replayed,
            idempotency_key=idempotency_key,
            url=body["url"],
            token=body["token"],
            code_verifier=code_verifier,
        )


@dataclasses.dataclass(frozen=True)
class Claims:
    """A link token's claims (PRODUCT §1), checked."""

    issuer: str
    audience: str
    subject: str
    purpose: str
    jti: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime

    @classmethod
    def from_jwt(cls, claims: Mapping[str, Any]) -> Claims:
        return cls(
            issuer=claims["iss"],
            audience=claims["aud"],
            subject=claims["sub"],
            purpose=claims["pur"],
            jti=claims["jti"],
            issued_at=parse_time(claims["iat"]),
            not_before=parse_time(claims["nbf"]),
            expires_at=parse_time(claims["exp"]),
        )


@dataclasses.dataclass(frozen=True)
class VerifiedLink:
    """A token that is valid and still ``issued`` — nothing was consumed."""

    jti: str
    purpose: str
    subject: str
    state: str
    issued_at: datetime
    expires_at: datetime
    claims: Claims

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> VerifiedLink:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            subject=body["subject"],
            state=body["state"],
            issued_at=parse_time(body["issued_at"]),
            expires_at=parse_time(body["expires_at"]),
            claims=Claims.from_jwt(body["claims"]),
        )


@dataclasses.dataclass(frozen=True)
class RedeemedLink:
    """A link this call consumed: whose it was and the ``data`` given at mint time."""

    jti: str
    purpose: str
    subject: str
    data: Any
    redeemed_at: datetime

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> RedeemedLink:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            subject=body["subject"],
            data=body.get("data"),
            redeemed_at=parse_time(body["redeemed_at"]),
        )


@dataclasses.dataclass(frozen=True)
class LinkEvent:
    at: datetime
    event: str
    reason: str | None
    via: str | None


@dataclasses.dataclass(frozen=True)
class LinkStatus:
    """A link's state and history."""

    jti: str
    purpose: str
    subject: str
    state: str
    issued_at: datetime
    expires_at: datetime
    state_changed_at: datetime | None
    state_via: str | None
    events: tuple[LinkEvent, ...]
    #: The language (BCP 47) and IANA time zone of its pages and mail, if minted with them.
    locale: str | None = None
    timezone: str | None = None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> LinkStatus:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            subject=body["subject"],
            state=body["state"],
            issued_at=parse_time(body["issued_at"]),
            expires_at=parse_time(body["expires_at"]),
            state_changed_at=_opt_time(body.get("state_changed_at")),
            state_via=body.get("state_via"),
            events=tuple(
                LinkEvent(parse_time(e["at"]), e["event"], e.get("reason"), e.get("via"))
                for e in body.get("events", ())
            ),
            locale=body.get("locale"),
            timezone=body.get("timezone"),
        )


@dataclasses.dataclass(frozen=True)
class Revoked:
    """The link's state after a revocation; ``revoked`` is False when it had already
    left ``issued`` by revocation or supersession."""

    jti: str
    state: str
    revoked: bool

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Revoked:
        return cls(jti=body["jti"], state=body["state"], revoked=bool(body["revoked"]))


@dataclasses.dataclass(frozen=True)
class Branding:
    """The client's face on the pages and mails of its links (``GET /api/v1/branding``)."""

    display_name: str
    brand_color: str | None
    button_text_color: str | None
    support_url: str | None
    support_email: str | None
    mail_from_name: str | None
    logo_url: str | None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Branding:
        return cls(
            display_name=str(body["display_name"]),
            brand_color=body.get("brand_color"),
            button_text_color=body.get("button_text_color"),
            support_url=body.get("support_url"),
            support_email=body.get("support_email"),
            mail_from_name=body.get("mail_from_name"),
            logo_url=body.get("logo_url"),
        )


@dataclasses.dataclass(frozen=True)
class LinkSummary:
    """One line of a subject's inventory (no token, no server-side data)."""

    jti: str
    purpose: str
    state: str
    issued_at: datetime
    expires_at: datetime
    state_changed_at: datetime | None
    state_via: str | None

    def is_live(self, now: datetime | None = None) -> bool:
        """Still usable: ``issued`` and not past its expiry."""
        now = now or datetime.now(UTC)
        return self.state == "issued" and self.expires_at > now

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> LinkSummary:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            state=body["state"],
            issued_at=parse_time(body["issued_at"]),
            expires_at=parse_time(body["expires_at"]),
            state_changed_at=_opt_time(body.get("state_changed_at")),
            state_via=body.get("state_via"),
        )


@dataclasses.dataclass(frozen=True)
class LinkPage:
    """One page of a subject's links, newest first; ``next_cursor`` is None on the last."""

    subject: str
    links: tuple[LinkSummary, ...]
    next_cursor: str | None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> LinkPage:
        return cls(
            subject=body["subject"],
            links=tuple(LinkSummary.from_api(x) for x in body["links"]),
            next_cursor=body.get("next_cursor"),
        )


@dataclasses.dataclass(frozen=True)
class ExchangedCode:
    """What a one-time code from a hosted sign-in or reset stood for."""

    jti: str
    purpose: str
    subject: str
    data: Any

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> ExchangedCode:
        return cls(
            jti=body["jti"],
            purpose=body["purpose"],
            subject=body["subject"],
            data=body.get("data"),
        )


@dataclasses.dataclass(frozen=True)
class SignIn:
    """A started sign-in (PRODUCT §6): send the requesting browser to ``wait_url``."""

    id: str
    jti: str
    subject: str
    expires_at: datetime
    wait_url: str = dataclasses.field(repr=False)
    #: The verifier its one-time code is bound to: keep it in that browser's session and
    #: pass it to ``exchange_code``.
    code_verifier: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_api(cls, body: Mapping[str, Any], *, code_verifier: str | None = None) -> SignIn:
        return cls(
            id=body["id"],
            jti=body["jti"],
            subject=body["subject"],
            expires_at=parse_time(body["expires_at"]),
            wait_url=body["wait_url"],
            code_verifier=code_verifier,
        )
