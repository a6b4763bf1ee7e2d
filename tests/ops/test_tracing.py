"""Tracing for real: linksvc under gunicorn and the webhook relay export OTLP/HTTP to a
receiver here, which decodes every ExportTraceServiceRequest. One trace per request with its
database spans as children, the relay's delivery in the mint's trace, an incoming traceparent
continued (or only linked, by default), traceparent sent with the webhook, and no token, link
path, API key, address or code anywhere in the exported bytes. With tracing off,
OpenTelemetry is not even imported."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.databases import pg_database
from tests.support.env import ROOT
from tests.webhooks.test_relay import Stack, sign_in_through_the_page

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on port 0: keeps the raw bodies and the decoded spans."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = pb.ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    receiver.raw.append(body)
                    for rs in req.resource_spans:
                        res = {a.key: _value(a.value) for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append(
                                    {
                                        "name": s.name,
                                        "trace": s.trace_id.hex(),
                                        "id": s.span_id.hex(),
                                        "parent": s.parent_span_id.hex(),
                                        "kind": s.kind,
                                        "attrs": {a.key: _value(a.value) for a in s.attributes},
                                        "events": [
                                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                                            for e in s.events
                                        ],
                                        "links": [
                                            (ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links
                                        ],
                                        "status": s.status.code,
                                        "resource": res,
                                    }
                                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, pred: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if pred(s)]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no such span among {[s['name'] for s in self.spans]}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _strings(spans: list[dict[str, Any]]) -> str:
    return json.dumps(spans, default=str)


@pytest.fixture(params=["sqlite", "postgresql"])
def traced(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, OtlpReceiver]]:
    otlp = OtlpReceiver()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        "LINKSVC_TRACEPARENT": "continue",
    }
    if request.param == "postgresql":
        with pg_database("linksvc_otel") as url:
            s = Stack(tmp_path, url, **env)
            s.serve()
            try:
                yield s, otlp
            finally:
                s.close()
                otlp.stop()
    else:
        s = Stack(tmp_path, None, **env)
        s.serve()
        try:
            yield s, otlp
        finally:
            s.close()
            otlp.stop()


def test_journey_is_traced_without_secrets(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, otlp = traced
    stack.relay()
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{parent_trace}-00f067aa0ba902b7-01"
    # Mint (with a mail and its code), under a caller's traceparent.
    resp = requests.post(
        f"{stack.url}/api/v1/links",
        json={"purpose": "magic_link", "subject": "user-42", "email": "alice@example.com"},
        headers={**stack.headers, "traceparent": incoming},
        timeout=15,
    )
    assert resp.status_code == 201, resp.text
    link = resp.json()
    # Open the page, press (confirm), exchange the code.
    code = sign_in_through_the_page(stack, link)
    ex = requests.post(
        f"{stack.url}/api/v1/codes/exchange", json={"code": code}, headers=stack.headers, timeout=10
    )
    assert ex.status_code == 200, ex.text
    # Redeem a second link over the API; and a failure page (used link) for its reference.
    other = stack.mint(subject="user-43")
    # A caller that sends its API key as the request id (which a span records) leaks nothing.
    assert len(stack.api_key) <= 64
    red = requests.post(
        f"{stack.url}/api/v1/links/redeem",
        json={"token": other["token"], "purpose": "magic_link"},
        headers={**stack.headers, "X-Request-Id": stack.api_key},
        timeout=10,
    )
    assert red.status_code == 200, red.text
    used = requests.get(f"{stack.url}/l/{other['token']}", timeout=10)
    assert used.status_code == 409, used.status_code

    # The mint: continues the caller's trace, named by its route, with its SQL as children.
    mint = otlp.wait_for(
        lambda s: s["name"] == "POST /api/v1/links" and s["trace"] == parent_trace
    )[0]
    assert mint["parent"] == "00f067aa0ba902b7"
    assert mint["attrs"]["http.response.status_code"] == 201
    assert mint["resource"]["service.name"] == "linksvc"
    assert mint["resource"]["deployment.environment.name"] == "test"
    otlp.wait_for(lambda s: s["parent"] == mint["id"] and "db.query.text" in s["attrs"])
    otlp.wait_for(lambda s: s["parent"] == mint["id"] and s["name"] == "mail send")
    # Every request is a trace of its own with its database spans in it.
    page = otlp.wait_for(lambda s: s["name"] == "GET /l/<path:token>")
    for span in page:
        assert span["parent"] == ""
        assert span["trace"] != parent_trace
    redeem = otlp.wait_for(lambda s: s["name"] == "POST /api/v1/links/redeem")[0]
    sql = otlp.wait_for(lambda s: s["parent"] == redeem["id"] and s["kind"] == 3)
    assert all(s["trace"] == redeem["trace"] for s in sql)
    # Values are bound, never written into a statement's text (a statement without any,
    # such as a key ring refresh falling in this request, has nothing to bind).
    texts = [s["attrs"]["db.query.text"] for s in sql]
    assert not any(other["jti"] in t or "user-43" in t for t in texts), texts
    consume = [t for t in texts if "UPDATE links" in t]
    assert consume and all("k_jti" in t for t in consume), texts
    # The relay's delivery of the mint's event is in the mint's trace, and sent traceparent.
    deliver = otlp.wait_for(
        lambda s: (
            s["name"] == "webhook deliver"
            and s["attrs"].get("linksvc.webhook.event") == "link.minted"
            and s["trace"] == parent_trace
        )
    )[0]
    assert deliver["attrs"]["http.response.status_code"] == 200

    def carried(r: Any) -> bool:
        return r.type == "link.minted" and r.jti == link["jti"]

    stack.receiver.wait_for(lambda rs: any(carried(r) for r in rs))
    minted = next(r for r in stack.receiver.received if carried(r))
    # The endpoint got the delivery span's context: the mint's trace, the deliver span.
    assert minted.traceparent == f"00-{parent_trace}-{deliver['id']}-01"
    # The failure page's support reference is the request's trace id; the log lines carry it.
    failure = otlp.wait_for(
        lambda s: (
            s["attrs"].get("http.response.status_code") == 409 and s["name"].startswith("GET /l/")
        )
    )[0]
    assert failure["trace"] in used.text
    logs = (stack.tmp / "gunicorn.log").read_text()
    lines = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{") and '"logger"' in ln]
    assert any(ln.get("trace_id") == failure["trace"] for ln in lines)
    assert any(ln.get("trace_id") == parent_trace for ln in lines)

    # Nothing secret, in the raw protobuf or the decoded strings.
    time.sleep(0.5)
    with otlp.lock:
        raw = b"".join(otlp.raw)
        text = _strings(otlp.spans)
    secrets = [
        link["token"],
        other["token"],
        link["url"].split("//", 1)[1].split("/", 1)[1],
        stack.api_key,
        "alice@example.com",
        code,
        "/l/eyJ",
        "/api/v1/links/" + link["jti"] + "x",
    ]
    for secret in secrets:
        assert secret.encode() not in raw, secret
        assert secret not in text, secret
    for part in link["token"].split("."):
        assert part.encode() not in raw


def test_incoming_traceparent_only_linked_by_default(tmp_path: Path) -> None:
    otlp = OtlpReceiver()
    stack = Stack(
        tmp_path,
        None,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp.url + "/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    stack.serve()
    try:
        incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        requests.get(f"{stack.url}/healthz", headers={"traceparent": incoming}, timeout=10)
        span = otlp.wait_for(lambda s: s["name"] == "GET /healthz" and s["links"])[0]
        # Not sampled out by the caller's flag, not in the caller's trace: linked to it.
        assert span["trace"] != "4bf92f3577b34da6a3ce929d0e0e4736"
        assert span["parent"] == ""
        assert span["links"] == [("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")]
    finally:
        stack.close()
        otlp.stop()


OFF = """
import sys
from linksvc import create_app
app = create_app({"LINKSVC_INSTANCE_PATH": sys.argv[1], "LINKSVC_DATABASE_URL": "sqlite:///" + sys.argv[1] + "/l.db"})
client = app.test_client()
client.get("/healthz")
client.get("/l/not-a-token")
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LINKSVC_ENV": "development"}
    out = subprocess.run(
        [sys.executable, "-c", OFF, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
