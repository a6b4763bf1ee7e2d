"""OpenTelemetry tracing for linksvc, installed by :func:`linksvc.ops.tracing.init_app` only.

Spans: one per request (a WSGI middleware; named by the route template, ``GET
/l/<path:token>``, never by the path), one per database statement (SQLAlchemy's cursor
events, and a proxy around the hot driver connections of :mod:`linksvc.store.db`), the mail
transport's send, the download storage's calls, and each webhook delivery attempt, which
continues the trace of the request that queued the event (its ``traceparent`` is kept with
the outbox row) and sends its own ``traceparent`` to the endpoint.

Nothing secret goes into a span: no path, query, header, body, address or parameter value
is recorded. A statement is its SQL text with bound placeholders (run through
:func:`linksvc.ops.logs.redact` all the same); an exception is recorded by its type alone,
as the logs record it, never its message (a driver's message can quote a value).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from flask import Flask, g, request
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from linksvc.ops import logs
from linksvc.ops.accesslog import close_body
from linksvc.services import services
from linksvc.store import db
from linksvc.webhooks import outbox, relay

_PROPAGATOR = TraceContextTextMapPropagator()
_SERVER, _CLIENT, _INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
_ERROR = Status(StatusCode.ERROR)

_PROVIDER: TracerProvider | None = None


def _provider(exporters: set[str]) -> TracerProvider:
    """One provider per process (the SDK reads the sampler and resource from ``OTEL_*``)."""
    global _PROVIDER
    if _PROVIDER is None:
        attrs: dict[str, Any] = {}
        if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        ):
            attrs["service.name"] = "linksvc"
        provider = TracerProvider(resource=Resource.create(attrs))
        if "otlp" in exporters:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if "console" in exporters:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
        _PROVIDER = provider
    return _PROVIDER


def format_traceparent(ctx: trace.SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, if it is recorded (:data:`outbox.traceparent`)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    return format_traceparent(span.get_span_context())


def _failed(span: trace.Span, exc: BaseException) -> None:
    # The type only, as the logs have it: an exception's message can quote a value.
    span.set_status(_ERROR)
    span.set_attribute("error.type", type(exc).__name__)
    span.add_event("exception", {"exception.type": type(exc).__name__})


# -- requests --------------------------------------------------------------------------


class TracingMiddleware:
    """A server span around each request: named by its method until the route is known
    (:func:`_name_route`), with the status code; an incoming ``traceparent`` continued,
    linked or ignored (``LINKSVC_TRACEPARENT``)."""

    def __init__(self, app: Any, tracer: trace.Tracer, traceparent: str) -> None:
        self.app = app
        self.tracer = tracer
        self.mode = traceparent

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in _METHODS:
            method = "_OTHER"
        parent = None
        links = None
        incoming = environ.get("HTTP_TRACEPARENT")
        if incoming and self.mode != "ignore":
            carrier = {"traceparent": incoming, "tracestate": environ.get("HTTP_TRACESTATE", "")}
            extracted = _PROPAGATOR.extract(carrier)
            remote = trace.get_current_span(extracted).get_span_context()
            if remote.is_valid:
                if self.mode == "continue":
                    parent = extracted
                else:
                    links = [Link(remote)]
        span = self.tracer.start_span(
            method,
            context=parent if parent is not None else otel_context.Context(),
            kind=_SERVER,
            links=links,
            attributes={"http.request.method": method},
        )
        environ["linksvc.span"] = span

        def _start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            code = int(status[:3])
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(_ERROR)
            return start_response(status, headers, *exc_info)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = self.app(environ, _start)
        except BaseException as exc:
            _failed(span, exc)
            span.end()
            raise
        finally:
            otel_context.detach(token)
        return _Ending(result, span)


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))


class _Ending:
    """The response body; the request's span ends when the server closes it."""

    def __init__(self, body: Iterable[bytes], span: trace.Span) -> None:
        self.body = body
        self.span = span

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close_body(self.body)
        finally:
            self.span.end()


def _name_route() -> None:
    """Name the request's span by its route template, never by the path (a link path is a
    credential), and give the request its trace id (log lines, the support reference)."""
    span = request.environ.get("linksvc.span")
    if span is None:
        return
    rule = request.url_rule
    if rule is not None:
        method = span.attributes.get("http.request.method", request.method)
        span.update_name(f"{method} {rule.rule}")
        span.set_attribute("http.route", rule.rule)
    # A caller may choose its X-Request-Id: redacted as in the log lines.
    span.set_attribute("linksvc.request_id", logs.redact(g.get("request_id") or ""))
    ctx = span.get_span_context()
    if ctx.trace_flags.sampled:
        g.trace_id = f"{ctx.trace_id:032x}"


def _unexpected(exc: BaseException) -> None:
    span = request.environ.get("linksvc.span")
    if span is not None:
        _failed(span, exc)


# -- database --------------------------------------------------------------------------

