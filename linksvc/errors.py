"""One exception family for everything that can go wrong with a link.

Each :class:`LinkError` carries a stable ``reason`` code (what the API puts in ``code``
and what the pages choose their template by) and the facts a page or a log line needs.
The precise reason goes to logs and to the authenticated API; end-user pages may show a
coarser one. Nothing here knows about HTTP: the blueprints map reasons to status codes.
"""

from __future__ import annotations

from typing import Any


class LinkError(Exception):
    """A token or link was refused. Never carries the token itself."""

    reason: str = "invalid"
    default_detail: str = "The link is not valid."

    def __init__(self, detail: str | None = None, *, jti: str | None = None, **facts: Any) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail
        self.jti = jti
        self.facts = facts

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}(reason={self.reason!r}, jti={self.jti!r})"


# -- the token itself ---------------------------------------------------------------


class Malformed(LinkError):
    reason = "malformed"
    default_detail = "The token is not a well-formed link token."


class BadHeader(LinkError):
    reason = "bad_header"
    default_detail = "The token header is not acceptable."


class UnknownKey(LinkError):
    reason = "unknown_key"
    default_detail = "The token names a key that is not ours or no longer valid."


class WrongAlgorithm(LinkError):
    reason = "wrong_algorithm"
    default_detail = "The token's algorithm does not match its key."


class BadSignature(LinkError):
    reason = "bad_signature"
    default_detail = "The token signature is not valid."


class WrongIssuer(LinkError):
    reason = "wrong_issuer"
    default_detail = "The token was not issued by this service."


class WrongAudience(LinkError):
    reason = "wrong_audience"
    default_detail = "The token was minted for another application."


class WrongPurpose(LinkError):
    reason = "wrong_purpose"
    default_detail = "The token is for another purpose."


class InvalidClaims(LinkError):
    reason = "invalid_claims"
    default_detail = "The token claims are missing or of the wrong type."


class LifetimeExceeded(LinkError):
    reason = "lifetime_exceeded"
    default_detail = "The token's lifetime is longer than this service allows."


class Expired(LinkError):
    reason = "expired"
    default_detail = "The link has expired."


class NotYetValid(LinkError):
    reason = "not_yet_valid"
    default_detail = "The link is not valid yet."


class IssuedInFuture(LinkError):
    reason = "issued_in_future"
    default_detail = "The token claims to be issued in the future."


# -- the ledger --------------------------------------------------------------------


class UnknownLink(LinkError):
    reason = "unknown_link"
    default_detail = "No such link."


class Used(LinkError):
    reason = "used"
    default_detail = "The link has already been used."


class Revoked(LinkError):
    reason = "revoked"
    default_detail = "The link has been revoked."


class Superseded(LinkError):
    reason = "superseded"
    default_detail = "A newer link has been sent; this one no longer works."


#: Reasons that mean "the token is not one of ours or was tampered with".
INVALID_TOKEN_REASONS = frozenset(
    cls.reason
    for cls in (
        Malformed,
        BadHeader,
        UnknownKey,
        WrongAlgorithm,
        BadSignature,
        WrongIssuer,
        InvalidClaims,
        LifetimeExceeded,
        IssuedInFuture,
        NotYetValid,
    )
)

STATE_ERRORS: dict[str, type[LinkError]] = {
    "consumed": Used,
    "revoked": Revoked,
    "superseded": Superseded,
}


def state_error(state: str, jti: str, at: int | None) -> LinkError:
    """The error for a link that has left ``issued``."""
    cls = STATE_ERRORS.get(state, UnknownLink)
    return cls(jti=jti, at=at)


class ServiceUnavailable(Exception):
    """A backend (database, storage, mail) is not answering. Maps to 503; consumes nothing."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(detail or f"{what} unavailable")
        self.what = what
        self.detail = detail or f"The {what} is unavailable; try again shortly."


class NotInitialised(ServiceUnavailable):
    """No signing key or secret yet: ``flask --app app init-db`` has not been run."""

    def __init__(self, what: str) -> None:
        super().__init__("service", f"{what} missing: run `.venv/bin/flask --app app init-db`.")


class RequestRefused(Exception):
    """A well-formed request the service will not carry out.

    ``kind`` says why, for the status code: ``invalid`` (422), ``forbidden`` (403),
    ``not_found`` (404), ``bad_request`` (400), ``too_large`` (413), ``bad_gateway`` (502).
    """

    def __init__(
        self, code: str, detail: str, *, kind: str = "invalid", field: str | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.kind = kind
        self.field = field
