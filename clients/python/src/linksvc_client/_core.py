"""What the sync and async clients share: each API call as data, the retry rules, and
turning an answer into a result or an exception. No I/O here."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import hmac
import json
import random
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from . import errors
from .models import (
    Branding,
    ExchangedCode,
    LinkPage,
    LinkStatus,
    MintedLink,
    RedeemedLink,
    Revoked,
    SignIn,
    VerifiedLink,
)

T = TypeVar("T")

PREFIX = "/api/v1"
VERSION = "0.1.0"
USER_AGENT = f"linksvc-client-python/{VERSION} httpx/{httpx.__version__}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When and how long to try again.

    Connection failures, ``429`` and ``503`` (and ``409 idempotency_in_progress``) are
    retried up to ``max_attempts`` tries in all, waiting ``backoff`` seconds doubled each
    time up to ``max_backoff``, with jitter (each wait is drawn between half and all of
    it), or what ``Retry-After`` asks when it asks for no more than ``max_retry_after``
    (past that the error is raised at once). No retry starts past ``deadline`` seconds
    from the first try, and no try is given longer than what is left of it.
    """

    max_attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 20.0
    deadline: float = 30.0

    def backoff_for(self, attempt: int, rng: Callable[[], float]) -> float:
        """The wait after try number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.backoff * float(2 ** (attempt - 1)))
        return float(ceiling * (0.5 + rng() / 2))


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclasses.dataclass(frozen=True)
class Op(Generic[T]):
    """One API call: what to send and how to read a success."""

    operation: str  # the OpenAPI operationId
    method: str
    path: str
    parse: Callable[[Any, httpx.Headers], T]
    json: Any = None
    #: A body that is not JSON (a logo), sent as it is with its Content-Type in ``headers``.
    content: bytes | None = None
    params: tuple[tuple[str, str], ...] | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The call spends something once (a link, a code): once it may have reached the
    #: server it is never sent again, since a second try could only answer ``used``.
    single_use: bool = False


#: operationId → (method, path template): what each client method calls. The OpenAPI
#: test compares this with linksvc's document.
OPERATIONS: Mapping[str, tuple[str, str]] = {
    "mint": ("POST", f"{PREFIX}/links"),
    "verify": ("POST", f"{PREFIX}/links/verify"),
    "redeem": ("POST", f"{PREFIX}/links/redeem"),
    "status": ("GET", f"{PREFIX}/links/{{jti}}"),
    "revoke": ("DELETE", f"{PREFIX}/links/{{jti}}"),
    "revoke_subject": ("POST", f"{PREFIX}/subjects/{{subject}}/revoke"),
    "links_of": ("GET", f"{PREFIX}/subjects/{{subject}}/links"),
    "exchange_code": ("POST", f"{PREFIX}/codes/exchange"),
    "start_sign_in": ("POST", f"{PREFIX}/sign-ins"),
    "get_branding": ("GET", f"{PREFIX}/branding"),
    "put_branding": ("PUT", f"{PREFIX}/branding"),
    "put_logo": ("PUT", f"{PREFIX}/branding/logo"),
    "delete_logo": ("DELETE", f"{PREFIX}/branding/logo"),
}
#: The client method of each operation, where its name differs.
METHOD_NAMES: Mapping[str, str] = {
    "start_sign_in": "sign_in",
    "put_branding": "set_branding",
    "put_logo": "set_logo",
}


def _path(operation: str, **params: str) -> tuple[str, str]:
    method, template = OPERATIONS[operation]
    # Every reserved character is escaped: a subject "tenant/42" is one path segment.
    return method, template.format(**{k: quote(v, safe="") for k, v in params.items()})


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string")
    return value


# -- binding a code to the browser that asked (PKCE-style, S256) ----------------------------

#: The purposes whose links end in a one-time code (a hosted sign-in or reset).
CODE_PURPOSES = ("magic_link", "password_reset")
#: RFC 7636: 43-128 unreserved characters.
VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def new_code_verifier() -> str:
    """A fresh random ``code_verifier``: 256 bits, 43 base64url characters."""
    return secrets.token_urlsafe(32)


def code_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of ``verifier``: BASE64URL(SHA-256(verifier))."""
    digest = hashlib.sha256(_verifier(verifier).encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _verifier(value: Any) -> str:
    if not isinstance(value, str) or not VERIFIER_RE.fullmatch(value):
        raise ValueError("code_verifier must be 43-128 characters of letters, digits and -._~")
    return value


def binding_secret(api_key: str) -> bytes:
    """The client's key for :func:`binding`'s verifiers: derived from the API key, which
    never leaves the application's servers."""
    return hashlib.sha256(b"linksvc-client.code-verifier\x00" + api_key.encode()).digest()


def binding(
    purpose: str,
    *,
    bind: bool,
    code_verifier: str | None,
    idempotency_key: str | None,
    secret: bytes,
) -> str | None:
    """The ``code_verifier`` a call binds its flow to, or None for an unbound flow.

    A sign-in or reset binds by default: to ``code_verifier`` when given (the one kept in
    the browser's session), else to a new one. A new one is random, unless the caller
    names the ``idempotency_key``: a repeat with that key must send the same challenge to
    answer the same link, so the verifier is then an HMAC of the key under the client's
    secret — the same on every repeat, and unknowable without the API key.
    """
    if not bind or purpose not in CODE_PURPOSES:
        if code_verifier is not None:
            raise ValueError(
                "code_verifier is only for sign-in and reset links minted with bind=True"
            )
        return None
    if code_verifier is not None:
        return _verifier(code_verifier)
    if idempotency_key is None:
        return new_code_verifier()
    mac = hmac.new(secret, idempotency_key.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


# -- the calls ------------------------------------------------------------------------------


def mint(
    purpose: str,
    subject: str,
    *,
    ttl: int | None,
    redirect_uri: str | None,
    download: Mapping[str, Any] | None,
    data: Any,
    email: str | None,
    confirm: bool | None,
    idempotency_key: str | None,
    code_verifier: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
) -> Op[MintedLink]:
    # A key on every mint: a retry after a lost answer then names the same link.
    key = idempotency_key or str(uuid.uuid4())
    method, path = _path("mint")
    body = _drop_none(
        {
            "purpose": _str("purpose", purpose),
            "subject": _str("subject", subject),
            "ttl": ttl,
            "redirect_uri": redirect_uri,
            "download": dict(download) if download is not None else None,
            "data": data,
            "email": email,
            "confirm": confirm,
            "code_challenge": code_challenge(code_verifier) if code_verifier else None,
            "locale": locale,
            "timezone": timezone,
        }
    )
    return Op(
        "mint",
        method,
        path,
        lambda b, h: MintedLink.from_api(
            b,
            replayed=h.get("Idempotent-Replayed") == "true",
            idempotency_key=key,
            code_verifier=code_verifier,
        ),
        json=body,
        headers={"Idempotency-Key": key},
    )


def verify(token: str, purpose: str) -> Op[VerifiedLink]:
    method, path = _path("verify")
    return Op(
        "verify",
        method,
        path,
        lambda b, h: VerifiedLink.from_api(b),
        json={"token": _str("token", token), "purpose": _str("purpose", purpose)},
    )


def redeem(token: str, purpose: str) -> Op[RedeemedLink]:
    method, path = _path("redeem")
    return Op(
        "redeem",
        method,
        path,
        lambda b, h: RedeemedLink.from_api(b),
        json={"token": _str("token", token), "purpose": _str("purpose", purpose)},
        single_use=True,
    )


def status(jti: str) -> Op[LinkStatus]:
    method, path = _path("status", jti=_str("jti", jti))
    return Op("status", method, path, lambda b, h: LinkStatus.from_api(b))


def revoke(jti: str) -> Op[Revoked]:
    method, path = _path("revoke", jti=_str("jti", jti))
    return Op("revoke", method, path, lambda b, h: Revoked.from_api(b))


def revoke_subject(subject: str, purposes: Sequence[str] | None) -> Op[int]:
    method, path = _path("revoke_subject", subject=_str("subject", subject))
    body = {"purposes": list(purposes)} if purposes is not None else {}
    return Op("revoke_subject", method, path, lambda b, h: int(b["revoked"]), json=body)


def get_branding() -> Op[Branding]:
    method, path = _path("get_branding")
    return Op("get_branding", method, path, lambda b, h: Branding.from_api(b))


#: ``set_branding``'s default: a member left out stays as it is (``None`` clears it).
KEEP: Any = object()


def put_branding(**fields: Any) -> Op[Branding]:
    method, path = _path("put_branding")
    body = {k: v for k, v in fields.items() if v is not KEEP}
    return Op("put_branding", method, path, lambda b, h: Branding.from_api(b), json=body)


def put_logo(data: bytes, content_type: str) -> Op[Branding]:
    method, path = _path("put_logo")
    return Op(
        "put_logo",
        method,
        path,
        lambda b, h: Branding.from_api(b),
        content=bytes(data),
        headers={"Content-Type": content_type},
    )


def delete_logo() -> Op[Branding]:
    method, path = _path("delete_logo")
    return Op("delete_logo", method, path, lambda b, h: Branding.from_api(b))


def _csv(value: str | Sequence[str] | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else ",".join(value)


def links_of(
    subject: str,
    *,
    state: str | Sequence[str] | None,
    purpose: str | Sequence[str] | None,
    limit: int | None,
    cursor: str | None,
) -> Op[LinkPage]:
    method, path = _path("links_of", subject=_str("subject", subject))
    params = tuple(
        (k, v)
        for k, v in (
            ("state", _csv(state)),
            ("purpose", _csv(purpose)),
            ("limit", None if limit is None else str(limit)),
            ("cursor", cursor),
        )
        if v is not None
    )
    return Op("links_of", method, path, lambda b, h: LinkPage.from_api(b), params=params)


def exchange_code(code: str, code_verifier: str | None = None) -> Op[ExchangedCode]:
    method, path = _path("exchange_code")
    body = {"code": _str("code", code)}
    if code_verifier is not None:
        body["code_verifier"] = _verifier(code_verifier)
    return Op(
        "exchange_code",
        method,
        path,
        lambda b, h: ExchangedCode.from_api(b),
        json=body,
        single_use=True,
    )


def sign_in(
    subject: str,
    email: str,
    *,
    ip: str,
    user_agent: str,
    redirect_uri: str | None,
    idempotency_key: str | None,
    code_verifier: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
) -> Op[SignIn]:
    key = idempotency_key or str(uuid.uuid4())
    method, path = _path("start_sign_in")
    body = _drop_none(
        {
            "subject": _str("subject", subject),
            "email": _str("email", email),
            "ip": _str("ip", ip),
            "user_agent": user_agent,
            "redirect_uri": redirect_uri,
            "code_challenge": code_challenge(code_verifier) if code_verifier else None,
            "locale": locale,
            "timezone": timezone,
        }
    )
    return Op(
        "start_sign_in",
        method,
        path,
        lambda b, h: SignIn.from_api(b, code_verifier=code_verifier),
        json=body,
        headers={"Idempotency-Key": key},
    )


# -- answers and retries ----------------------------------------------------------------------

#: Failures before anything was sent: always safe to try again.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def new_request_id() -> str:
    """One id for a call and all its retries, so the service's log lines line up."""
    return secrets.token_hex(8)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json_body(resp: httpx.Response) -> Any:
    try:
        return json.loads(resp.content) if resp.content else None
    except (ValueError, UnicodeDecodeError):
        return None


def answer(op: Op[T], resp: httpx.Response, request_id: str) -> T:
    """The result of a 2xx answer, or the exception of any other."""
    rid = resp.headers.get("X-Request-Id") or request_id
    body = _json_body(resp)
    if 200 <= resp.status_code < 300:
        if not isinstance(body, dict):
            raise errors.APIError(
                "linksvc's answer is not a JSON object.",
                status=resp.status_code,
                code="bad_answer",
                request_id=rid,
            )
        try:
            return op.parse(body, resp.headers)
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.APIError(
                f"linksvc's answer lacks what {op.operation} returns ({exc}).",
                status=resp.status_code,
                code="bad_answer",
                request_id=rid,
            ) from None
    raise errors.error_for(
        resp.status_code,
        body if isinstance(body, dict) else None,
        request_id=rid,
        retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
    )


def retryable(exc: errors.LinksvcError) -> bool:
    return isinstance(
        exc, (errors.RateLimited, errors.ServiceUnavailable, errors.IdempotencyInProgress)
    ) or (type(exc) is errors.APIConnectionError)


def connection_error(
    op: Op[Any], exc: httpx.TransportError, request_id: str
) -> errors.APIConnectionError:
    """The exception for a try that got no answer."""
    if op.single_use and not isinstance(exc, NOT_SENT):
        return errors.OutcomeUnknown(
            f"The {op.operation} request may have reached linksvc, but no answer came "
            f"({type(exc).__name__}); it is not retried. Ask status() what became of the link.",
            code="outcome_unknown",
            request_id=request_id,
        )
    return errors.APIConnectionError(
        f"Could not reach linksvc ({type(exc).__name__}: {exc}).",
        code="connection_error",
        request_id=request_id,
    )


class Retrier:
    """The retry bookkeeping of one call: how many tries, how long, what to wait."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.clock = clock
        self.rng = rng
        self.started = clock()
        self.attempt = 0

    def next_timeout(self) -> float:
        """Start a try; the timeout it may take."""
        self.attempt += 1
        left = self.policy.deadline - (self.clock() - self.started)
        return max(0.001, min(self.timeout, left))

    def wait_before_retry(self, exc: errors.LinksvcError) -> float | None:
        """Seconds to wait before the next try, or None: give up and raise ``exc``."""
        if not retryable(exc) or self.attempt >= self.policy.max_attempts:
            return None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None and hinted > self.policy.max_retry_after:
            return None
        wait = self.policy.backoff_for(self.attempt, self.rng)
        if hinted is not None:
            wait = max(hinted, wait)
        if self.clock() - self.started + wait >= self.policy.deadline:
            return None
        return wait
