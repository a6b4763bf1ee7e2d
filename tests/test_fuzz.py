"""Schemathesis fuzzes the API from its served OpenAPI document, through the WSGI app.

For every documented operation, Hypothesis draws requests that fit the document
(positive) and requests that break it (negative), sends them with a valid API key, and
schemathesis checks each answer: never a 5xx, a documented status and content type, a
body and headers that match the documented schemas, and a 4xx for every request that
breaks the document. On top, every answer must carry the security headers and must not
echo the API key. Bounded: ``LINKSVC_FUZZ_EXAMPLES`` examples per operation and mode
(default 25), which keeps the module near half a minute on two cores.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from linksvc import openapi

from .conftest import make_api_user

EXAMPLES = int(os.environ.get("LINKSVC_FUZZ_EXAMPLES", "25"))
OPERATIONS = [
    (path, method)
    for path, item in openapi.PATHS.items()
    for method in item
    if method in openapi.METHODS
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzz_target(app):
    user = make_api_user(app, "fuzzer")
    # A few real links, so that generated jti and subject values sometimes meet a row.
    for purpose in ("magic_link", "password_reset"):
        user.minted(purpose, "user-1")
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return app, schema, user


def _has_input(path: str, method: str) -> bool:
    return "requestBody" in openapi.PATHS[path][method] or "parameters" in openapi.PATHS[path]


# Negative mode needs an input to break; an operation without parameters or body has none.
FUZZ_CASES = [
    (p, m, mode)
    for p, m in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_input(p, m)
]


@pytest.mark.parametrize(
    "path,method,mode",
    FUZZ_CASES,
    ids=[f"{m.upper()} {p} {mode.name.lower()}" for p, m, mode in FUZZ_CASES],
)
def test_fuzz_operation(fuzz_target, path, method, mode):
    app, schema, user = fuzz_target
    assert (path, method) in openapi.routed_operations(app), (
        f"{method.upper()} {path} is documented but not served"
    )
    operation = schema[path][method.upper()]
    headers = {"Authorization": f"Bearer {user.api_key}"}
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        resp = case.call(headers=headers)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        case.validate_response(resp, checks=checks, headers=headers)
        text = resp.content.decode("utf-8", "replace")
        assert user.api_key not in text, "an answer echoed the API key"
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        assert lowered["x-content-type-options"] == ["nosniff"]
        assert lowered["referrer-policy"] == ["no-referrer"]
        assert "no-store" in lowered["cache-control"][0]

    run()
    print(f"{method.upper()} {path} {mode.value}: statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= (min(EXAMPLES, 5) if _has_input(path, method) else 1), seen
    assert not any(s >= 500 for s in seen), seen


def test_fuzz_verify_and_redeem_with_mutated_real_tokens(app):
    """Schemathesis cannot make a valid token, so its token cases stop at `malformed`. Here
    Hypothesis mutates real ones and sends them through the API: every answer is a
    documented problem, nothing but the untouched token is ever accepted, and the real
    links are all still redeemable afterwards."""
    from hypothesis import strategies as st

    from .test_openapi import response_problems
    from .test_properties import mutation

    user = make_api_user(app, "mutator")
    links = [user.minted(p, "user-1") for p in ("magic_link", "password_reset")]
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    statuses: dict[int, int] = {}

    @given(data=st.data())
    @settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(data):
        link = data.draw(st.sampled_from(links))
        token = data.draw(mutation(link["token"]))
        action = data.draw(st.sampled_from(["verify", "redeem"]))
        purpose = data.draw(st.sampled_from([link["purpose"], link["purpose"], "download"]))
        if token == link["token"]:
            return  # the identity: would consume the link the other examples build on
        resp = user.http.post(
            f"/api/v1/links/{action}",
            json={"token": token, "purpose": purpose},
            headers=user.headers,
        )
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code in (401, 404, 409, 410), resp.get_json()
        assert (
            response_problems(
                doc,
                f"/api/v1/links/{action}",
                "post",
                resp.status_code,
                resp.mimetype,
                resp.get_json(),
            )
            == []
        )
        if len(token) >= 16:  # a short mutant (even "") is a substring of any body
            assert token not in resp.get_data(as_text=True)

    run()
    print(f"mutated tokens: statuses {dict(sorted(statuses.items()))}")
    for link in links:
        assert user.redeem(link["token"], link["purpose"]).status_code == 200
