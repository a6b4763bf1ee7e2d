"""The served OpenAPI document is valid OpenAPI 3.1 and true to the running API.

Three checks keep it true: every routed ``/api/v1`` operation is documented and every
documented one is routed; every answer of a scripted session — each operation's success
and its errors — has a documented status, content type and a body that validates against
the documented schema; and deliberately wrong documents make those checks fail.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from flask import Flask
from openapi_spec_validator import OpenAPIV31SpecValidator
from werkzeug.exceptions import HTTPException

from linksvc.services import services
from linksvc.web import contract, openapi
from tests.support.apps import REDIRECT, ApiUser

# -- the checkers ---------------------------------------------------------------------


def route_problems(doc: dict[str, Any], app: Flask) -> list[str]:
    """Differences between the app's /api/v1 routes and the document's operations."""
    routed = openapi.routed_operations(app)
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in openapi.METHODS
    }
    return [
        f"routed but not documented: {m.upper()} {p}" for p, m in sorted(routed - documented)
    ] + [f"documented but not routed: {m.upper()} {p}" for p, m in sorted(documented - routed)]


def _schema_validator(
    doc: dict[str, Any], schema: dict[str, Any]
) -> jsonschema.Draft202012Validator:
    # Local "#/components/..." references resolve against a root that carries the components.
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    }
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def response_problems(
    doc: dict[str, Any], path: str, method: str, status: int, content_type: str, body: Any
) -> list[str]:
    """Why one answer does not conform to the document (empty when it does)."""
    where = f"{method.upper()} {path} → {status}"
    operation = doc["paths"].get(path, {}).get(method)
    if operation is None and status in (404, 405):
        # No operation there: the answer is still a problem document.
        operation = {
            "responses": {
                str(status): {
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }
                }
            }
        }
    if operation is None:
        return [f"{where}: operation not documented"]
    spec = operation["responses"].get(str(status)) or operation["responses"].get("default")
    if spec is None:
        return [f"{where}: status not documented"]
    content = spec.get("content", {})
    if content_type not in content:
        return [
            f"{where}: content type {content_type} not documented (documented: {sorted(content)})"
        ]
    errors = _schema_validator(doc, content[content_type].get("schema", {})).iter_errors(body)
    return [f"{where}: {e.message} at {list(e.absolute_path)}" for e in errors]


def request_problems(doc: dict[str, Any], path: str, method: str, body: Any) -> list[str]:
    """Why a request body the API *accepted* does not match the documented request schema."""
    operation = doc["paths"][path][method]
    if body is None:
        return (
            []
            if not operation.get("requestBody", {}).get("required")
            else [f"{method} {path}: body required"]
        )
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return [
        f"{method.upper()} {path} request: {e.message}"
        for e in _schema_validator(doc, schema).iter_errors(body)
    ]


class Recorder:
    """Makes API calls through the Flask test client and keeps every exchange."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.http = app.test_client()
        self.adapter = app.url_map.bind("localhost")
        self.exchanges: list[tuple[str, str, int, str, Any, Any]] = []

    def call(
        self,
        method: str,
        url: str,
        *,
        key: str | None = None,
        json: Any = None,
        data: Any = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        resp = self.http.open(
            url, method=method, json=json, data=data, headers=headers, content_type=content_type
        )
        try:
            rule, _ = self.adapter.match(url.split("?")[0], method=method, return_rule=True)
            path = openapi.openapi_path(rule.rule)
        except HTTPException:
            path = url
        self.exchanges.append(
            (
                path,
                method.lower(),
                resp.status_code,
                resp.mimetype,
                resp.get_json(silent=True),
                json if 200 <= resp.status_code < 300 else None,
            )
        )
        return resp

    def statuses(self) -> set[tuple[str, str, int]]:
        return {(p, m, s) for p, m, s, *_ in self.exchanges}

    def problems(self, doc: dict[str, Any]) -> list[str]:
        out = []
        for path, method, status, ctype, body, sent in self.exchanges:
            out += response_problems(doc, path, method, status, ctype, body)
            if sent is not None:
                out += request_problems(doc, path, method, sent)
        return out


def _codes_routed(app: Flask) -> bool:
    return (f"{openapi.PREFIX}/codes/exchange", "post") in openapi.routed_operations(app)


def _sign_in_code(http: Any, url: str) -> str:
    """Press the button of a sign-in link like a browser does; return the code it hands over."""
    page = http.get(url)
    assert page.status_code == 200
    csrf = re.search(
        r'name="csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf"',
        page.get_data(as_text=True),
    )
    assert csrf, "the confirmation page has a csrf field"
    resp = http.post(url, data={"csrf": csrf.group(1) or csrf.group(2)})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:300]
    return re.search(r"[?&]code=([^&]+)", resp.headers["Location"]).group(1)


