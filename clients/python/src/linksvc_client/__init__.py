"""linksvc-client: the Python client for linksvc.

    from linksvc_client import LinkClient, LinkUsed

    client = LinkClient("http://127.0.0.1:8000", api_key)
    link = client.mint("magic_link", "user-42")
    try:
        who = client.redeem(link.token, "magic_link")
    except LinkUsed:
        ...

``LinkClient`` / ``AsyncLinkClient`` call the API (with retries and automatic idempotency
keys); ``LinkVerifier`` checks tokens offline with the published keys;
``linksvc_client.flask.Linksvc`` wires a client into a Flask app.
"""

from ._core import OPERATIONS, VERSION, RetryPolicy, code_challenge, new_code_verifier
from .client import AsyncLinkClient, LinkClient
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    CodeExpired,
    CodeNotForThisBrowser,
    CodeUsed,
    Conflict,
    IdempotencyInProgress,
    IdempotencyMismatch,
    InvalidCode,
    InvalidRequest,
    InvalidToken,
    LinkExpired,
    LinkGone,
    LinkRevoked,
    LinkSuperseded,
    LinksvcError,
    LinkUsed,
    MailFailed,
    NotAllowed,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    ServiceUnavailable,
    UnknownLink,
)
from .models import (
    Branding,
    Claims,
    ExchangedCode,
    LinkEvent,
    LinkPage,
    LinkStatus,
    LinkSummary,
    MintedLink,
    RedeemedLink,
    Revoked,
    SignIn,
    VerifiedLink,
)
from .verifier import JWKSCache, LinkVerifier

__version__ = VERSION
__all__ = [
    "OPERATIONS",
    "APIConnectionError",
    "APIError",
    "AsyncLinkClient",
    "AuthenticationError",
    "Branding",
    "Claims",
    "CodeExpired",
    "CodeNotForThisBrowser",
    "CodeUsed",
    "Conflict",
    "ExchangedCode",
    "IdempotencyInProgress",
    "IdempotencyMismatch",
    "InvalidCode",
    "InvalidRequest",
    "InvalidToken",
    "JWKSCache",
    "LinkClient",
    "LinkEvent",
    "LinkExpired",
    "LinkGone",
    "LinkPage",
    "LinkRevoked",
    "LinkStatus",
    "LinkSummary",
    "LinkSuperseded",
    "LinkUsed",
    "LinkVerifier",
    "LinksvcError",
    "MailFailed",
    "MintedLink",
    "NotAllowed",
    "NotFound",
    "OutcomeUnknown",
    "RateLimited",
    "RedeemedLink",
    "RetryPolicy",
    "Revoked",
    "ServiceUnavailable",
    "SignIn",
    "UnknownLink",
    "VerifiedLink",
    "code_challenge",
    "new_code_verifier",
]
