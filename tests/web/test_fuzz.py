"""Schemathesis fuzzes the live API from its served OpenAPI document, over real HTTP.

A gunicorn server on SQLite and one on PostgreSQL, each with a registered client and a few
real links. For every documented operation, Hypothesis draws requests that fit the
document (positive) and requests that break it (negative), sends them with a valid API
key, and schemathesis checks each answer: never a 5xx, a documented status and content
type, a body and headers that match the documented schemas, a 4xx for every request that
breaks the document, and — the schema and the server agreeing — no request that fits the
document refused for its shape (``positive_data_acceptance``). A request that fits may
still be refused for what it means (an e-mail-looking subject, a redirect URI that is not
registered): those answers are :data:`REFUSED_FOR_MEANING`, each with its stable code. On
top, every answer must carry the security headers and must not echo the API key.
Bounded: ``LINKSVC_FUZZ_EXAMPLES`` examples per operation, mode and database (default
25), which keeps the module near a minute on two cores.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from linksvc.web import openapi
from tests.support.apps import make_api_user
from tests.support.databases import pg_database
from tests.support.env import base_env
from tests.support.servers import prepare_instance, start_gunicorn

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

#: Codes of a 4xx that refuses a well-formed request for what it means, which no schema can
#: say: the fuzzer's requests fit the document and still meet these. A code outside this
#: list on a request that fits the document is the schema and the server disagreeing.
REFUSED_FOR_MEANING = {
    "subject_looks_like_pii",  # a heuristic on the subject's content (an address-like id)
    "ttl_out_of_range",  # the purpose's configured ceiling, at most the documented 900
    "redirect_uri_required",  # a client with several redirect URIs
    "download_required",
    "object_not_found",  # the file is not in storage
    "data_too_large",  # LINKSVC_MAX_DATA_BYTES, a setting
    "data_too_deep",
    "invalid_cursor",  # a cursor this API did not return (they carry a MAC)
}


def accepts_well_formed_requests(ctx, response, case):
    """``positive_data_acceptance``, but a refusal for meaning (above) is not a refusal of
    the request's shape."""
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and response.status_code == 422:
        try:
            code = response.json().get("code")
        except ValueError:
            code = None
        if code in REFUSED_FOR_MEANING:
            return None
    return positive_data_acceptance(ctx, response, case)


class Target:
    def __init__(self, url: str, api_key: str) -> None:
        self.url, self.api_key = url, api_key
        self.schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
        self.session = requests.Session()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, tmp_path_factory) -> Iterator[Target]:
    """The service under gunicorn with a client and a few real links, so that generated
    jti and subject values sometimes meet a row."""
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with pg_database() if request.param == "postgresql" else nullcontext() as database_url:
        env = base_env(tmp / "instance", database_url)
        creds = prepare_instance(env, "fuzzer")
        server = start_gunicorn(env, workers=2, log_path=tmp / "server.log")
        try:
            target = Target(server.url, creds["api_key"])
            for purpose in ("magic_link", "password_reset"):
                resp = target.session.post(
                    f"{server.url}/api/v1/links",
                    json={"purpose": purpose, "subject": "user-1"},
                    headers=target.headers,
                    timeout=10,
                )
                assert resp.status_code == 201, resp.text
            yield target
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()[-3000:]


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
def test_fuzz_operation(live, path, method, mode):
    operation = live.schema[path][method.upper()]
    headers = live.headers
    checks = CHECKS + (
        [negative_data_rejection]
        if mode is GenerationMode.NEGATIVE
        else [accepts_well_formed_requests]
    )
    seen: dict[int, int] = {}
    codes: dict[str, int] = {}  # the 422s' codes, to show what refused the requests

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
        if mode is GenerationMode.POSITIVE and "Idempotency-Key" in (case.headers or {}):
            # Hypothesis draws the same few keys again and again: each would answer
            # idempotency_mismatch before the body is looked at. A fresh key per request.
            case.headers["Idempotency-Key"] = secrets.token_urlsafe(16)
        if mode is GenerationMode.POSITIVE:
            # Schemathesis percent-encodes path parameters but leaves what already looks like
            # an escape: a subject holding "%BD" is sent as byte 0xBD, which no client that
            # encodes '%' would send. Such a draw is not the subject the schema allowed.
            assume(all(unquote(str(v)).isascii() for v in (case.path_parameters or {}).values()))
        resp = case.call(base_url=live.url, session=live.session, headers=headers, timeout=30)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        if resp.status_code == 422:
            code = resp.json().get("code", "?")
            codes[code] = codes.get(code, 0) + 1
        case.validate_response(resp, checks=checks, headers=headers)
        text = resp.content.decode("utf-8", "replace")
        assert live.api_key not in text, "an answer echoed the API key"
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        assert lowered["x-content-type-options"] == ["nosniff"]
        assert lowered["referrer-policy"] == ["no-referrer"]
        assert "no-store" in lowered["cache-control"][0]

    run()
    print(
        f"{method.upper()} {path} {mode.value}: statuses {dict(sorted(seen.items()))}"
        + (f", 422 codes {dict(sorted(codes.items()))}" if codes else "")
    )
    assert sum(seen.values()) >= (min(EXAMPLES, 5) if _has_input(path, method) else 1), seen
    assert not any(s >= 500 for s in seen), seen


def test_refusals_for_meaning_are_422_codes_of_the_catalogue():
    from linksvc.web.problems import PROBLEMS

    assert {c: PROBLEMS[c].status for c in REFUSED_FOR_MEANING} == dict.fromkeys(
        REFUSED_FOR_MEANING, 422
    )


def test_every_documented_operation_is_served(app):
    routed = openapi.routed_operations(app)
    for path, method in OPERATIONS:
        assert (path, method) in routed, f"{method.upper()} {path} is documented but not served"


def test_fuzz_verify_and_redeem_with_mutated_real_tokens(app):
    """Schemathesis cannot make a valid token, so its token cases stop at `malformed`. Here
    Hypothesis mutates real ones and sends them through the API: every answer is a
    documented problem, nothing but the untouched token is ever accepted, and the real
    links are all still redeemable afterwards."""
    from hypothesis import strategies as st

    from tests.links.test_properties import mutation
    from tests.web.test_openapi import response_problems

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