def scripted_session(app: Flask, api: ApiUser, other: ApiUser) -> Recorder:
    """Every operation once with success and with each error the test can provoke."""
    rec = Recorder(app)
    key, v1 = api.api_key, openapi.PREFIX
    rec.call("GET", f"{v1}/openapi.json")
    # mint
    minted = rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        json={"purpose": "magic_link", "subject": "user-1", "data": {"cart": [1, 2]}},
    ).get_json()
    rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        json={
            "purpose": "password_reset",
            "subject": "user-1",
            "ttl": 60,
            "redirect_uri": REDIRECT,
        },
    )
    rec.call(
        "POST", f"{v1}/links", key=key, json={"purpose": "password_reset", "subject": "user-1"}
    )  # supersedes
    rec.call("POST", f"{v1}/links", json={"purpose": "magic_link", "subject": "u"})  # 401 no key
    rec.call(
        "POST", f"{v1}/links", key="lsk_wrong", json={"purpose": "magic_link", "subject": "u"}
    )  # 401
    rec.call("POST", f"{v1}/links", key=key, data=b"{", content_type="application/json")  # 400
    rec.call(
        "POST", f"{v1}/links", key=key, data=b'{"a":1,"a":2}', content_type="application/json"
    )  # 400 dup
    rec.call("POST", f"{v1}/links", key=key, data=b"purpose=x", content_type="text/plain")  # 415
    rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        data=b"{" + b" " * 70000 + b"}",
        content_type="application/json",
    )  # 413
    rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        json={"purpose": "magic_link", "subject": "u", "admin": True},
    )  # 422
    rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        json={"purpose": "magic_link", "subject": "u", "ttl": 10_000},
    )  # 422
    rec.call(
        "POST",
        f"{v1}/links",
        key=key,
        json={"purpose": "magic_link", "subject": "u", "redirect_uri": "https://evil.example/cb"},
    )  # 403
    rec.call("GET", f"{v1}/links", key=key)  # 405
    # idempotent minting: first answer, replay, another body, a malformed key
    once = {"purpose": "magic_link", "subject": "user-5"}
    idem = {"Idempotency-Key": "4f1c2a9e-key-1"}
    first = rec.call("POST", f"{v1}/links", key=key, json=once, headers=idem)  # 201
    again = rec.call("POST", f"{v1}/links", key=key, json=once, headers=idem)  # 201 replayed
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["jti"] == first.get_json()["jti"]
    rec.call(
        "POST", f"{v1}/links", key=key, json={**once, "ttl": 60}, headers=idem
    )  # 422 idempotency_mismatch
    rec.call(
        "POST", f"{v1}/links", key=key, json=once, headers={"Idempotency-Key": "a b"}
    )  # 400 invalid_idempotency_key
    # verify and redeem
    token = minted["token"]
    rec.call(
        "POST", f"{v1}/links/verify", key=key, json={"token": token, "purpose": "magic_link"}
    )  # 200
    rec.call(
        "POST", f"{v1}/links/verify", key=key, json={"token": "x", "purpose": "magic_link"}
    )  # 401 malformed
    rec.call("POST", f"{v1}/links/verify", key=key, json={"token": token})  # 422
    rec.call(
        "POST",
        f"{v1}/links/redeem",
        key=other.api_key,
        json={"token": token, "purpose": "magic_link"},
    )  # 401
    rec.call(
        "POST", f"{v1}/links/redeem", key=key, json={"token": token, "purpose": "magic_link"}
    )  # 200
    rec.call(
        "POST", f"{v1}/links/redeem", key=key, json={"token": token, "purpose": "magic_link"}
    )  # 409
    rec.call(
        "POST", f"{v1}/links/verify", key=key, json={"token": token, "purpose": "magic_link"}
    )  # 409
    # state and revocation
    rec.call("GET", f"{v1}/links/{minted['jti']}", key=key)  # 200
    rec.call("GET", f"{v1}/links/{minted['jti']}", key=other.api_key)  # 404: not theirs
    rec.call("GET", f"{v1}/links/{'A' * 22}", key=key)  # 404
    rec.call("GET", f"{v1}/links/{'A' * 500}", key=key)  # 404
    second = api.minted("magic_link", "user-2")
    rec.call("DELETE", f"{v1}/links/{second['jti']}", key=key)  # 200
    rec.call("DELETE", f"{v1}/links/{second['jti']}", key=key)  # 200, revoked 0
    rec.call("DELETE", f"{v1}/links/nope", key=key)  # 404
    rec.call(
        "POST",
        f"{v1}/links/redeem",
        key=key,
        json={"token": second["token"], "purpose": "magic_link"},
    )  # 410
    rec.call(
        "POST", f"{v1}/subjects/user-1/revoke", key=key, json={"purposes": ["password_reset"]}
    )  # 200
    rec.call("POST", f"{v1}/subjects/user-1/revoke", key=key)  # 200, no body
    rec.call("POST", f"{v1}/subjects/user-1/revoke", key=key, json={"purposes": []})  # 422
    rec.call("POST", f"{v1}/subjects/user-1/revoke", json={})  # 401
    # the inventory
    rec.call("GET", f"{v1}/subjects/user-1/links", key=key)  # 200
    rec.call(
        "GET",
        f"{v1}/subjects/user-1/links?state=revoked,superseded&purpose=password_reset&limit=1",
        key=key,
    )  # 200, with a next_cursor
    rec.call("GET", f"{v1}/subjects/user-1/links?state=gone", key=key)  # 422
    rec.call("GET", f"{v1}/subjects/user-1/links?cursor=zz", key=key)  # 422
    rec.call("GET", f"{v1}/subjects/user-1/links")  # 401
    # expiry, by the clock
    svc = services(app).links
    short = api.minted("magic_link", "user-3", ttl=30)
    real = svc.clock
    svc.clock = lambda: real() + 30 + svc.settings.leeway + 1
    try:
        rec.call(
            "POST",
            f"{v1}/links/redeem",
            key=key,
            json={"token": short["token"], "purpose": "magic_link"},
        )  # 410
    finally:
        svc.clock = real
    if _codes_routed(app):
        link_path = "/" + api.minted("magic_link", "user-4")["url"].split("/", 3)[3]
        code = _sign_in_code(app.test_client(), link_path)
        rec.call(
            "POST", f"{v1}/codes/exchange", key=other.api_key, json={"code": code}
        )  # 404, not theirs
        rec.call("POST", f"{v1}/codes/exchange", key=key, json={"code": code})  # 200
        rec.call("POST", f"{v1}/codes/exchange", key=key, json={"code": code})  # 409
        rec.call("POST", f"{v1}/codes/exchange", key=key, json={})  # 422
    # sign-ins
    sign_in = {
        "subject": "user-5",
        "email": "user5@example.com",
        "ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    }
    rec.call("POST", f"{v1}/sign-ins", key=key, json=sign_in)  # 201
    rec.call("POST", f"{v1}/sign-ins", key=key, json={**sign_in, "ip": "nowhere"})  # 422
    rec.call(
        "POST", f"{v1}/sign-ins", key=key, json={**sign_in, "redirect_uri": "https://evil.test/"}
    )  # 403
    # branding
    from tests.clients.test_branding import png

    rec.call("GET", f"{v1}/branding", key=key)  # 200
    rec.call("GET", f"{v1}/branding")  # 401
    rec.call("PUT", f"{v1}/branding", key=key, json={"brand_color": "#0f766e"})  # 200
    rec.call("PUT", f"{v1}/branding", key=key, json={"brand_color": "#777777"})  # 422 contrast
    rec.call("PUT", f"{v1}/branding", key=key, json={"logo": "x"})  # 422 unknown_field
    rec.call("PUT", f"{v1}/branding/logo", key=key, data=png(), content_type="image/png")  # 200
    rec.call(
        "PUT", f"{v1}/branding/logo", key=key, data=b"<svg/>", content_type="image/svg+xml"
    )  # 415
    rec.call("PUT", f"{v1}/branding/logo", key=key, data=b"\x89PNG", content_type="image/png")
    rec.call(
        "PUT", f"{v1}/branding/logo", key=key, data=b"0" * (300 * 1024), content_type="image/png"
    )  # 413
    rec.call("DELETE", f"{v1}/branding/logo", key=key)  # 200
    rec.call("DELETE", f"{v1}/branding/logo")  # 401
    return rec


# -- the tests ------------------------------------------------------------------------


@pytest.fixture
def doc(client) -> dict[str, Any]:
    resp = client.get("/api/v1/openapi.json")  # no Authorization header: the description is public
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def test_document_is_valid_openapi_31(doc):
    OpenAPIV31SpecValidator(doc).validate()
    assert doc["openapi"].startswith("3.1.")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }


