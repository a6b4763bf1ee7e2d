"""The OpenAPI 3.1 description of the internal API, served at ``GET /api/v1/openapi.json``.

The schemas of the bodies the API decodes and encodes through models are generated from
those models (:mod:`linksvc.web.contract`); what is written here is the operations' prose, the
problem catalogue, the rules across members and the answers not yet given a model.
``tests/web/test_openapi.py`` holds document and code together (every routed ``/api/v1``
operation is documented and every documented one is routed; real responses validate against
the documented schemas), ``tests/web/test_contract.py`` the Python client's models and the
answer schemas, and ``tests/web/test_fuzz.py`` fuzzes the API from it. Operations owned by a module that may not
be installed (``/codes/exchange`` belongs to the pages) are listed in
:data:`OPTIONAL_OPERATIONS` and served only when the app routes them.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Flask, Response, current_app, jsonify

from linksvc.services import services

# The wire's vocabulary (patterns, enums, shared field schemas) lives with the models that
# use it (linksvc.web.contract).
from linksvc.web import contract
from linksvc.web.contract import (
    _DATETIME,
    _JTI,
    _SPACES,
    _STR,
    EMAIL_PATTERN,
    FORMAT_CHARACTERS,
    PURPOSES,
    STATES,
    SUBJECT_PATH_PATTERN,
    _list_pattern,
)

PREFIX = "/api/v1"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(
    description: str, *, retry_after: bool = False, authenticate: bool = False
) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    headers = {}
    if retry_after:
        headers["Retry-After"] = {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "string"},
        }
    if authenticate:
        headers["WWW-Authenticate"] = {
            "description": "The bearer challenge.",
            "schema": {"type": "string"},
        }
    if headers:
        resp["headers"] = headers
    return resp


# Answers every authenticated call can give, whatever its input.
_COMMON_ERRORS = {
    "401": _problem("Missing or invalid API key (`unauthorized`).", authenticate=True),
    "429": _problem("Rate limited (`rate_limited`).", retry_after=True),
    "503": _problem(
        "The database or another backend is unavailable (`unavailable`); nothing was consumed.",
        retry_after=True,
    ),
}
# Answers of a call that takes a JSON body.
_BODY_ERRORS = {
    "400": _problem(
        "The body is missing, not UTF-8 JSON, has duplicate members, or is not an object "
        "(`body_required`, `invalid_json`, `invalid_body`)."
    ),
    "413": _problem("The body is larger than `LINKSVC_MAX_BODY_BYTES` (`body_too_large`)."),
    "415": _problem("The body is not `application/json` (`unsupported_media_type`)."),
    "422": _problem(
        "A field is unknown, missing, of the wrong type or out of range "
        "(`unknown_field`, `missing_field`, `invalid_field`, …); `field` names it."
    ),
}
# What a call that takes an `Idempotency-Key` adds to _BODY_ERRORS (its 422 says more).
_IDEMPOTENT_ERRORS = {
    "400": _problem(
        "The body is missing, not UTF-8 JSON, has duplicate members, or is not an "
        "object (`body_required`, `invalid_json`, `invalid_body`), or the "
        "`Idempotency-Key` header is malformed (`invalid_idempotency_key`)."
    ),
    "409": _problem(
        "A request with the same `Idempotency-Key` is still being processed "
        "(`idempotency_in_progress`); retry after `Retry-After`.",
        retry_after=True,
    ),
}


def _replayed_header(note: str = "") -> dict[str, Any]:
    """The ``Idempotent-Replayed`` header of an answer given again for the same key."""
    return {
        "Idempotent-Replayed": {
            "description": "`true` when the answer is that of an earlier "
            f"request with the same `Idempotency-Key`{note}.",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }


# Answers of a call that checks a link token.
_TOKEN_ERRORS = {
    "401": _problem(
        "Missing or invalid API key (`unauthorized`), or the token is not valid: `malformed`, "
        "`bad_header`, `unknown_key`, `wrong_algorithm`, `bad_signature`, `wrong_issuer`, "
        "`wrong_audience`, `wrong_purpose`, `invalid_claims`, `lifetime_exceeded`, "
        "`not_yet_valid`, `issued_in_future`.",
        authenticate=True,
    ),
    "404": _problem("The token is well signed but names no link of this client (`unknown_link`)."),
    "409": _problem("The link has already been used (`used`)."),
    "410": _problem(
        "The link has expired, was revoked, or was superseded by a newer one "
        "(`expired`, `revoked`, `superseded`)."
    ),
}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, dict[str, Any]], *extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in (_COMMON_ERRORS, *extra):
        out.update(group)
    out.update(ok)
    return dict(sorted(out.items()))


_JTI_PARAM = {
    "name": "jti",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _JTI["pattern"]},
    "description": "The link's `jti`, as returned when it was minted.",
}

_IDEMPOTENCY_KEY_PARAM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:~+/=-]{1,255}$"},
    "description": "A key of the caller's choosing (a UUID): the same key with the same body "
    "within 24 h answers the same link — no second mint, mail or supersede; with another body, "
    "`422 idempotency_mismatch`. Keys are per client.",
}

_SUBJECT_PARAM = {
    "name": "subject",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": SUBJECT_PATH_PATTERN, "example": "user-42"},
    "description": "The subject as minted; percent-encode `/` and other reserved characters.",
}
# A path that names no subject at all (empty, or a dot segment a client removed) routes
# nowhere.
_NO_SUBJECT = {
    "404": _problem(
        "The path names no subject: an empty one, or `.`/`..` removed by the HTTP client as a "
        "dot segment (`not_found`)."
    )
}

#: Characters a name shown to users may not hold (linksvc.clients.registry.validate_display_name,
#: linksvc.clients.branding.validate_mail_from_name): control and format characters (a lone surrogate,
#: which JSON can escape, is refused by the server too).
_SHOWN_EXCLUDED = f"\\x00-\\x1f\\x7f-\\x9f{FORMAT_CHARACTERS}"
#: A display name: 1-200 such characters, not only spaces.
DISPLAY_NAME_PATTERN = f"^[^{_SHOWN_EXCLUDED}]*[^{_SHOWN_EXCLUDED}{_SPACES}][^{_SHOWN_EXCLUDED}]*$"
#: A mail sender name: the same, and no line or paragraph separator either.
MAIL_FROM_NAME_PATTERN = (
    f"^[^{_SHOWN_EXCLUDED}\u2028\u2029]*[^{_SHOWN_EXCLUDED}{_SPACES}]"
    f"[^{_SHOWN_EXCLUDED}\u2028\u2029]*$"
)
#: A support URL (linksvc.clients.branding.validate_support_url): absolute http(s), no credentials,
#: no fragment, no space (http only outside production, or for a local host).
SUPPORT_URL_PATTERN = (
    "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$"
)
BRAND_COLOR_PATTERN = "^#[0-9A-Fa-f]{6}$"

#: The mint body's rules across its members, beside the schema generated from its model.
_MINT_RULES: dict[str, Any] = {
    # What belongs to which purpose: a download link has its file and no redirect; a
    # sign-in or reset link has no file and always confirms (so `confirm: true` is
    # refused as meaningless there); only a link that ends in a code binds a flow.
    "if": {"properties": {"purpose": {"const": "download"}}},
    "then": {
        "required": ["download"],
        "properties": {
            "download": {"type": "object"},
            "redirect_uri": {"type": "null"},
            "code_challenge": {"type": "null"},
        },
    },
    "else": {"properties": {"download": {"type": "null"}, "confirm": {"enum": [False, None]}}},
    "examples": [{"purpose": "magic_link", "subject": "user-42"}],
}

#: Generated from the request and answer models (linksvc.web.contract), by name.
_GENERATED = contract.schemas()
_GENERATED["MintRequest"].update(_MINT_RULES)

#: The component schemas: the generated ones, and the answers not (yet) given a model.
SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "An RFC 9457 problem document with linksvc's stable `code`. Never echoes a token or key.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": _STR,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": "string", "pattern": "^[a-z_]+$"},
            "detail": _STR,
            "field": {
                "type": "string",
                "description": "The request field at fault, for 4xx on a field.",
            },
            "jti": {
                "type": "string",
                "description": "The link concerned, for `used`, `expired`, `revoked`, …",
            },
            "at": {**_DATETIME, "description": "When a `used` link was used (or left `issued`)."},
            "expired_at": {**_DATETIME, "description": "When an `expired` link expired."},
        },
        "additionalProperties": {
            "type": ["string", "integer"],
            "description": "Facts about the failure, such as `expired_at` or the `at` of a "
            "used link; times are ISO 8601 UTC, as everywhere in this API.",
        },
    },
    "MintRequest": _GENERATED["MintRequest"],
    "MintedLink": _GENERATED["MintedLink"],
    "TokenRequest": _GENERATED["TokenRequest"],
    "Claims": _GENERATED["Claims"],
    "Verified": _GENERATED["Verified"],
    "Redeemed": _GENERATED["Redeemed"],
    "LinkStatus": _GENERATED["LinkStatus"],
    "LinkEvent": _GENERATED["LinkEvent"],
    "Revoked": _GENERATED["Revoked"],
    "RevokeSubjectRequest": _GENERATED["RevokeSubjectRequest"],
    "SubjectRevoked": _GENERATED["SubjectRevoked"],
    "SubjectLinks": _GENERATED["SubjectLinks"],
    "LinkSummary": _GENERATED["LinkSummary"],
    "ExchangeRequest": _GENERATED["ExchangeRequest"],
    "Exchanged": _GENERATED["Exchanged"],
    "SignInRequest": _GENERATED["SignInRequest"],
    "SignInStarted": _GENERATED["SignInStarted"],
}

SCHEMAS["Branding"] = {
    "type": "object",
    "description": "The client's face on the pages and mails of its links. The logo is set "
    "apart, by `PUT /api/v1/branding/logo`.",
    "required": [
        "display_name",
        "brand_color",
        "button_text_color",
        "support_url",
        "support_email",
        "mail_from_name",
        "logo_url",
    ],
    "properties": {
        "display_name": {"type": "string", "description": "The name end users read."},
        "brand_color": {
            "type": ["string", "null"],
            "pattern": BRAND_COLOR_PATTERN,
            "description": "The primary button's colour, `#rrggbb`; null: linksvc's blue.",
        },
        "button_text_color": {
            "type": ["string", "null"],
            "enum": ["#ffffff", "#1b1f24", None],
            "description": "The button text chosen for `brand_color` (the better contrast).",
        },
        "support_url": {"type": ["string", "null"], "format": "uri"},
        "support_email": {"type": ["string", "null"]},
        "mail_from_name": {
            "type": ["string", "null"],
            "description": "The mails' sender name; null: `display_name`. The address is the "
            "operator's.",
        },
        "logo_url": {
            "type": ["string", "null"],
            "format": "uri",
            "description": "The logo, at a URL named by its content's hash (cached a year).",
        },
    },
}
SCHEMAS["BrandingUpdate"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Members present are set, `null` clears one (not `display_name`), absent "
    "ones stay as they are. A brand colour whose button text cannot reach 4.5:1 contrast "
    "(WCAG AA) is refused (`brand_color_low_contrast`).",
    "properties": {
        "display_name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": DISPLAY_NAME_PATTERN,
        },
        "brand_color": {"type": ["string", "null"], "pattern": BRAND_COLOR_PATTERN},
        "support_url": {
            "type": ["string", "null"],
            "maxLength": 2000,
            "pattern": SUPPORT_URL_PATTERN,
        },
        "support_email": {
            "type": ["string", "null"],
            "maxLength": 254,
            "pattern": EMAIL_PATTERN,
        },
        "mail_from_name": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 100,
            "pattern": MAIL_FROM_NAME_PATTERN,
        },
    },
}

_LOGO_TYPES = ("image/png", "image/jpeg", "image/webp")
_BRANDING_OK = {"200": _json(_ref("Branding"), "The client's branding now.")}

PATHS: dict[str, Any] = {
    f"{PREFIX}/links": {
        "post": {
            "operationId": "mint",
            "summary": "Mint a link",
            "description": "Signs a short-lived token for one of the client's users and records it. A new "
            "`password_reset` link supersedes the subject's outstanding ones.",
            "parameters": [_IDEMPOTENCY_KEY_PARAM],
            "requestBody": _body(_ref("MintRequest")),
            "responses": _responses(
                {
                    "201": {
                        **_json(
                            _ref("MintedLink"),
                            "The link. Its `token` is shown only here (or, for a replayed "
                            "`Idempotency-Key`, signed afresh: the same jti and claims).",
                        ),
                        "headers": _replayed_header(),
                    }
                },
                _BODY_ERRORS,
                {
                    **_IDEMPOTENT_ERRORS,
                    "422": _problem(
                        "A field is unknown, missing, of the wrong type or out of range "
                        "(`unknown_field`, `missing_field`, `invalid_field`, …; `field` names "
                        "it), or the `Idempotency-Key` was used with another body "
                        "(`idempotency_mismatch`)."
                    ),
                    "403": _problem(
                        "Purpose or redirect URI not allowed for this client "
                        "(`purpose_not_allowed`, `redirect_uri_not_allowed`, `location_not_allowed`)."
                    ),
                    "502": _problem("The mail server refused the message (`mail_failed`)."),
                    "503": _problem(
                        "A backend (database, storage, mail) is unavailable; nothing was minted.",
                        retry_after=True,
                    ),
                },
            ),
        },
    },
    f"{PREFIX}/links/verify": {
        "post": {
            "operationId": "verify",
            "summary": "Check a token without consuming it",
            "requestBody": _body(_ref("TokenRequest")),
            "responses": _responses(
                {"200": _json(_ref("Verified"), "The token is valid and unused.")},
                _BODY_ERRORS,
                _TOKEN_ERRORS,
            ),
        },
    },
    f"{PREFIX}/links/redeem": {
        "post": {
            "operationId": "redeem",
            "summary": "Consume a token, once",
            "description": "Exactly one of any number of concurrent redemptions succeeds; every other gets `409 used`.",
            "requestBody": _body(_ref("TokenRequest")),
            "responses": _responses(
                {"200": _json(_ref("Redeemed"), "The link was consumed by this call.")},
                _BODY_ERRORS,
                _TOKEN_ERRORS,
            ),
        },
    },
    f"{PREFIX}/links/{{jti}}": {
        "parameters": [_JTI_PARAM],
        "get": {
            "operationId": "status",
            "summary": "A link's state and history",
            "responses": _responses(
                {"200": _json(_ref("LinkStatus"), "The link.")},
                {"404": _problem("No link of this client has that jti (`unknown_link`).")},
            ),
        },
        "delete": {
            "operationId": "revoke",
            "summary": "Revoke one outstanding link",
            "responses": _responses(
                {"200": _json(_ref("Revoked"), "The link's state after the call.")},
                {"404": _problem("No link of this client has that jti (`unknown_link`).")},
            ),
        },
    },
    f"{PREFIX}/subjects/{{subject}}/revoke": {
        "parameters": [_SUBJECT_PARAM],
        "post": {
            "operationId": "revoke_subject",
            "summary": "Revoke every outstanding link of a subject",
            "description": "Sign-out-everywhere and account suspension; optionally only some purposes.",
            "requestBody": _body(_ref("RevokeSubjectRequest"), required=False),
            "responses": _responses(
                {"200": _json(_ref("SubjectRevoked"), "How many links were revoked.")},
                _BODY_ERRORS,
                _NO_SUBJECT,
            ),
        },
    },
    f"{PREFIX}/subjects/{{subject}}/links": {
        "parameters": [_SUBJECT_PARAM],
        "get": {
            "operationId": "links_of",
            "summary": "A subject's links, newest first",
            "description": "What was sent to one account, to show it or revoke a link. Keyset "
            "pagination: a page is stable while new links are minted.",
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": _list_pattern(STATES)},
                    "description": "Only links in these states (comma-separated or repeated): "
                    "`issued`, `consumed`, `revoked`, `superseded`.",
                },
                {
                    "name": "purpose",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": _list_pattern(PURPOSES)},
                    "description": "Only links of these purposes (comma-separated or repeated).",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"},
                    "description": "The `next_cursor` of the previous page.",
                },
            ],
            "responses": _responses(
                {"200": _json(_ref("SubjectLinks"), "One page of the subject's links.")},
                _NO_SUBJECT,
                {
                    "422": _problem(
                        "An unknown parameter (`unknown_field`), a bad subject, state, purpose "
                        "or limit (`invalid_field`), or a cursor this API did not return "
                        "(`invalid_cursor`); `field` names it."
                    )
                },
            ),
        },
    },
    f"{PREFIX}/codes/exchange": {
        "post": {
            "operationId": "exchange_code",
            "summary": "Exchange a one-time code from a hosted sign-in or reset",
            "description": "The code lives 60 s, is bound to the client the link was minted for, and is "
            "exchanged once. When its flow was started with a `code_challenge`, only with the "
            "matching `code_verifier`: a wrong or missing verifier (or one sent for an unbound "
            "flow) is refused and spends the code.",
            "requestBody": _body(_ref("ExchangeRequest")),
            "responses": _responses(
                {
                    "200": _json(_ref("Exchanged"), "The completed link."),
                    "404": _problem(
                        "No such code for this client: unknown, malformed or another client's, "
                        "which is not spent (`invalid_code`)."
                    ),
                    "409": _problem("The code was already exchanged (`code_used`)."),
                    "410": _problem(
                        "The code has expired (`code_expired`), or was voided by a revocation of"
                        " its subject, the disabling of its client, the removal of its link's"
                        " signing key or an exchange with a wrong verifier (`code_revoked`)."
                    ),
                    "422": _problem(
                        "A field is unknown, missing, of the wrong type (`unknown_field`, "
                        "`missing_field`, `invalid_field`), or the `code_verifier` does not agree "
                        "with the flow's `code_challenge` (`code_verifier_required`, "
                        "`code_verifier_mismatch`; the code is spent); `field` names it."
                    ),
                },
                _BODY_ERRORS,
                {
                    "400": _problem("The body or the code is malformed."),
                    "401": _problem(
                        "Missing or invalid API key, or the code is not valid.", authenticate=True
                    ),
                },
            ),
        },
    },
    f"{PREFIX}/sign-ins": {
        "post": {
            "operationId": "start_sign_in",
            "summary": "Start a sign-in that completes on the device that asked",
            "description": "Mints a `magic_link` tied to a new sign-in and mails the link with an "
            "8-character code. Send the requesting browser to `wait_url`: the sign-in completes "
            "there only, by the link opened in that browser, by the link approved on another "
            "device with the match number, or by the code; it ends at `/callback?code=…` on the "
            "redirect URI, exchanged through `/codes/exchange`.",
            "parameters": [_IDEMPOTENCY_KEY_PARAM],
            "requestBody": _body(_ref("SignInRequest")),
            "responses": _responses(
                {
                    "201": {
                        **_json(_ref("SignInStarted"), "The sign-in, waiting for its browser."),
                        "headers": _replayed_header(" (no second mail)"),
                    }
                },
                _BODY_ERRORS,
                {
                    **_IDEMPOTENT_ERRORS,
                    "422": _problem(
                        "A field is unknown, missing, of the wrong type or out of range "
                        "(`unknown_field`, `missing_field`, `invalid_field`, …; `field` names "
                        "it), `redirect_uri_required`, `subject_looks_like_pii`, or the "
                        "`Idempotency-Key` was used with another body (`idempotency_mismatch`)."
                    ),
                    "403": _problem(
                        "magic_link or the redirect URI not allowed for this client "
                        "(`purpose_not_allowed`, `redirect_uri_not_allowed`)."
                    ),
                    "502": _problem("The mail server refused the message (`mail_failed`)."),
                    "503": _problem(
                        "A backend (database, mail) is unavailable; nothing was sent.",
                        retry_after=True,
                    ),
                },
            ),
        },
    },
    f"{PREFIX}/branding": {
        "get": {
            "operationId": "get_branding",
            "summary": "The client's branding",
            "responses": _responses(_BRANDING_OK),
        },
        "put": {
            "operationId": "put_branding",
            "summary": "Change the client's branding",
            "description": "Display name, brand colour, support URL and e-mail, mail sender "
            "name: every page and mail of the client's links shows them, within seconds.",
            "requestBody": _body(_ref("BrandingUpdate")),
            "responses": _responses(
                _BRANDING_OK,
                _BODY_ERRORS,
                {
                    "422": _problem(
                        "A field is unknown, of the wrong type or breaks its rule "
                        "(`unknown_field`, `invalid_field`; `field` names it), or the brand "
                        "colour's button text would be below 4.5:1 (`brand_color_low_contrast`, "
                        "`detail` names the ratio)."
                    )
                },
            ),
        },
    },
    f"{PREFIX}/branding/logo": {
        "put": {
            "operationId": "put_logo",
            "summary": "Set the client's logo",
            "description": "The image as the body: PNG, JPEG or WebP, at most 256 KiB and "
            "2048×2048 pixels. It is decoded and re-encoded (JPEG stays JPEG, the others become "
            "PNG), at most 512 pixels on its longer side, without metadata; SVG is refused.",
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in _LOGO_TYPES
                },
            },
            "responses": _responses(
                _BRANDING_OK,
                {
                    "400": _problem("The body ended before its `Content-Length` (`bad_request`)."),
                    "413": _problem("The logo is larger than 256 KiB (`logo_too_large`)."),
                    "415": _problem(
                        "Not sent as `image/png`, `image/jpeg` or `image/webp` "
                        "(`logo_unsupported_type`), or an SVG (`logo_svg_refused`)."
                    ),
                    "422": _problem(
                        "The body is not an image that decodes (`logo_unreadable`), or is larger "
                        "than 2048×2048 pixels (`logo_too_many_pixels`)."
                    ),
                },
            ),
        },
        "delete": {
            "operationId": "delete_logo",
            "summary": "Remove the client's logo",
            "responses": _responses(_BRANDING_OK),
        },
    },
    f"{PREFIX}/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["openapi", "paths"]},
                    "The OpenAPI 3.1 description of this API.",
                )
            },
        },
    },
}

#: Documented operations served only when the module that implements them is installed.
OPTIONAL_OPERATIONS: frozenset[tuple[str, str]] = frozenset({(f"{PREFIX}/codes/exchange", "post")})

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


#: A body for each call that takes one, which the API reference's "Try it out" sends as it
#: is: it fits the schema and, with a client allowed the purpose, is answered for what it
#: says (a token or code to paste in where one is needed).
REQUEST_EXAMPLES: dict[str, Any] = {
    "mint": {"purpose": "magic_link", "subject": "user-42", "ttl": 300},
    "verify": {"token": "paste the token a mint returned", "purpose": "magic_link"},
    "redeem": {"token": "paste the token a mint returned", "purpose": "magic_link"},
    "revoke_subject": {"purposes": ["magic_link", "password_reset"]},
    "exchange_code": {"code": "paste the code from the redirect"},
    "put_branding": {
        "brand_color": "#0f766e",
        "support_url": "https://example.com/help",
        "support_email": "help@example.com",
        "mail_from_name": "Example App",
    },
    "start_sign_in": {
        "subject": "user-42",
        "email": "user@example.com",
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    },
}


def document(routed: set[tuple[str, str]] | None = None, *, buckets: bool = True) -> dict[str, Any]:
    """The OpenAPI document. ``routed`` is the set of (OpenAPI path, method) the app serves;
    optional operations outside it are left out. ``buckets``: the storage is S3, where a
    download may name a bucket (local storage refuses one, so the document does too)."""
    paths: dict[str, Any] = {}
    for path, item in copy.deepcopy(PATHS).items():
        for method in METHODS:
            if (
                method in item
                and (path, method) in OPTIONAL_OPERATIONS
                and (routed is None or (path, method) not in routed)
            ):
                del item[method]
        for method in METHODS:
            op = item.get(method)
            if op is not None and "requestBody" in op and op["operationId"] in REQUEST_EXAMPLES:
                media = op["requestBody"]["content"]["application/json"]
                media["example"] = copy.deepcopy(REQUEST_EXAMPLES[op["operationId"]])
        if any(m in item for m in METHODS):
            paths[path] = item
    schemas = copy.deepcopy(SCHEMAS)
    if not buckets:
        del schemas["MintRequest"]["properties"]["download"]["properties"]["bucket"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "linksvc internal API",
            "version": "1",
            "summary": "Single-use, short-lived signed links: mint, verify, redeem, revoke.",
            "description": "Clients authenticate with `Authorization: Bearer <api key>`. Every error is "
            "`application/problem+json` (RFC 9457) with a stable `code`. Tokens and API keys "
            "are never echoed in an answer.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key shown once when the client was created.",
                }
            },
        },
    }


def openapi_path(rule: str) -> str:
    """A Werkzeug rule (``/api/v1/links/<jti>``) as an OpenAPI path (``/api/v1/links/{jti}``)."""
    import re

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def routed_operations(app: Flask) -> set[tuple[str, str]]:
    """Every (OpenAPI path, method) the app serves under ``/api/v1``, HEAD and OPTIONS aside
    (and the HTML reference of :mod:`linksvc.web.docs`, which is about the API, not part of it)."""
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("docs."):
            continue
        if rule.rule == PREFIX or rule.rule.startswith(PREFIX + "/"):
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    ops.add((openapi_path(rule.rule), method.lower()))
    return ops


def _serve() -> Response:
    wired = services()
    cached = wired.openapi
    if cached is None:
        cached = wired.openapi = document(
            routed_operations(current_app), buckets=wired.storage.kind == "s3"
        )
    return jsonify(cached)


def init_app(app: Flask) -> None:
    # The endpoint is named "api.openapi" so that the api blueprint's hooks and error
    # handlers apply and its authentication skips it: the description is public.
    app.add_url_rule(
        f"{PREFIX}/openapi.json", endpoint="api.openapi", view_func=_serve, methods=["GET"]
    )
