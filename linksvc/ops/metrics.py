"""Prometheus metrics: ``GET /metrics``.

What is counted: links minted (by purpose and client), verifications and redemptions (by
purpose and outcome — ``consumed``/``valid`` or the rejection's reason code), request
latency by endpoint, responses by endpoint and status, and the signing keys' ages.

Under gunicorn every worker is its own process, so the counters live in files under
``PROMETHEUS_MULTIPROC_DIR`` (set up, emptied and cleaned by ``gunicorn.conf.py``) and a
scrape sums every worker's, dead ones included, whichever worker answers. Without that
directory (``flask run``, tests) the process's own registry is used.

The link counters are fed by :attr:`linksvc.links.service.LinkService.observers`, so the pages and
the API are counted alike. Metric names carry no token, API key or subject; the client
label is the client's public id.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection, Iterator
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from linksvc import errors
from linksvc.config import PURPOSES
from linksvc.services import services
from linksvc.store import db, partitions

REGISTRY = CollectorRegistry(auto_describe=True)
# The ``_created`` series double the output and say nothing a scrape needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

MINTED = Counter("linksvc_links_minted", "Links minted.", ["purpose", "client"], registry=REGISTRY)
REDEMPTIONS = Counter(
    "linksvc_redemptions",
    "Redemption attempts by outcome: consumed, or the reason code.",
    ["purpose", "outcome"],
    registry=REGISTRY,
)
VERIFICATIONS = Counter(
    "linksvc_verifications",
    "Verification attempts by outcome: valid, or the reason code.",
    ["purpose", "outcome"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "linksvc_request_duration_seconds",
    "Time from request start to response, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESPONSES = Counter(
    "linksvc_http_responses",
    "Responses by endpoint and status code.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
MAIL = Counter(
    "linksvc_mail",
    "Link mails handed to the transport (sent) or refused by it (failed).",
    ["outcome"],
    registry=REGISTRY,
)
# Summed over the live workers only: a dead worker's connections are gone with it.
POOL_IN_USE = Gauge(
    "linksvc_db_pool_in_use",
    "Database connections checked out of the workers' pools.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


def reason_codes() -> list[str]:
    """Every reason code a link failure can carry (from :mod:`linksvc.errors`)."""
    seen: dict[str, None] = {}
    stack: list[type[errors.LinkError]] = [errors.LinkError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls is not errors.LinkError:
            seen[cls.reason] = None
    return sorted(seen)


def _purpose_label(purposes: Collection[str]) -> str:
    # One purpose per API call; a page accepting several (sign-in or reset) is "any".
    return next(iter(purposes)) if len(purposes) == 1 else "any"


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: ``labels()`` takes a lock and builds its key
    on every call, a dict lookup does not. The label sets are bounded (endpoints, status
    codes, purposes, reason codes, registered clients)."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe(action: str, outcome: str, purposes: Collection[str], client: str | None) -> None:
    """A :attr:`LinkService.observers` callback: count one mint, verification or redemption."""
    if action == "mint":
        _child(MINTED, _purpose_label(purposes), client or "none").inc()
    elif action == "redeem":
        _child(REDEMPTIONS, _purpose_label(purposes), outcome).inc()
    elif action == "verify":
        _child(VERIFICATIONS, _purpose_label(purposes), outcome).inc()


def _preinitialise() -> None:
    # Every series exists from the start at 0, so rate() and alerts see the first failure.
    for purpose in (*PURPOSES, "any"):
        for outcome in ("consumed", *reason_codes()):
            REDEMPTIONS.labels(purpose, outcome)
        for outcome in ("valid", *reason_codes()):
            VERIFICATIONS.labels(purpose, outcome)
    for outcome in ("sent", "failed"):
        MAIL.labels(outcome)


class KeyAgeCollector(Collector):
    """The published signing keys' ages, read from the app's key ring at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "linksvc_signing_key_age_seconds",
            "Seconds since each published key was created.",
            labels=["kid", "alg", "state"],
        )
        in_state = GaugeMetricFamily(
            "linksvc_signing_key_state_age_seconds",
            "Seconds since each published key entered its state (activated, retired).",
            labels=["kid", "alg", "state"],
        )
        svc = services(self.app).links
        now = svc.now()
        try:
            published = svc.keyring.published()
        except errors.ServiceUnavailable:
            published = []  # the database is down; /readyz says so, the gauges just go absent
        for k in published:
            since = {"active": k.activated_at, "retired": k.retired_at}.get(k.state) or k.created_at
            age.add_metric([k.kid, k.alg, k.state], now - k.created_at)
            in_state.add_metric([k.kid, k.alg, k.state], now - since)
        yield age
        yield in_state