def test_every_route_is_documented_and_every_operation_routed(app, doc):
    assert route_problems(doc, app) == []


def test_every_operation_documents_auth_and_problem_errors(doc):
    for path, item in doc["paths"].items():
        for method, op in ((m, o) for m, o in item.items() if m in openapi.METHODS):
            responses = op["responses"]
            errors = {s: r for s, r in responses.items() if s.startswith(("4", "5"))}
            for status, spec in errors.items():
                assert list(spec["content"]) == ["application/problem+json"], (path, method, status)
            if op.get("security", doc["security"]):
                assert {"401", "429", "503"} <= set(responses), (path, method)
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(responses), (path, method)
            assert not any(s.startswith("5") and s not in ("502", "503") for s in responses), (
                "a 500 is never documented"
            )


def test_real_answers_match_the_document(app, api, other_api, doc):
    rec = scripted_session(app, api, other_api)
    assert rec.problems(doc) == []
    # the session really exercised every operation, with a success and an error each
    for path, method in {(p, m) for p, m in openapi.routed_operations(app)}:
        seen = {s for p, m, s in rec.statuses() if (p, m) == (path, method)}
        assert any(200 <= s < 300 for s in seen), f"no success seen for {method} {path}"
        if path != f"{openapi.PREFIX}/openapi.json":
            assert any(s >= 400 for s in seen), f"no error seen for {method} {path}"


