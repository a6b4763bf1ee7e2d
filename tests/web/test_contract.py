"""The Python client's models and the API's answer schemas cannot drift apart.

The schemas are the ones the OpenAPI document serves (generated from linksvc/web/contract.py's
models, or still hand-written). For each answer, the client's model is built from a body
that has every documented member, each member recording how it was read: the client must
read every documented member and no other, may require (``body[name]``) only a member the
schema requires, and its dataclass fields must be the members' names (or the renames
listed here) plus the fields it adds of its own. A client or schema changed on one side only
fails here; deliberately drifted schemas show the checks can fail.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linksvc_client as lc
from linksvc.web import contract, openapi


class Recorded(dict[str, Any]):
    """A JSON object that notes which members were read, and how."""

    def __init__(self, schema: dict[str, Any], *args: Any) -> None:
        super().__init__(*args)
        self.schema = schema
        self.required_reads: set[str] = set()
        self.optional_reads: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.required_reads.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.optional_reads.add(key)
        return super().get(key, default)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return openapi.SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def example(schema: dict[str, Any], objects: list[Recorded]) -> Any:
    """A value the schema allows, every object member present (objects recorded)."""
    schema = _resolve(schema)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return next(v for v in schema["enum"] if v is not None)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object" and "properties" in schema:
        obj = Recorded(schema)
        objects.append(obj)
        for name, sub in schema["properties"].items():
            dict.__setitem__(obj, name, example(sub, objects))
        return obj
    if kind == "array":
        return [example(schema.get("items", {}), objects)]
    if kind == "integer":
        return 1_700_000_000 if schema.get("minimum") is None else schema["minimum"]
    if kind == "boolean":
        return True
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-12-01T10:00:00Z"
        return "x"
    return {"free": "form"}  # no type: free-form JSON (``data``)


#: (the client's model, how it is built from an answer body, the answer's schema name,
#:  {schema member: the client's field}, the fields the client adds of its own)
CASES: list[tuple[type, Callable[[Any], Any], str, dict[str, str], set[str]]] = [
    (
        lc.MintedLink,
        lc.MintedLink.from_api,
        "MintedLink",
        {},
        {"replayed", "idempotency_key", "code_verifier"},
    ),
    (
        lc.Claims,
        lc.Claims.from_jwt,
        "Claims",
        {
            "iss": "issuer",
            "aud": "audience",
            "sub": "subject",
            "pur": "purpose",
            "iat": "issued_at",
            "nbf": "not_before",
            "exp": "expires_at",
        },
        set(),
    ),
    (lc.VerifiedLink, lc.VerifiedLink.from_api, "Verified", {"valid": ""}, set()),
    (lc.RedeemedLink, lc.RedeemedLink.from_api, "Redeemed", {}, set()),
    (lc.ExchangedCode, lc.ExchangedCode.from_api, "Exchanged", {}, set()),
    (lc.SignIn, lc.SignIn.from_api, "SignInStarted", {}, {"code_verifier"}),
    (lc.LinkStatus, lc.LinkStatus.from_api, "LinkStatus", {}, set()),
    (lc.Revoked, lc.Revoked.from_api, "Revoked", {}, set()),
    (lc.LinkPage, lc.LinkPage.from_api, "SubjectLinks", {}, set()),
    (lc.Branding, lc.Branding.from_api, "Branding", {}, set()),
]


def drift(
    model: type,
    build: Callable[[Any], Any],
    schema: dict[str, Any],
    renames: dict[str, str],
    own: set[str],
) -> Iterator[str]:
    """What does not agree between the client's ``model`` and the answer's ``schema``."""
    objects: list[Recorded] = []
    body = example(schema, objects)
    build(body)
    for obj in objects:
        props = set(obj.schema["properties"])
        required = set(obj.schema.get("required", ()))
        read = obj.required_reads | obj.optional_reads
        where = obj.schema.get("title", "") or sorted(props)[:3]
        for name in sorted(props - read):
            if renames.get(name) != "" or obj is not objects[0]:
                yield f"{model.__name__}: documented member {name!r} ({where}) is never read"
        for name in sorted(read - props):
            yield f"{model.__name__}: reads {name!r}, which the schema does not document"
        for name in sorted(obj.required_reads - required):
            yield f"{model.__name__}: requires {name!r}, which the schema leaves optional"
    fields = {f.name for f in dataclasses.fields(model)}
    expected = {renames.get(p, p) for p in schema["properties"]} - {""} | own
    for name in sorted(fields - expected):
        yield f"{model.__name__}: field {name!r} is neither a documented member nor its own"
    for name in sorted(expected - fields):
        yield f"{model.__name__}: no field for documented member {name!r}"


@pytest.mark.parametrize("case", CASES, ids=[c[2] for c in CASES])
def test_client_model_matches_schema(case) -> None:
    model, build, name, renames, own = case
    assert list(drift(model, build, openapi.SCHEMAS[name], renames, own)) == []


#: Answers the client gives no model of, and why.
NO_CLIENT_MODEL = {"SubjectRevoked": "revoke_subject returns the count alone"}


def test_every_answer_model_is_checked() -> None:
    generated_answers = {m.__name__ for m in contract.MODELS if issubclass(m, contract.Answer)}
    assert generated_answers - set(NO_CLIENT_MODEL) <= {c[2] for c in CASES}


def test_drift_is_found() -> None:
    schema = copy.deepcopy(openapi.SCHEMAS["Redeemed"])
    # A member the client does not read, one it reads that is gone, one it requires made optional.
    schema["properties"]["redeemed_by"] = {"type": "string"}
    del schema["properties"]["data"]
    schema["required"].remove("jti")
    found = list(drift(lc.RedeemedLink, lc.RedeemedLink.from_api, schema, {}, set()))
    assert any("'redeemed_by'" in f and "never read" in f for f in found), found
    assert any("reads 'data'" in f for f in found), found
    assert any("requires 'jti'" in f for f in found), found
    assert any("field 'data'" in f for f in found), found


# -- the decoder's two paths agree -------------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.parametrize("model", [m for m in contract.MODELS if issubclass(m, contract.Body)])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_agrees_with_the_reference(model, data) -> None:
    """Whatever msgspec accepts, the reference path accepts with the same values; whatever
    the reference refuses, msgspec leaves to it (so the refusal is the reference's)."""
    decoder = contract.Decoder(model)
    names = st.sampled_from([*decoder.names, "bogus"])
    members = data.draw(st.lists(st.tuples(names, _json_values), max_size=6))
    raw = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    if len({k for k, _ in members}) == len(members) and data.draw(st.booleans()):
        # The same object written by the standard library: non-ASCII as \u escapes or not.
        raw = json.dumps(dict(members), ensure_ascii=data.draw(st.booleans()))
    body = raw.encode("utf-8", "surrogatepass")
    fast = decoder.fast(body)
    try:
        reference: Any = model(**contract.check_fields(contract.parse_object(body), decoder.spec))
    except contract.BadRequest as exc:
        assert fast is None, (raw, exc.code)
        return
    if fast is not None:
        assert contract.as_dict(fast) == contract.as_dict(reference), raw
