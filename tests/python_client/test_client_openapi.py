"""The Python client and linksvc's OpenAPI document cannot drift apart.

Every documented operation has a method on both clients that calls its method and path,
and every method calls a documented operation; every error code the document names maps
to a client exception made for answers of that status; every code the client gives its
own class is documented. Deliberately wrong documents show the checks can fail.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any

import pytest

import linksvc_client as lc
from linksvc.web import openapi
from linksvc_client import _core, errors

#: Backquoted words in the problem descriptions that are not error codes.
NOT_CODES = {"field"}
CODE_RE = re.compile(r"`([a-z][a-z_]*)`")


@pytest.fixture
def doc(app) -> dict[str, Any]:
    return openapi.document(openapi.routed_operations(app))


def operation_problems(doc: dict[str, Any]) -> list[str]:
    documented = {
        op["operationId"]: (method.upper(), path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in openapi.METHODS and op["operationId"] != "openapi"
    }
    out = []
    for op_id, target in documented.items():
        if _core.OPERATIONS.get(op_id) != target:
            out.append(f"{op_id}: documented {target}, client {_core.OPERATIONS.get(op_id)}")
        name = _core.METHOD_NAMES.get(op_id, op_id)
        for cls in (lc.LinkClient, lc.AsyncLinkClient):
            if not callable(getattr(cls, name, None)):
                out.append(f"{cls.__name__} has no method {name} for {op_id}")
    for op_id in set(_core.OPERATIONS) - set(documented):
        out.append(f"client calls {op_id}, which is not documented")
    return out


def documented_codes(doc: dict[str, Any]) -> dict[str, set[int]]:
    """Each error code the document names, with the statuses it is named under."""
    codes: dict[str, set[int]] = {}
    for item in doc["paths"].values():
        for method, op in item.items():
            if method not in openapi.METHODS:
                continue
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    for code in CODE_RE.findall(resp["description"]):
                        if code not in NOT_CODES:
                            codes.setdefault(code, set()).add(int(status))
    return codes


def code_problems(doc: dict[str, Any]) -> list[str]:
    out = []
    codes = documented_codes(doc)
    for code, statuses in sorted(codes.items()):
        cls = errors.error_class(min(statuses), code)
        for status in statuses:
            by_status = errors.STATUS_CLASSES.get(status, errors.APIError)
            if not (issubclass(cls, by_status) or code in errors.CODE_CLASSES):
                out.append(f"{code} ({status}) becomes {cls.__name__}, not a {by_status.__name__}")
        if cls is errors.APIError:
            out.append(f"{code} has no client exception of its own family")
    for code in sorted(set(errors.CODE_CLASSES) - set(codes)):
        out.append(f"the client knows {code}, which the document never names")
    return out


def test_every_operation_has_a_method_on_both_clients(doc):
    assert operation_problems(doc) == []


def test_sync_and_async_methods_take_the_same_arguments():
    for op_id in _core.OPERATIONS:
        name = _core.METHOD_NAMES.get(op_id, op_id)
        sync, aio = getattr(lc.LinkClient, name), getattr(lc.AsyncLinkClient, name)
        assert inspect.iscoroutinefunction(aio), name
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(aio).parameters
        ), name


def test_every_documented_code_has_its_exception(doc):
    assert code_problems(doc) == []
    codes = documented_codes(doc)
    # The families the product speaks of are all there, with the statuses of the API.
    for code, cls in {
        "used": lc.LinkUsed,
        "expired": lc.LinkExpired,
        "revoked": lc.LinkRevoked,
        "superseded": lc.LinkSuperseded,
        "rate_limited": lc.RateLimited,
        "unavailable": lc.ServiceUnavailable,
        "malformed": lc.InvalidToken,
        "purpose_not_allowed": lc.NotAllowed,
        "idempotency_mismatch": lc.IdempotencyMismatch,
    }.items():
        assert code in codes, code
        assert errors.error_class(min(codes[code]), code) is cls, code


def test_the_checks_fail_on_a_document_that_drifted(doc):
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/{jti}"]["get"]["operationId"] = "link_state"
    assert any("link_state" in p for p in operation_problems(d))
    d = copy.deepcopy(doc)
    for item in d["paths"].values():  # the service renames a code
        for method, op in item.items():
            for resp in op.get("responses", {}).values() if method in openapi.METHODS else ():
                resp["description"] = resp["description"].replace("`used`", "`consumed_already`")
    problems = code_problems(d)
    assert any("the client knows used" in p for p in problems), problems
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/redeem"]["post"]["responses"]["418"] = {
        "description": "A teapot (`teapot`)."
    }
    assert any("teapot" in p for p in code_problems(d))
    d = copy.deepcopy(doc)
    d["paths"]["/api/v1/links/revoke-all"] = {
        "post": {**doc["paths"]["/api/v1/links/redeem"]["post"], "operationId": "revoke_all"}
    }
    assert any("no method revoke_all" in p for p in operation_problems(d))