# -- the checks can fail: deliberately wrong documents ------------------------------


def _wrong(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(what is wrong, the wrong document, a fragment of the problem the checks must report)."""
    d = copy.deepcopy(doc)
    del d["paths"]["/api/v1/links/redeem"]
    yield "an undocumented route", d, "routed but not documented: POST /api/v1/links/redeem"
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/{jti}/restore"] = {
        "post": copy.deepcopy(doc["paths"]["/api/v1/links/redeem"]["post"])
    }
    yield (
        "a documented operation that is not routed",
        d,
        "documented but not routed: POST /api/v1/links/{jti}/restore",
    )
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/{jti}"]["put"] = d["paths"]["/api/v1/links/{jti}"].pop("delete")
    yield "a wrong method", d, "routed but not documented: DELETE /api/v1/links/{jti}"
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/{id}"] = d["paths"].pop("/api/v1/links/{jti}")
    yield "a renamed path parameter", d, "documented but not routed: GET /api/v1/links/{id}"


def _wrong_schemas(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    d = copy.deepcopy(doc)
    d["components"]["schemas"]["Redeemed"]["required"].append("email")
    yield "a success body missing a documented required member", d, "'email' is a required property"
    d = copy.deepcopy(doc)
    d["components"]["schemas"]["MintedLink"]["properties"].pop("superseded")
    yield (
        "an undocumented member in a success body",
        d,
        "Additional properties are not allowed ('superseded'",
    )
    d = copy.deepcopy(doc)
    del d["paths"]["/api/v1/links/redeem"]["post"]["responses"]["409"]
    yield "an undocumented status", d, "POST /api/v1/links/redeem → 409: status not documented"
    d = copy.deepcopy(doc)
    resp = d["paths"]["/api/v1/links/verify"]["post"]["responses"]["401"]
    resp["content"] = {"application/json": resp["content"]["application/problem+json"]}
    yield "the wrong error content type", d, "content type application/problem+json not documented"
    d = copy.deepcopy(doc)
    d["components"]["schemas"]["Problem"]["properties"]["status"]["type"] = "string"
    yield "a wrong type in the problem schema", d, "is not of type 'string'"
    d = copy.deepcopy(doc)
    d["components"]["schemas"]["LinkStatus"]["properties"]["state"]["enum"] = ["issued"]
    yield "a too narrow enum", d, "'consumed' is not one of ['issued']"
    d = copy.deepcopy(doc)
    d["components"]["schemas"]["MintRequest"]["properties"]["subject"]["pattern"] = "^[0-9]+$"
    yield "a request schema narrower than what the API accepts", d, "does not match '^[0-9]+$'"


def test_wrong_document_fails_route_conformance(app, doc):
    for what, wrong, expected in _wrong(doc):
        problems = route_problems(wrong, app)
        assert any(expected in p for p in problems), (what, problems)


def test_wrong_document_fails_response_conformance(app, api, other_api, doc):
    rec = scripted_session(app, api, other_api)
    assert rec.problems(doc) == []
    for what, wrong, expected in _wrong_schemas(doc):
        problems = rec.problems(wrong)
        assert any(expected in p for p in problems), (what, problems[:5])


def test_openapi_needs_no_key_but_everything_else_does(app, doc):
    http = app.test_client()
    for path, item in doc["paths"].items():
        for method, op in ((m, o) for m, o in item.items() if m in openapi.METHODS):
            url = path.replace("{jti}", "A" * 22).replace("{subject}", "user-1")
            resp = http.open(url, method=method.upper(), json={})
            if op.get("security") == []:
                assert resp.status_code == 200
            else:
                assert resp.status_code == 401, (method, path)
                assert resp.mimetype == "application/problem+json"
                assert resp.get_json()["code"] == "unauthorized"


def test_optional_operations_are_served_only_when_routed(app):
    bare = openapi.document(routed=set())
    assert "/api/v1/codes/exchange" not in bare["paths"]
    full = openapi.document(openapi.routed_operations(app))
    assert ("/api/v1/codes/exchange" in full["paths"]) == _codes_routed(app)
    OpenAPIV31SpecValidator(bare).validate()


def test_undocumented_methods_answer_405_with_allow(app, api, doc):
    http = app.test_client()
    adapter = app.url_map.bind("localhost")
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item if m in openapi.METHODS}
        url = path.replace("{jti}", "A" * 22).replace("{subject}", "user-1")
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
            with pytest.raises(HTTPException):  # no other route takes the path
                adapter.match(url, method=method)
            resp = http.open(url, method=method, headers=api.headers)
            assert resp.status_code == 405, (method, path, resp.status_code)
            assert resp.mimetype == "application/problem+json"
            # Only the path's own methods (and the HEAD and OPTIONS the server adds).
            allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
            assert allowed - {"HEAD", "OPTIONS"} == documented, (method, path, allowed)


# -- the request schemas say what the server accepts ---------------------------------------


def test_every_request_body_has_an_example_that_fits_and_works(app, api, doc):
    """The API reference's "Try it out" sends each body's example as it is: it must fit the
    schema and be answered for what it says, not refused for its shape."""
    for path, item in doc["paths"].items():
        for method, op in ((m, o) for m, o in item.items() if m in openapi.METHODS):
            if "requestBody" not in op:
                continue
            if "application/json" not in op["requestBody"]["content"]:
                continue  # a file (the logo): "Try it out" offers a file chooser
            media = op["requestBody"]["content"]["application/json"]
            assert "example" in media, f"{method.upper()} {path} has no example"
            errors = list(_schema_validator(doc, media["schema"]).iter_errors(media["example"]))
            assert errors == [], (path, [e.message for e in errors])
            url = path.replace("{subject}", "user-42")
            resp = api.http.open(
                url, method=method.upper(), json=media["example"], headers=api.headers
            )
            assert resp.status_code not in (400, 413, 415, 422), (path, resp.get_json())
            if op["operationId"] in ("mint", "start_sign_in", "revoke_subject"):
                assert resp.status_code in (200, 201), (path, resp.get_json())


def test_format_characters_are_unicodes_category_cf():
    """The file name pattern's list of format characters is Unicode's, as this Python has it."""
    import sys
    import unicodedata

    listed = {
        chr(c)
        for lo, hi in re.findall(r"(.)(?:-(.))?", openapi.FORMAT_CHARACTERS)
        for c in range(ord(lo), ord(hi or lo) + 1)
    }
    actual = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"}
    assert listed == actual


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("filename", "report.pdf", True),
        ("filename", "Bericht über 2025 – März.pdf", True),
        ("filename", "a", True),
        ("filename", "...", True),
        ("filename", ".", False),
        ("filename", "..", False),
        ("filename", " lead.pdf", False),
        ("filename", "trail.pdf\u00a0", False),
        ("filename", "a/b.pdf", False),
        ("filename", "a\\b.pdf", False),
        ("filename", "invoice\u202efdp.exe", False),
        ("filename", "x\u0085y", False),
        ("filename", "x" * 256, False),
        ("key", "reports/2025/q1.pdf", True),
        ("key", "a", True),
        ("key", "C:/x", False),
        ("key", "/etc/passwd", False),
        ("key", "a/../b", False),
        ("key", "a//b", False),
        ("key", "./a", False),
        ("key", "a\\b", False),
        ("content_type", "application/pdf", True),
        ("content_type", 'text/plain; charset="utf-8"', True),
        ("content_type", "pdf", False),
    ],
)
def test_download_patterns_agree_with_the_server(name, value, accepted):
    from linksvc import errors
    from linksvc.downloads import storage

    pattern = {
        "filename": contract.FILENAME_PATTERN,
        "key": contract.KEY_PATTERN,
        "content_type": contract.MEDIA_TYPE_PATTERN,
    }[name]
    check = {
        "filename": storage.check_filename,
        "key": storage.check_key,
        "content_type": storage.check_content_type,
    }[name]
    try:
        check(value)
        server = True
    except errors.RequestRefused:
        server = False
    assert server is accepted, value
    assert (re.search(pattern, value) is not None and len(value) <= 255) is accepted, value