class LedgerCollector(Collector):
    """What the maintenance jobs leave behind, read from the database at scrape time: the
    jobs are cron runs, not processes a scrape could ask, so their work shows only in the
    ledger. Also whether the database answers (what ``/readyz`` asks)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        svc = services(self.app).links
        settings = self.app.config["LINKSVC"]
        ready = GaugeMetricFamily(
            "linksvc_database_ready", "1 when the database answers a ping, else 0."
        )
        pool = GaugeMetricFamily(
            "linksvc_db_pool_size", "Connections each worker's pool keeps (LINKSVC_DB_POOL_SIZE)."
        )
        pool.add_metric([], settings.db_pool_size)
        yield pool
        up = svc.ready()
        ready.add_metric([], 1 if up else 0)
        yield ready
        if not up:
            return
        now = svc.now()
        overdue = GaugeMetricFamily(
            "linksvc_ledger_purge_overdue_seconds",
            "How long the oldest link has been kept past exp plus the retention"
            " (LINKSVC_RETENTION_DAYS); grows while purge does not run.",
        )
        ahead = GaugeMetricFamily(
            "linksvc_ledger_partitions_ahead_days",
            "Days after today with a partition of their own, counted from today"
            " (PostgreSQL's partitioned ledger only).",
            labels=["table"],
        )
        try:
            with db.read(svc.engine) as conn:
                oldest = conn.execute(sa.select(sa.func.min(db.links.c.exp))).scalar()
                if partitions.is_partitioned(conn):
                    for table in partitions.KEYS:
                        have = partitions.days(conn, table)
                        day, n = partitions.day_of(now), -1
                        while day in have:
                            day, n = day + partitions.DAY, n + 1
                        ahead.add_metric([table], n)
        except errors.ServiceUnavailable:
            return
        kept = 0 if oldest is None else now - int(oldest) - settings.retention_days * 86400
        overdue.add_metric([], max(0, kept))
        yield overdue
        if ahead.samples:
            yield ahead


def scrape(app: Flask) -> bytes:
    """The metrics text: every worker's counters (multiprocess mode) or this process's."""
    registry = CollectorRegistry(auto_describe=False)
    # prometheus_client itself chooses file-backed values when the same variable is set at
    # import time (config.Settings.metrics_dir).
    multiproc_dir = app.config["LINKSVC"].metrics_dir
    if multiproc_dir is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(KeyAgeCollector(app))
    registry.register(LedgerCollector(app))
    for collector in services(app).collectors:  # e.g. the webhook backlog
        registry.register(collector(app))
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


def _start_timer() -> None:
    g._metrics_t0 = time.perf_counter()


def _stop_timer(resp: Response) -> Response:
    t0 = g.get("_metrics_t0")
    if t0 is not None:
        endpoint = request.endpoint or "none"
        _child(LATENCY, endpoint).observe(time.perf_counter() - t0)
        _child(RESPONSES, endpoint, str(resp.status_code)).inc()
    return resp


def _authorised() -> bool:
    """With ``LINKSVC_METRICS_TOKEN`` set, a scrape must bring it as a bearer token."""
    token = current_app.config["LINKSVC"].metrics_token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_view() -> Response:
    if not _authorised():
        from linksvc.web.http import problem

        return problem(401, "unauthorized", "Send the metrics token as 'Authorization: Bearer'.")
    return Response(
        scrape(current_app._get_current_object()),  # type: ignore[attr-defined]
        mimetype=None,
        content_type=CONTENT_TYPE_LATEST,
    )


def _count_pool(engine: sa.engine.Engine) -> None:
    if sa.event.contains(engine, "checkout", _checked_out):
        return
    sa.event.listen(engine, "checkout", _checked_out)
    sa.event.listen(engine, "checkin", _checked_in)


def _checked_out(*_: Any) -> None:
    POOL_IN_USE.inc()


def _checked_in(*_: Any) -> None:
    POOL_IN_USE.dec()


def init_app(app: Flask) -> None:
    _preinitialise()
    svc = services(app).links
    if observe not in svc.observers:
        svc.observers.append(observe)
    _count_pool(svc.engine)
    app.before_request(_start_timer)
    app.after_request(_stop_timer)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
