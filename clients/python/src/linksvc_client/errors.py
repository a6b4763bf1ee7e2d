"""One exception per failure family, all under :class:`LinksvcError`.

Every error carries the HTTP ``status`` (None when no answer came), the stable ``code`` of
linksvc's problem document, its ``detail`` and the ``request_id`` to quote to the operator,
so that ``except LinkUsed:`` reads like the product. :func:`error_for` picks the class: by
``code`` first, then by status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LinksvcError(Exception):
    """Something linksvc refused, or could not be asked."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.request_id = request_id
        #: The whole problem document (facts such as ``jti``, ``field``, ``expired_at``).
        self.body: Mapping[str, Any] = body or {}

    @property
    def jti(self) -> str | None:
        """The link concerned, where linksvc names it (``used``, ``expired``, …)."""
        value = self.body.get("jti")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.detail}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"request_id={self.request_id!r})"
        )


# -- no answer ---------------------------------------------------------------------------


class APIConnectionError(LinksvcError):
    """linksvc could not be reached, or the connection broke before an answer."""


class OutcomeUnknown(APIConnectionError):
    """A single-use call (redeem, code exchange) may have reached linksvc, but no answer
    came. It is not retried — a second try could only answer ``used`` — so ask
    :meth:`~linksvc_client.LinkClient.status` what became of the link."""


# -- answers -----------------------------------------------------------------------------


class InvalidRequest(LinksvcError):
    """400, 413, 415, 422: the request itself is wrong; ``field`` names the culprit."""

    @property
    def field(self) -> str | None:
        value = self.body.get("field")
        return value if isinstance(value, str) else None


class IdempotencyMismatch(InvalidRequest):
    """422 ``idempotency_mismatch``: the Idempotency-Key was used with another body."""


class AuthenticationError(LinksvcError):
    """401 ``unauthorized``: the API key is missing, wrong, or its client disabled."""


class InvalidToken(LinksvcError):
    """The token is not a valid link for this application (``malformed``,
    ``bad_signature``, ``unknown_key``, ``wrong_audience``, ``wrong_purpose``, …)."""


class NotAllowed(LinksvcError):
    """403: this client may not do that (``purpose_not_allowed``, ``redirect_uri_not_allowed``, …)."""


class NotFound(LinksvcError):
    """404: nothing of this client by that name."""


class UnknownLink(NotFound):
    """404 ``unknown_link``: no link of this client has that jti (or the token names none)."""


class InvalidCode(NotFound):
    """404 ``invalid_code``: the one-time code is unknown, malformed or another client's."""


class CodeNotForThisBrowser(InvalidRequest):
    """422 ``code_verifier_required`` or ``code_verifier_mismatch``: the one-time code came
    back to a browser whose session did not start its flow — an attacker's code pushed into
    a victim's browser (login CSRF), a leaked code, or a link opened on another device. The
    code is spent; sign nobody in, and let the user ask again from this browser."""


class Conflict(LinksvcError):
    """409 answers that are not about a used link."""


class IdempotencyInProgress(Conflict):
    """409 ``idempotency_in_progress``: a request with this key is still being minted.
    Retried by the client; raised when the retries are spent."""


class LinkUsed(LinksvcError):
    """409 ``used``: the link has already been consumed (maybe by an attacker, maybe by
    the user's other tab)."""


class CodeUsed(LinkUsed):
    """409 ``code_used``: the one-time code was already exchanged (often: a double click
    whose first press already signed the user in)."""


class LinkGone(LinksvcError):
    """410: the link no longer works — ``expired``, ``revoked`` or ``superseded``
    (``code`` says which)."""


class LinkExpired(LinkGone):
    """410 ``expired`` (or, offline, a token past its ``exp``)."""


class LinkRevoked(LinkGone):
    """410 ``revoked``."""


class LinkSuperseded(LinkGone):
    """410 ``superseded``: a newer link was sent for the same subject and purpose."""


class CodeExpired(LinkGone):
    """410 ``code_expired``: the one-time code lived its 60 s."""


class RateLimited(LinksvcError):
    """429: too many requests; ``retry_after`` says how many seconds to wait."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after


class MailFailed(LinksvcError):
    """502 ``mail_failed``: the mail server refused the message; the link was revoked."""


class ServiceUnavailable(LinksvcError):
    """503: a backend of linksvc (database, storage, mail) is down; nothing was changed."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after


class APIError(LinksvcError):
    """Any other answer (a 500, a proxy's error page, a body that is not linksvc's)."""


# -- choosing the class ---------------------------------------------------------------------

#: The codes whose class is not the one of their status. Every one is documented in
#: linksvc's OpenAPI document (``tests/python_client/test_client_openapi.py`` holds the two together).
CODE_CLASSES: Mapping[str, type[LinksvcError]] = {
    "unauthorized": AuthenticationError,
    "idempotency_mismatch": IdempotencyMismatch,
    "idempotency_in_progress": IdempotencyInProgress,
    "unknown_link": UnknownLink,
    "invalid_code": InvalidCode,
    "code_verifier_required": CodeNotForThisBrowser,
    "code_verifier_mismatch": CodeNotForThisBrowser,
    "used": LinkUsed,
    "code_used": CodeUsed,
    "expired": LinkExpired,
    "revoked": LinkRevoked,
    "superseded": LinkSuperseded,
    "code_expired": CodeExpired,
    "mail_failed": MailFailed,
    "rate_limited": RateLimited,
    "unavailable": ServiceUnavailable,
}

#: The class of each status, for every other code.
STATUS_CLASSES: Mapping[int, type[LinksvcError]] = {
    400: InvalidRequest,
    401: InvalidToken,
    403: NotAllowed,
    404: NotFound,
    409: Conflict,
    410: LinkGone,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    502: APIError,
    503: ServiceUnavailable,
}

#: The codes a token check refuses with (the API's 401s, and :class:`LinkVerifier`'s).
TOKEN_CODES = frozenset(
    {
        "malformed",
        "bad_header",
        "unknown_key",
        "wrong_algorithm",
        "bad_signature",
        "wrong_issuer",
        "wrong_audience",
        "wrong_purpose",
        "invalid_claims",
        "lifetime_exceeded",
        "not_yet_valid",
        "issued_in_future",
    }
)


def error_class(status: int | None, code: str) -> type[LinksvcError]:
    """The class for an answer: by its code, else by its status."""
    cls = CODE_CLASSES.get(code)
    if cls is not None:
        return cls
    if status is None:
        return APIConnectionError
    return STATUS_CLASSES.get(status, APIError)


def error_for(
    status: int,
    body: Mapping[str, Any] | None,
    *,
    request_id: str | None,
    retry_after: float | None = None,
) -> LinksvcError:
    """The exception for a non-2xx answer with its (maybe absent) problem document."""
    body = body or {}
    code = body.get("code") if isinstance(body.get("code"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    code = code or f"http_{status}"
    detail = detail or f"linksvc answered HTTP {status}."
    exc = error_class(status, code)(
        detail, status=status, code=code, request_id=request_id, body=body
    )
    if isinstance(exc, (RateLimited, ServiceUnavailable)):
        exc.retry_after = retry_after
    return exc
