"""What each problem ``code`` means: the page every problem ``type`` URI points to.

An API error is ``application/problem+json`` whose ``type`` is
``<LINKSVC_BASE_URL>/problems#<code>``; ``GET /problems`` (:mod:`linksvc.web.docs`) renders this
table, one section per code, so the URI in an error answer opens the explanation of that very
code on the service itself. ``tests/web/test_problems.py`` fails when a code the source can emit
is missing here.
"""

from __future__ import annotations

from typing import NamedTuple


class Problem(NamedTuple):
    status: int
    title: str
    explanation: str


_TOKEN = "The token was not accepted: "

PROBLEMS: dict[str, Problem] = {
    # -- authentication and the request itself
    "unauthorized": Problem(
        401,
        "Missing or invalid API key",
        "Send the client's API key as `Authorization: Bearer <key>`. A disabled client's key, "
        "or one replaced by `clients rotate-key`, stops working within 5 seconds.",
    ),
    "body_required": Problem(400, "Body required", "This call takes a JSON object as its body."),
    "invalid_json": Problem(
        400,
        "Body is not JSON",
        "The body must be UTF-8 JSON, with no duplicate member names.",
    ),
    "invalid_body": Problem(400, "Body is not an object", "The body must be a JSON object."),
    "bad_request": Problem(400, "Bad request", "The request could not be read."),
    "body_too_large": Problem(
        413, "Body too large", "The body is larger than `LINKSVC_MAX_BODY_BYTES` (64 KiB)."
    ),
    "unsupported_media_type": Problem(
        415, "Wrong content type", "Send the body as `Content-Type: application/json`."
    ),
    "unknown_field": Problem(
        422, "Unknown field", "The body has a member this call does not take; `field` names it."
    ),
    "missing_field": Problem(422, "Missing field", "A required member is absent; see `field`."),
    "invalid_field": Problem(
        422,
        "Invalid field",
        "A member has the wrong type, is out of range, or breaks its rule; `field` names it and "
        "`detail` says the rule.",
    ),
    "not_found": Problem(404, "No such resource", "Nothing is served at this path."),
    "method_not_allowed": Problem(
        405,
        "Method not allowed",
        "This path does not take this method; `Allow` lists those it takes.",
    ),
    "http_error": Problem(400, "HTTP error", "The request could not be handled as sent."),
    "untrusted_host": Problem(
        400,
        "Untrusted host",
        "The `Host` header names a host this service does not answer for: only the host of "
        "`LINKSVC_BASE_URL` (and `LINKSVC_TRUSTED_HOSTS`). Call the service by its public name.",
    ),
    "internal_error": Problem(
        500,
        "Internal error",
        "Something went wrong on our side. Nothing was consumed; the log has the `request_id`.",
    ),
    "rate_limited": Problem(
        429,
        "Rate limited",
        "Too many requests for this client, subject or address; wait `retry_after` seconds "
        "(also in `Retry-After`). A limited mint did nothing.",
    ),
    "unavailable": Problem(
        503,
        "Unavailable",
        "The database, storage or another backend is not answering. Nothing was consumed; "
        "try again after `Retry-After` seconds.",
    ),
    "database_unavailable": Problem(
        503, "Database unavailable", "`/readyz`: the database is not answering."
    ),
    # -- minting
    "purpose_not_allowed": Problem(
        403, "Purpose not allowed", "This client may not mint links of this purpose."
    ),
    "redirect_uri_not_allowed": Problem(
        403,
        "Redirect URI not registered",
        "`redirect_uri` must be one of the client's registered redirect URIs, exactly "
        "(`clients update --add-redirect-uri`).",
    ),
    "redirect_uri_required": Problem(
        422,
        "Redirect URI required",
        "The client has several redirect URIs; say which one with `redirect_uri`.",
    ),
    "download_required": Problem(
        422, "Download required", "A `download` link needs the `download` object."
    ),
    "download_not_allowed": Problem(
        403,
        "Download not allowed",
        "The object is outside the client's download prefixes (`clients update --add-download-prefix`).",
    ),
    "object_not_found": Problem(422, "No such object", "The storage has no object at that key."),
    "invalid_key": Problem(
        422,
        "Invalid object key",
        "The key has `..`, `.` or empty segments, is absolute, has backslashes or control "
        "characters, or leaves the storage directory.",
    ),
    "invalid_filename": Problem(
        422, "Invalid file name", "The file name is empty, too long or has control characters."
    ),
    "invalid_content_type": Problem(
        422, "Invalid content type", "`content_type` must be a plain `type/subtype`."
    ),
    "storage_access_denied": Problem(
        503, "Storage access denied", "The storage refused linksvc's credentials."
    ),
    "ttl_out_of_range": Problem(
        422,
        "Lifetime out of range",
        "`ttl` must be at least 10 seconds and at most the purpose's ceiling "
        "(`LINKSVC_MAX_TTL_*`, never above 900).",
    ),
    "data_too_large": Problem(
        422, "Data too large", "`data` is larger than `LINKSVC_MAX_DATA_BYTES` once encoded."
    ),
    "data_too_deep": Problem(422, "Data nested too deeply", "`data` nests too many levels."),
    "subject_looks_like_pii": Problem(
        422,
        "Subject looks like an e-mail address",
        "Claims are readable by anyone holding the link: use an opaque user id, or create the "
        "client with `--allow-pii-subject`.",
    ),
    "mail_failed": Problem(
        502,
        "Mail not sent",
        "The mail server refused the message, so the link was revoked; links it would have "
        "superseded still work. Try again later.",
    ),
    "mail_unavailable": Problem(
        503, "Mail unavailable", "This instance cannot send mail; mint without `email`."
    ),
    "invalid_idempotency_key": Problem(
        400,
        "Invalid Idempotency-Key",
        "`Idempotency-Key` must be 1-255 characters of letters, digits and `._:~+/=-`.",
    ),
    "idempotency_mismatch": Problem(
        422,
        "Idempotency-Key reused with another body",
        "The same key with another request body within 24 hours; use a new key for a new request.",
    ),
    "idempotency_in_progress": Problem(
        409,
        "Idempotent request in progress",
        "A request with this `Idempotency-Key` is still being processed; retry shortly.",
    ),
    "invalid_cursor": Problem(
        422, "Invalid cursor", "`cursor` must be a `next_cursor` this API returned."
    ),
    # -- tokens (verify, redeem, pages)
    "malformed": Problem(
        401,
        "Malformed token",
        _TOKEN + "it is not three canonical base64url segments of UTF-8 JSON, or it is too long.",
    ),
    "bad_header": Problem(
        401,
        "Bad token header",
        _TOKEN + "its header must be exactly `alg`, `kid` and `typ: link+jwt`.",
    ),
    "unknown_key": Problem(
        401, "Unknown key", _TOKEN + "`kid` names no key of ours (or a removed one)."
    ),
    "wrong_algorithm": Problem(
        401, "Wrong algorithm", _TOKEN + "`alg` is not the algorithm of the key `kid` names."
    ),
    "bad_signature": Problem(401, "Bad signature", _TOKEN + "the signature does not verify."),
    "wrong_issuer": Problem(401, "Wrong issuer", _TOKEN + "`iss` is not this service."),
    "wrong_audience": Problem(401, "Wrong audience", _TOKEN + "it was minted for another client."),
    "wrong_purpose": Problem(
        401, "Wrong purpose", _TOKEN + "it is a link of another purpose than the call's."
    ),
    "invalid_claims": Problem(
        401,
        "Invalid claims",
        _TOKEN + "a claim is missing, of the wrong JSON type, or not of the form it was minted in.",
    ),
    "lifetime_exceeded": Problem(
        401, "Lifetime exceeded", _TOKEN + "`exp - iat` is above the purpose's ceiling."
    ),
    "not_yet_valid": Problem(401, "Not yet valid", _TOKEN + "`nbf` is in the future."),
    "issued_in_future": Problem(401, "Issued in the future", _TOKEN + "`iat` is in the future."),
    "expired": Problem(
        410,
        "Expired",
        "The link's lifetime is over (`expired_at`, ISO 8601 UTC); mint a new one.",
    ),
    "unknown_link": Problem(
        404,
        "Unknown link",
        "The token is well signed but names no link of this client, or the `jti` is not one of "
        "this client's links.",
    ),
    "used": Problem(
        409,
        "Already used",
        "The link has been redeemed once already (`at`, ISO 8601 UTC); it never works again.",
    ),
    "revoked": Problem(
        410, "Revoked", "The link was revoked (`DELETE /links/{jti}` or a subject revoke)."
    ),
    "superseded": Problem(
        410, "Superseded", "A newer link of the same purpose was minted for the subject."
    ),
    # -- one-time codes
    "invalid_code": Problem(
        404,
        "Invalid code",
        "No such code for this client: unknown, malformed, or another client's (which does not "
        "spend it).",
    ),
    "code_used": Problem(
        409,
        "Code already exchanged",
        "A browser that already has your session sent it twice: treat as signed in.",
    ),
    "code_expired": Problem(410, "Code expired", "Codes live 60 seconds (`LINKSVC_CODE_TTL`)."),
    "code_revoked": Problem(
        410,
        "Code voided",
        "The subject was revoked, the client disabled or the link's signing key removed after "
        "the press and before the exchange, or it was presented with a wrong `code_verifier`: do "
        "not sign the user in; they must request a new link.",
    ),
    "code_verifier_required": Problem(
        422,
        "Code verifier required",
        "The code's flow was started with a `code_challenge`, and the exchange sent no "
        "`code_verifier`. The code reached a browser whose session holds no verifier — one that "
        "did not start the flow (a login CSRF, or a link opened on another device). The code is "
        "spent: do not sign anyone in; the user asks again from this browser.",
    ),
    "code_verifier_mismatch": Problem(
        422,
        "Code verifier mismatch",
        "The `code_verifier` is not the one whose S256 challenge the flow was started with, or "
        "the flow was started without a `code_challenge`. The code reached a browser that did "
        "not start its flow. The code is spent: do not sign anyone in.",
    ),
    # -- branding (PUT /api/v1/branding, PUT /api/v1/branding/logo)
    "brand_color_low_contrast": Problem(
        422,
        "Brand colour too low in contrast",
        "Neither white nor near-black button text reaches WCAG AA's 4.5:1 on this colour; "
        "`detail` names the best ratio. Choose a darker or a lighter colour.",
    ),
    "logo_too_large": Problem(
        413, "Logo too large", "A logo is at most 256 KiB; the body was not read further."
    ),
    "logo_svg_refused": Problem(
        415,
        "SVG logo refused",
        "SVG is a document that can carry script and fetch resources; send the logo as PNG, "
        "JPEG or WebP.",
    ),
    "logo_unsupported_type": Problem(
        415,
        "Logo type not accepted",
        "Send the logo as `Content-Type: image/png`, `image/jpeg` or `image/webp`.",
    ),
    "logo_unreadable": Problem(
        422,
        "Logo unreadable",
        "The body is not a PNG, JPEG or WebP image that decodes (empty, cut off, corrupt, or "
        "another format whatever its `Content-Type`).",
    ),
    "logo_too_many_pixels": Problem(
        422,
        "Logo too large in pixels",
        "A logo is at most 2048×2048 pixels (checked before it is decoded); it is stored at "
        "most 512 pixels on its longer side.",
    ),
}

#: Codes the scan in tests/web/test_problems.py finds that are end-user page reasons, never a
#: problem ``code`` of the API (they choose a page, or go to logs).
PAGE_ONLY = frozenset(
    {
        "invalid",
        "completed",
        "bad_form_token",
        "cross_site",
        "form_for_other_browser",
        "form_for_other_link",
        "missing_form_token",
        "form_expired",
        # sign-in steps (linksvc.signins.flow): they choose the waiting and approval pages
        "denied",
        "other_browser",
        "unknown",
        "wrong_code",
        "too_many_codes",
    }
)
