"""The API's typed contract: the request and answer bodies of the hot calls, as msgspec Structs.

One definition per body, from which :mod:`linksvc.web.api` decodes and validates requests and
encodes answers, and :mod:`linksvc.web.openapi` generates the schemas it documents.

Decoding is two-tier, so that every refusal stays exactly what it was (the same status,
``code`` and message, in the same order):

- **the fast path**: msgspec decodes the bytes straight into the model; it runs for the
  ordinary body and is several times cheaper than the checks it replaced (bench/contract.py);
- **the reference path**: whenever msgspec refuses the body, or it holds what msgspec cannot
  judge as the API always has (a member twice — msgspec keeps the last —, a backslash escape
  that might spell a member's name, a free-form member such as ``download`` or ``data``,
  whose numbers and duplicate members the standard library judges), the body is decoded by
  the standard library and checked member by member against the model's fields, which names
  the first fault as the API always did. A body both accept decodes to the same values.

Rules the library does not express the way the API answers them (a purpose among the
configured ones, a PKCE verifier's form, a non-empty purpose list) stay explicit checks in
:mod:`linksvc.web.api`, after decoding, in the order they always ran.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from linksvc.formats import strict_json_decoder
from linksvc.i18n import locales

# -- the wire's vocabulary: patterns, enums and shared field schemas -------------------

PURPOSES = ["magic_link", "password_reset", "download"]

_STR = {"type": "string"}
_DATETIME = {"type": "string", "format": "date-time"}
_NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_JTI = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{22}$",
    "description": "The link's id: 128 random bits, base64url.",
}
STATES = ["issued", "consumed", "revoked", "superseded"]
_STATE = {"type": "string", "enum": STATES}


def _list_pattern(values: list[str]) -> str:
    """A comma-separated list of ``values``."""
    one = "(" + "|".join(values) + ")"
    return f"^{one}(,{one})*$"


_PURPOSE = {"type": "string", "enum": PURPOSES}
#: What end users read of a link, in which language and time zone (linksvc.i18n.locales).
_LOCALE = {
    "type": ["string", "null"],
    "maxLength": locales.MAX_TAG,
    "pattern": locales.LANGTAG_PATTERN,
    "description": "The language of the link's pages and mail, a BCP 47 tag (`de`, `pt-BR`, "
    "`zh-Hans`). A tag linksvc does not ship falls back to its language (`de-AT` → `de`, "
    "`pt` → `pt-BR`, `zh-CN` → `zh-Hans`), else the client's default locale, else English; "
    "a malformed tag answers 422 `invalid_field`. Kept on the ledger row, never in the token. "
    "Ships: " + ", ".join(f"`{locales.to_bcp47(loc)}`" for loc in locales.LOCALES) + ".",
    "examples": ["de"],
}
_TIMEZONE = {
    "type": ["string", "null"],
    "enum": [*locales.timezones(), None],
    "description": "The IANA time zone in which its pages and mail show times "
    "(`Europe/Berlin`); without one, a relative time and UTC. Kept on the ledger row.",
    "examples": ["Europe/Berlin"],
}

# What the server accepts, as patterns, so that a body the schema allows is not refused for
# its shape (tests/web/test_fuzz.py holds the two together).

#: A subject (linksvc.links.service.SUBJECT_RE): printable ASCII without spaces, not starting with '/'.
SUBJECT_PATTERN = "^(?!/)[\\x21-\\x7e]{1,255}$"
#: A subject in a path: the same, and not '.' or '..', which HTTP clients remove as dot
#: segments before sending (such a subject is reached percent-encoded, `%2E`).
SUBJECT_PATH_PATTERN = "^(?!/)(?!\\.\\.?$)[\\x21-\\x7e]{1,255}$"
#: An address linksvc sends to (linksvc.mail.delivery): a plain `name@example.com`, at most 254.
EMAIL_PATTERN = "^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$"
#: Unicode format characters (category Cf, Unicode 14 as Python 3.11 has it): bidi
#: controls, zero-width characters, BOM. A file name may not hold them (they reorder or hide
#: what the confirmation page shows); tests/web/test_openapi.py checks the list.
FORMAT_CHARACTERS = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
_NAME_CHAR = f"[^\\x00-\\x1f\\x7f-\\x9f/\\\\{FORMAT_CHARACTERS}]"
#: Characters Python's str.strip() removes: not at either end of a file name.
_SPACES = "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NAME_EDGE = f"[^\\x00-\\x1f\\x7f-\\x9f/\\\\{_SPACES}{FORMAT_CHARACTERS}]"
#: A file name (linksvc.downloads.storage.check_filename): 1-255 characters, no slash, backslash,
#: control or format character, no space at either end, not '.' or '..'.
FILENAME_PATTERN = f"^(?!\\.\\.?$){_NAME_EDGE}(?:{_NAME_CHAR}{{0,253}}{_NAME_EDGE})?$"
#: A storage key (linksvc.downloads.storage.check_key): a relative path of such names (its last one is
#: the default file name), not starting with a drive letter.
KEY_PATTERN = (
    f"^(?![A-Za-z]:)(?:(?!\\.\\.?/){_NAME_EDGE}(?:{_NAME_CHAR}*{_NAME_EDGE})?/)*"
    f"(?!\\.\\.?$){_NAME_EDGE}(?:{_NAME_CHAR}*{_NAME_EDGE})?$"
)
_MEDIA_TOKEN = "[A-Za-z0-9!#$&^_.+-]+"
#: A media type (linksvc.downloads.storage.check_content_type), parameters allowed.
MEDIA_TYPE_PATTERN = (
    f"^{_MEDIA_TOKEN}/{_MEDIA_TOKEN}"
    f'(\\s*;\\s*{_MEDIA_TOKEN}=({_MEDIA_TOKEN}|"[^"\\\\\\x00-\\x1f\\x7f]*"))*$'
)
#: An S3 bucket name (linksvc.downloads.views): 3-63 of a-z, 0-9, '.', '-', no '..'.
BUCKET_PATTERN = "^(?!.*\\.\\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


# -- what a refused body answers ---------------------------------------------------------


class BadRequest(Exception):
    """A 4xx answer for the request: ``status``, problem ``code``, ``detail`` and ``field``."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field