_TARGET = re.compile(
    r"^\s*(?:WITH\b.*?\)\s*)?(SELECT|INSERT|UPDATE|DELETE|BEGIN|COMMIT|ROLLBACK|[A-Z]+)"
    r"(?:.*?\b(?:FROM|INTO|UPDATE|TABLE)\s+\"?([A-Za-z_][A-Za-z0-9_]*))?",
    re.IGNORECASE | re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def _statement(sql: str) -> tuple[str, str]:
    """A statement's span name (``SELECT links``) and text (placeholders, never values)."""
    found = _TARGET.match(sql)
    if found is None:
        return "SQL", logs.redact(sql)
    op, table = found.group(1).upper(), found.group(2)
    if op == "UPDATE":
        table = re.match(r"\s*UPDATE\s+\"?([A-Za-z_][A-Za-z0-9_]*)", sql, re.IGNORECASE)
        table = table.group(1) if table else None
    return (f"{op} {table}" if table else op), logs.redact(sql)


def _db_span(tracer: trace.Tracer, system: str, sql: str) -> trace.Span | None:
    # Statements outside a traced request or delivery (the relay's polling, start-up, the
    # CLI) make no trace of their own.
    if not trace.get_current_span().is_recording():
        return None
    name, text = _statement(sql)
    return tracer.start_span(
        name, kind=_CLIENT, attributes={"db.system.name": system, "db.query.text": text}
    )


def _trace_engine(engine: sa.engine.Engine, tracer: trace.Tracer) -> None:
    system = engine.dialect.name

    def before(_c: Any, _cur: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        span = _db_span(tracer, system, statement)
        if span is not None and context is not None:
            context._linksvc_span = span

    def after(_c: Any, _cur: Any, _s: Any, _p: Any, context: Any, _m: Any) -> None:
        span = getattr(context, "_linksvc_span", None)
        if span is not None:
            context._linksvc_span = None
            span.end()

    def failed(exc_ctx: Any) -> None:
        span = getattr(exc_ctx.execution_context, "_linksvc_span", None)
        if span is not None:
            exc_ctx.execution_context._linksvc_span = None
            _failed(span, exc_ctx.original_exception)
            span.end()

    if not sa.event.contains(engine, "before_cursor_execute", before):
        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)
        sa.event.listen(engine, "handle_error", failed)


class TracedConnection:
    """A hot driver connection (:class:`linksvc.store.db.HotConnections`) whose ``execute`` is
    spanned; everything else is the driver connection's own."""

    __slots__ = ("_conn", "_system", "_tracer")

    def __init__(self, conn: Any, system: str, tracer: trace.Tracer) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_system", system)
        object.__setattr__(self, "_tracer", tracer)

    def execute(self, sql: str, *params: Any) -> Any:
        span = _db_span(self._tracer, self._system, sql)
        if span is None:
            return self._conn.execute(sql, *params)
        try:
            return self._conn.execute(sql, *params)
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


# -- mail, storage, webhooks -------------------------------------------------------------


def _spanned(tracer: trace.Tracer, name: str, fn: Callable[..., Any], **attrs: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span(
            name,
            kind=_CLIENT,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                _failed(span, exc)
                raise

    return call


class RelayTracing:
    """:data:`linksvc.webhooks.relay.TRACING`: a span per delivery attempt, in the trace of the
    request that queued the event."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    @contextlib.contextmanager
    def attempt(self, c: outbox.Claimed) -> Iterator[trace.Span]:
        parent = _PROPAGATOR.extract({"traceparent": c.traceparent}) if c.traceparent else None
        with self.tracer.start_as_current_span(
            "webhook deliver",
            context=parent if parent is not None else otel_context.Context(),
            kind=_CLIENT,
            attributes={
                "linksvc.webhook.msg_id": c.msg_id,
                "linksvc.webhook.event": c.event_type,
                "linksvc.webhook.endpoint": c.endpoint_id,
                "linksvc.webhook.attempt": c.attempts,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    def inject(self, headers: dict[str, str]) -> None:
        _PROPAGATOR.inject(headers)

    def answer(self, status: int | None, error: str | None) -> None:
        span = trace.get_current_span()
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None or status is None or status >= 300:
            span.set_status(_ERROR)
            span.set_attribute("error.type", logs.redact(error or str(status)))


# -- logs ------------------------------------------------------------------------------


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` (and ``span_id``) of the current span to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled and getattr(record, "trace_id", None) is None:
            record.trace_id = f"{ctx.trace_id:032x}"
            record.span_id = f"{ctx.span_id:016x}"
        return True


def _trace_logs() -> None:
    # A second filter on linksvc's handler also sends logs.info's lines through logging's
    # records (logs._only_handler), which is where this filter sees them.
    for handler in logging.getLogger("linksvc").handlers:
        if getattr(handler, "_linksvc", False) and not any(
            isinstance(f, TraceIdFilter) for f in handler.filters
        ):
            handler.addFilter(TraceIdFilter())


def _patch(obj: Any, name: str, fn: Any) -> None:
    # The transports and storages are frozen dataclasses: their instance gets the traced
    # method as an attribute of its own, the class is untouched.
    object.__setattr__(obj, name, fn)


def install(app: Flask, *, exporters: set[str], traceparent: str) -> None:
    """Trace ``app``: its requests, database, mail, storage and the webhook relay."""
    tracer = _provider(exporters).get_tracer("linksvc")
    svc = services(app).links
    app.wsgi_app = TracingMiddleware(app.wsgi_app, tracer, traceparent)  # type: ignore[method-assign]
    app.before_request(_name_route)
    services(app).trace_error = _unexpected
    _trace_engine(svc.engine, tracer)
    system = svc.engine.dialect.name
    db.CONNECTION_HOOK = lambda _engine, conn: TracedConnection(conn, system, tracer)
    outbox.traceparent = current_traceparent
    relay.TRACING = RelayTracing(tracer)
    mailer = services(app).mailer
    if mailer is not None:
        transport = mailer.transport
        kind = type(transport).__name__.removesuffix("Transport").lower()
        _patch(
            transport,
            "send",
            _spanned(tracer, "mail send", transport.send, **{"linksvc.mail.transport": kind}),
        )
    store = services(app).storage
    backend = "s3" if type(store).__name__.startswith("S3") else "local"
    for method in ("stat", "presigned_url", "open_grant"):
        fn = getattr(store, method, None)
        if fn is not None:
            _patch(
                store,
                method,
                _spanned(tracer, f"storage {method}", fn, **{"linksvc.storage.backend": backend}),
            )
    _trace_logs()