#: The strict decoder (linksvc.formats): a member named twice and NaN/Infinity are refused.
DECODER = strict_json_decoder()
#: The answers' JSON: compact, ASCII (non-ASCII escaped), as ``jsonify`` writes it.
ENCODER = json.JSONEncoder(separators=(",", ":"))


def invalid_json() -> BadRequest:
    return BadRequest(
        400, "invalid_json", "The body is not valid UTF-8 JSON (duplicate members are refused)."
    )


def parse_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, by the standard library: 400 ``invalid_json`` or
    ``invalid_body``."""
    try:
        body = DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid_json() from None
    if not isinstance(body, dict):
        raise BadRequest(400, "invalid_body", "The body must be a JSON object.")
    return body


_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "dict": "object",
    "bool": "boolean",
    "list": "array",
}


def _type_ok(value: Any, kind: type) -> bool:
    if isinstance(value, bool) and kind is int:
        return False
    return isinstance(value, kind)


def check_fields(body: Mapping[str, Any], spec: Mapping[str, tuple[Any, bool]]) -> dict[str, Any]:
    """Check ``body`` against ``spec`` (name → (type, required)); unknown or mistyped → 422.

    Unknown members first (in the body's order), then each field in the model's order:
    ``null`` is absence, a JSON integer written ``60.0`` is the integer 60.
    """
    for name in body:
        if name not in spec:
            raise BadRequest(422, "unknown_field", f"Unknown field {name!r}.", field=name)
    out: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        value = body.get(name)
        if value is None:
            if required:
                raise BadRequest(422, "missing_field", f"Field {name!r} is required.", field=name)
            out[name] = None
            continue
        if kind is Any:
            out[name] = value
            continue
        if kind is int and isinstance(value, float) and value.is_integer():
            # JSON (and the schema's "integer") does not tell 60 from 60.0; a float with a
            # fraction is still refused below.
            out[name] = int(value)
            continue
        if not _type_ok(value, kind):
            tname = _TYPE_NAMES.get(kind.__name__, kind.__name__)
            raise BadRequest(422, "invalid_field", f"Field {name!r} must be a {tname}.", field=name)
        out[name] = value
    return out


# -- the models --------------------------------------------------------------------------
#
# Each field's type is what the fast path decodes; its ``doc(...)`` is what the OpenAPI
# schema says beyond the type (patterns, limits, enums, prose). Those are documented, not
# enforced here: the service checks them and names the fault (linksvc.links.service, .storage, …).


def doc(**schema: Any) -> msgspec.Meta:
    """A field's schema beyond its type: documented in the OpenAPI schema, not enforced."""
    return msgspec.Meta(extra_json_schema=schema)


def _no_type(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "type"}


Purpose = Annotated[str, doc(enum=PURPOSES)]
State = Annotated[str, doc(enum=STATES)]
Jti = Annotated[str, doc(**_no_type(_JTI))]
#: Never null where it is used; ``str | None`` for the type of :func:`linksvc.web.api.iso`.
DateTime = Annotated[str | None, doc(type="string", format="date-time")]
Subject = Annotated[
    str,
    doc(
        pattern=SUBJECT_PATTERN,
        description="The application's opaque user id (not an e-mail address).",
    ),
]
CodeChallenge = Annotated[
    str | None,
    doc(
        pattern="^[A-Za-z0-9_-]{43}$",
        description="Bind the flow to the browser that asks, as PKCE does (RFC 7636, "
        "S256): BASE64URL(SHA-256(code_verifier)) of a random `code_verifier` kept in that "
        "browser's session. The one-time code is then exchanged only with that verifier. "
        "Sign-in and reset links only; kept on the link's row, never in the token.",
    ),
]
#: A time that may not have happened yet (a link still ``issued`` has no state change).
NullableDateTime = Annotated[str | None, doc(format="date-time")]
Locale = Annotated[str | None, doc(**_LOCALE)]
Timezone = Annotated[str | None, doc(**_TIMEZONE)]

DOWNLOAD_SCHEMA: dict[str, Any] = {
    "description": "For download links (and only for them): the stored file.",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {
        "key": {
            "type": "string",
            "maxLength": 255,
            "pattern": KEY_PATTERN,
            "description": "The object's key: a relative path whose segments are "
            "file names as `filename` says (no `.`, `..` or empty segment), not "
            "starting with a drive letter.",
        },
        "bucket": {
            "type": "string",
            "pattern": BUCKET_PATTERN,
            "description": "S3 storage only: another bucket than the configured one.",
        },
        "filename": {
            "type": "string",
            "pattern": FILENAME_PATTERN,
            "description": "The name the browser saves (default: the key's last "
            "segment); any Unicode, no slash or control or format character.",
        },
        "content_type": {
            "type": "string",
            "maxLength": 200,
            "pattern": MEDIA_TYPE_PATTERN,
        },
    },
}


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: a JSON object of exactly these members; ``null`` is absence."""

    #: Free-form members: a body that gives one is decoded by the reference path (the
    #: standard library's numbers and its refusal of duplicate members, at any depth).
    json_members: ClassVar[frozenset[str]] = frozenset()


class MintRequest(Body):
    # POST /links

    json_members: ClassVar[frozenset[str]] = frozenset({"download", "data"})

    purpose: Purpose
    subject: Subject
    ttl: Annotated[
        int | None,
        doc(
            minimum=1,
            maximum=900,
            description="Seconds; default 300, at most the purpose's ceiling.",
        ),
    ] = None
    redirect_uri: Annotated[
        str | None,
        doc(description="One of the client's registered redirect URIs (exact match)."),
    ] = None
    download: Annotated[dict[str, Any] | None, doc(**DOWNLOAD_SCHEMA)] = None
    data: Annotated[
        Any,
        doc(
            description="Small JSON returned at redemption (at most `LINKSVC_MAX_DATA_BYTES`; "
            "finite numbers and valid Unicode only)."
        ),
    ] = None
    email: Annotated[
        str | None,
        doc(
            maxLength=254,
            pattern=EMAIL_PATTERN,
            description="Send the link to this address. The links it supersedes stay "
            "valid until the mail has been accepted (a failed mail supersedes nothing).",
        ),
    ] = None
    confirm: Annotated[
        bool | None,
        doc(
            description="Download links only: show a confirmation page first "
            "(default: true when `email` is given, else false)."
        ),
    ] = None
    code_challenge: CodeChallenge = None
    locale: Locale = None
    timezone: Timezone = None


class TokenRequest(Body):
    # POST /links/verify and POST /links/redeem

    token: str
    purpose: Purpose


class RevokeSubjectRequest(Body):
    # POST /subjects/{subject}/revoke (the body may be left out)

    purposes: Annotated[list[str] | None, doc(minItems=1, items=_PURPOSE)] = None


class ExchangeRequest(Body):
    # POST /codes/exchange

    code: Annotated[str, doc(description="The one-time code from the redirect.")]
    code_verifier: Annotated[
        str | None,
        doc(
            pattern="^[A-Za-z0-9._~-]{43,128}$",
            description="The verifier whose `code_challenge` started the flow, from the "
            "session of the browser that the code came back to. Required when the flow was "
            "bound; refused when it was not.",
        ),
    ] = None


class SignInRequest(Body, kw_only=True):
    # POST /sign-ins

    subject: Subject
    email: Annotated[
        str,
        doc(
            maxLength=254,
            pattern=EMAIL_PATTERN,
            description="Where the link and code are sent. Used to send and kept nowhere.",
        ),
    ]
    redirect_uri: Annotated[
        str | None,
        doc(
            description="One of the client's registered redirect URIs (exact match); "
            "may be left out when the client has exactly one."
        ),
    ] = None
    ip: Annotated[
        str,
        doc(
            anyOf=[{"format": "ipv4"}, {"format": "ipv6"}],
            maxLength=45,
            description="The requesting browser's IP address (IPv4 or IPv6).",
        ),
    ]
    user_agent: Annotated[
        str,
        doc(
            maxLength=1024,
            description="The requesting browser's User-Agent; the approval page names "
            'it in words ("Firefox on Linux").',
        ),
    ]
    code_challenge: CodeChallenge = None
    locale: Annotated[
        str | None,
        doc(
            **{
                **_LOCALE,
                "description": "The language of the waiting and approval pages and the mail: "
                "the requesting browser's Accept-Language best match is a good choice. "
                + str(_LOCALE["description"]).split(". ", 1)[1],
            }
        ),
    ] = None
    timezone: Timezone = None


class Answer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An answer body: exactly these members (those ``UNSET`` are left out)."""


class MintedLink(Answer):
    url: Annotated[
        str,
        doc(
            format="uri",
            description="The link to send, in the client's link format: the JWT in the "
            "path (`<base>/l/<token>`), or a short link `<base>/l/<handle>` (26 "
            "case-insensitive characters; `/d/` for downloads). Both name the same link.",
        ),
    ]
    token: Annotated[str, doc(description="The compact JWS; shown once, never stored by linksvc.")]
    jti: Jti
    purpose: Purpose
    subject: str
    issued_at: DateTime
    expires_at: DateTime
    superseded: Annotated[
        int,
        doc(
            minimum=0,
            description="How many of the subject's outstanding links this one superseded.",
        ),
    ]
    emailed: bool | msgspec.UnsetType = msgspec.UNSET


class Claims(Answer):
    iss: str
    aud: str
    sub: str
    pur: Purpose
    jti: Jti
    iat: int
    nbf: int
    exp: int


class Verified(Answer):
    valid: Annotated[bool, doc(const=True)]
    jti: Jti
    purpose: Purpose
    subject: str
    state: State
    issued_at: DateTime
    expires_at: DateTime
    claims: Claims


class Redeemed(Answer):
    subject: str
    purpose: Purpose
    jti: Jti
    data: Annotated[Any, doc(description="The `data` given at mint time, or null.")]
    redeemed_at: DateTime


class Exchanged(Answer, forbid_unknown_fields=False):
    subject: str
    purpose: Purpose
    jti: Jti
    data: Any


class SubjectRevoked(Answer):
    subject: str
    revoked: Annotated[int, doc(minimum=0)]


class LinkEvent(Answer):
    """One step of a link's history."""

    at: DateTime
    event: str
    reason: str | None
    via: str | None


class LinkStatus(Answer):
    jti: Jti
    purpose: Purpose
    subject: str
    state: State
    issued_at: DateTime
    expires_at: DateTime
    state_changed_at: NullableDateTime
    state_via: str | None
    locale: Annotated[
        str | None,
        doc(
            description="The shipped locale its pages and mail use (BCP 47), or null "
            "when minted without one (then the client's default, else the browser's)."
        ),
    ]
    timezone: str | None
    events: list[LinkEvent]


class Revoked(Answer):
    jti: Jti
    state: State
    revoked: Annotated[
        int,
        doc(
            minimum=0,
            maximum=1,
            description="1 if this call revoked it, 0 if it had already left `issued`.",
        ),
    ]


class LinkSummary(Answer):
    """A link as the subject's inventory lists it."""

    jti: Jti
    purpose: Purpose
    state: State
    issued_at: DateTime
    expires_at: DateTime
    state_changed_at: NullableDateTime
    state_via: str | None


class SubjectLinks(Answer):
    subject: str
    links: Annotated[list[LinkSummary], doc(description="Newest first (by `issued_at`).")]
    next_cursor: Annotated[
        str | None,
        doc(description="Pass as `cursor` for the next page; null on the last page."),
    ]


class SignInStarted(Answer):
    id: Annotated[str, doc(pattern=_JTI["pattern"])]
    wait_url: Annotated[
        str,
        doc(format="uri", description="Send the requesting browser here: the waiting page."),
    ]
    jti: Annotated[
        str,
        doc(
            pattern=_JTI["pattern"],
            description="The sign-in's magic link; its history has every step.",
        ),
    ]
    subject: str
    expires_at: DateTime


#: The models the OpenAPI document's components are generated from, by name.
MODELS: tuple[type[msgspec.Struct], ...] = (
    MintRequest,
    MintedLink,
    TokenRequest,
    Claims,
    Verified,
    Redeemed,
    LinkStatus,
    Revoked,
    RevokeSubjectRequest,
    SubjectRevoked,
    SubjectLinks,
    ExchangeRequest,
    Exchanged,
    SignInRequest,
    SignInStarted,
)


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's generated schema in the document's own form: ``X | None`` as
    ``type: [X, "null"]`` and no ``default: null`` (absence and null mean the same)."""
    out = dict(schema)
    if out.get("default", 0) is None:
        del out["default"]
    union = out.get("anyOf")
    if (
        isinstance(union, list)
        and len(union) == 2
        and union[1] == {"type": "null"}
        and isinstance(union[0].get("type"), str)
    ):
        del out["anyOf"]
        out = {**union[0], "type": [union[0]["type"], "null"], **out}
    return out


def schemas() -> dict[str, dict[str, Any]]:
    """The OpenAPI component schemas of :data:`MODELS`, by name (without their titles)."""
    _, components = msgspec.json.schema_components(
        MODELS, ref_template="#/components/schemas/{name}"
    )
    out: dict[str, dict[str, Any]] = {}
    for name, component in components.items():
        component = {k: v for k, v in component.items() if k not in ("title", "description")}
        if not component.get("required", True):
            del component["required"]  # a body of optional members only
        component["properties"] = {k: _tidy(v) for k, v in component.get("properties", {}).items()}
        out[name] = component
    return out


# -- decoding ----------------------------------------------------------------------------

B = TypeVar("B", bound=Body)

_KINDS: dict[type[msgspec.inspect.Type], Any] = {
    msgspec.inspect.StrType: str,
    msgspec.inspect.IntType: int,
    msgspec.inspect.BoolType: bool,
    msgspec.inspect.DictType: dict,
    msgspec.inspect.ListType: list,
    msgspec.inspect.AnyType: Any,
}


def _kind(t: msgspec.inspect.Type) -> Any:
    """The Python type a member's value must have (for :func:`check_fields`)."""
    if isinstance(t, msgspec.inspect.Metadata):
        return _kind(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        (inner,) = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
        return _kind(inner)
    if isinstance(t, msgspec.inspect.LiteralType):
        return type(t.values[0])
    return _KINDS[type(t)]


class Decoder(Generic[B]):
    """Decodes and validates a request body of ``model`` (see the module's docstring)."""

    def __init__(self, model: type[B]) -> None:
        self.model = model
        info = msgspec.inspect.type_info(model)
        assert isinstance(info, msgspec.inspect.StructType)
        #: name → (type, required): the reference path's checks, in the model's order.
        self.spec: dict[str, tuple[Any, bool]] = {
            f.name: (_kind(f.type), f.required) for f in info.fields
        }
        self.names = tuple(self.spec)
        self.json_members = tuple(model.json_members)
        self._msgspec = msgspec.json.Decoder(model)
        names = b"|".join(re.escape(n.encode()) for n in self.names)
        self._member = re.compile(b'"(?:' + names + b')"')

    def fast(self, raw: bytes) -> B | None:
        """The body as the model, or None when the reference path must decide."""
        if b"\\" in raw:
            return None
        found = self._member.findall(raw)
        if len(set(found)) != len(found):
            return None
        try:
            body = self._msgspec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        for name in self.json_members:
            if getattr(body, name) is not None:
                return None
        return body

    def decode(self, raw: bytes) -> B:
        """``raw`` (a non-empty body) as the model, or the BadRequest the API answers."""
        body = self.fast(raw)
        if body is None:
            return self.model(**check_fields(parse_object(raw), self.spec))
        return body

    def validate(self, body: Mapping[str, Any]) -> B:
        """An already decoded body (``{}`` for none) as the model, or its BadRequest."""
        return self.model(**check_fields(body, self.spec))


def as_dict(model: msgspec.Struct) -> dict[str, Any]:
    """The members of ``model`` by name, in its order (the idempotency hash's input)."""
    return msgspec.structs.asdict(model)


# -- encoding ----------------------------------------------------------------------------

_ENCODE = msgspec.json.Encoder().encode


def encode(answer: Answer) -> bytes:
    """``answer`` as the API's JSON: compact, members in order, ``UNSET`` ones left out,
    non-ASCII escaped as ``\\uXXXX`` (the standard library's form, which msgspec does not
    write: such an answer, and one with free-form ``data``, is encoded by it)."""
    if not isinstance(answer, (Redeemed, Exchanged)):
        out = _ENCODE(answer)
        if out.isascii():
            return out
    return ENCODER.encode(msgspec.to_builtins(answer)).encode("ascii")
