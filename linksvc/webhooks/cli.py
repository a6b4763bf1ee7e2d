"""``flask --app app webhooks add | list | rotate-secret | disable | enable | remove |
on-replay | deliveries | replay | run``: thin commands over :mod:`linksvc.webhooks.endpoints`,
:mod:`linksvc.webhooks.outbox` and :mod:`linksvc.webhooks.relay`; and the app hook that wires them in.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from linksvc import errors
from linksvc.cli import _iso, _kek, _settings, _svc
from linksvc.clients import registry as clients_mod
from linksvc.formats import iso
from linksvc.services import services
from linksvc.store import db
from linksvc.webhooks import endpoints as webhooks
from linksvc.webhooks import outbox, relay

webhooks_cli = AppGroup("webhooks", help="Manage webhook endpoints and run the relay.")


def _client(conn: Any, ident: str) -> clients_mod.Client:
    c = clients_mod.find(conn, ident)
    if c is None:
        raise click.ClickException(f"no client {ident!r}")
    return c


def _attempt_json(a: outbox.Attempt) -> dict[str, object]:
    return {"at": iso(a.at), "status": a.status, "error": a.error, "duration_ms": a.duration_ms}


def _endpoint_json(e: webhooks.Endpoint) -> dict[str, object]:
    return {
        "endpoint_id": e.id,
        "client_id": e.client_id,
        "url": e.url,
        "events": list(e.events) if e.events else None,
        "disabled": e.disabled,
        "disabled_reason": e.disabled_reason,
        "disabled_at": iso(e.disabled_at),
        "failing_since": iso(e.failing_since),
        "rotating_until": iso(e.rotating_until),
        "created_at": iso(e.created_at),
    }


@webhooks_cli.command("add")
@click.argument("client")
@click.argument("url")
@click.option(
    "--events",
    help=f"Comma-separated event types (default: all): {', '.join(outbox.EVENT_TYPES)}.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the secret.")
def add_cmd(client: str, url: str, events: str | None, as_json: bool) -> None:
    """Send CLIENT's events to URL; prints the signing secret (shown only now)."""
    kek = _kek()
    try:
        with db.write(_svc().engine) as conn:
            c = _client(conn, client)
            endpoint, secret = webhooks.add(
                conn,
                kek,
                c.id,
                url,
                events=events.split(",") if events else None,
                rules=webhooks.policy(_settings()),
                now=_svc().now(),
            )
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**_endpoint_json(endpoint), "secret": secret}))
    else:
        click.echo(
            f"endpoint_id: {endpoint.id}\nsecret:      {secret}\n"
            "(the secret is shown only now; events start within 5 seconds)"
        )


@webhooks_cli.command("list")
@click.argument("client", required=False)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(client: str | None, as_json: bool) -> None:
    """Endpoints (of CLIENT, or all), never their secrets."""
    with db.read(_svc().engine) as conn:
        client_id = _client(conn, client).id if client else None
        found = webhooks.list_endpoints(conn, client_id)
    if as_json:
        click.echo(json.dumps([_endpoint_json(e) for e in found]))
        return
    for e in found:
        state = f"disabled ({e.disabled_reason})" if e.disabled else "enabled"
        events = ",".join(e.events) if e.events else "all"
        click.echo(f"{e.id}  {e.client_id}  {state:<20} events={events}  {e.url}")


@webhooks_cli.command("rotate-secret")
@click.argument("endpoint_id")
@click.option(
    "--grace",
    type=click.IntRange(0, 7 * 86400),
    default=webhooks.ROTATION_GRACE_SECONDS,
    show_default=True,
    help="Seconds the previous secret keeps signing beside the new one.",
)
@click.option("--json", "as_json", is_flag=True)
def rotate_cmd(endpoint_id: str, grace: int, as_json: bool) -> None:
    """A new signing secret (shown only now); the old one also signs during --grace."""
    try:
        with db.write(_svc().engine) as conn:
            e, secret = webhooks.rotate_secret(
                conn, _kek(), endpoint_id, now=_svc().now(), grace=grace
            )
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**_endpoint_json(e), "secret": secret}))
    else:
        click.echo(
            f"endpoint_id: {e.id}\nsecret:      {secret}\n"
            f"(shown only now; the previous secret also signs until {_iso(e.rotating_until)})"
        )


def _set_disabled(endpoint_id: str, disabled: bool) -> None:
    try:
        with db.write(_svc().engine) as conn:
            e = webhooks.set_disabled(conn, endpoint_id, disabled, now=_svc().now())
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'disabled' if e.disabled else 'enabled'} {e.id} ({e.url})")


@webhooks_cli.command("disable")
@click.argument("endpoint_id")
def disable_cmd(endpoint_id: str) -> None:
    """Stop sending to an endpoint (its queued events wait until it is enabled)."""
    _set_disabled(endpoint_id, True)


@webhooks_cli.command("enable")
@click.argument("endpoint_id")
def enable_cmd(endpoint_id: str) -> None:
    """Send to an endpoint again (after disable, a 410, or 3 days of failures)."""
    _set_disabled(endpoint_id, False)


@webhooks_cli.command("remove")
@click.argument("endpoint_id")
def remove_cmd(endpoint_id: str) -> None:
    """Delete an endpoint, its queued events and its delivery history."""
    try:
        with db.write(_svc().engine) as conn:
            n = webhooks.remove(conn, endpoint_id)
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {endpoint_id} and {n} deliveries")


@webhooks_cli.command("on-replay")
@click.argument("client")
@click.argument("action", type=click.Choice([*outbox.ON_REPLAY, "none"]))
def on_replay_cmd(client: str, action: str) -> None:
    """What a consumed link presented again does besides its link.replayed event:
    revoke-subject revokes every outstanding link of its subject (noted in their history)."""
    with db.write(_svc().engine) as conn:
        c = _client(conn, client)
        webhooks.set_on_replay(conn, c.id, None if action == "none" else action, now=_svc().now())
    click.echo(f"on replay, {c.id} ({c.name}): {action} (takes effect within 5 seconds)")


@webhooks_cli.command("deliveries")
@click.argument("client")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--state", type=click.Choice([outbox.PENDING, outbox.DELIVERED, outbox.FAILED]))
@click.option("--attempts", "show_attempts", is_flag=True, help="List each attempt too.")
@click.option("--json", "as_json", is_flag=True)
def deliveries_cmd(
    client: str, limit: int, state: str | None, show_attempts: bool, as_json: bool
) -> None:
    """CLIENT's newest events and how their delivery went."""
    with db.read(_svc().engine) as conn:
        c = _client(conn, client)
        found = outbox.deliveries(conn, c.id, limit=limit, state=state)
        tries = {d.id: outbox.attempts(conn, d.id) for d in found} if show_attempts else {}
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "msg_id": d.msg_id,
                        "endpoint_id": d.endpoint_id,
                        "type": d.event_type,
                        "jti": d.jti,
                        "state": d.state,
                        "attempts": d.attempts,
                        "created_at": iso(d.created_at),
                        "next_attempt_at": iso(d.next_attempt_at),
                        "delivered_at": iso(d.delivered_at),
                        "last_status": d.last_status,
                        "last_error": d.last_error,
                        **(
                            {"tries": [_attempt_json(a) for a in tries[d.id]]}
                            if show_attempts
                            else {}
                        ),
                    }
                    for d in found
                ]
            )
        )
        return
    for d in found:
        last = d.last_status if d.last_status is not None else (d.last_error or "-")
        click.echo(
            f"{d.msg_id}  {d.endpoint_id}  {d.event_type:<15} {d.state:<9} attempts={d.attempts}"
            f" last={last} created={_iso(d.created_at)} jti={d.jti or '-'}"
        )
        for a in tries.get(d.id, []):
            click.echo(
                f"    {_iso(a.at)}  {a.status if a.status is not None else a.error}  {a.duration_ms} ms"
            )


@webhooks_cli.command("replay")
@click.argument("client")
@click.argument("msg_id", required=False)
@click.option("--failed", is_flag=True, help="Every delivery of CLIENT that was given up.")
def replay_cmd(client: str, msg_id: str | None, failed: bool) -> None:
    """Send an event again (same webhook-id, fresh retry schedule), or every given-up one."""
    if (msg_id is None) == (not failed):
        raise click.UsageError("name one MSG_ID or pass --failed")
    with db.write(_svc().engine) as conn:
        c = _client(conn, client)
        n = outbox.replay(conn, c.id, now=_svc().now(), msg_id=msg_id, failed=failed)
    if msg_id is not None and n == 0:
        raise click.ClickException(f"no delivery {msg_id!r} for {c.id}")
    click.echo(f"queued {n} deliveries again")


@webhooks_cli.command("run")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--poll", type=float, default=0.5, show_default=True, help="Idle wait, seconds.")
@click.option(
    "--lease",
    type=click.IntRange(1, 3600),
    help="Lease seconds (default LINKSVC_WEBHOOK_DEADLINE + 10); an attempt is cut before it ends.",
)
def run_cmd(concurrency: int, batch: int, poll: float, lease: int | None) -> None:
    """Deliver the outbox until SIGTERM or SIGINT. Run one or more beside the service."""
    s = _settings()
    r = relay.Relay(
        _svc().engine,
        _kek(),
        rules=webhooks.policy(s),
        timeout=s.webhook_timeout,
        deadline=s.webhook_deadline,
        lease_seconds=lease,
        batch=batch,
        concurrency=concurrency,
        per_endpoint=s.webhook_endpoint_concurrency,
        retention_seconds=s.retention_days * 86400,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        r.run(stop, poll=poll)
    finally:
        r.close()


class WebhookCollector(Collector):
    """Endpoints by state, and the outbox backlog, read from the database at scrape time
    (relays are separate processes; the database is where their work shows)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        svc = services(self.app).links
        endpoints = GaugeMetricFamily(
            "linksvc_webhook_endpoints",
            "Webhook endpoints by state (enabled, disabled) and why disabled"
            " (operator, gone: answered 410, failing: 3 days without a success).",
            labels=["state", "reason"],
        )
        backlog = GaugeMetricFamily(
            "linksvc_webhook_outbox", "Outbox rows pending or given up.", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "linksvc_webhook_oldest_pending_seconds", "Age of the oldest undelivered event."
        )
        try:
            with db.read(svc.engine) as conn:
                st = outbox.stats(conn, svc.now())
        except errors.ServiceUnavailable:
            return
        seen = {("enabled", ""): 0, **{("disabled", r): 0 for r in ("operator", "gone", "failing")}}
        for disabled, reason, n in st["endpoints"]:
            key = ("disabled", reason or "operator") if disabled else ("enabled", "")
            seen[key] = seen.get(key, 0) + n
        for (state, reason), n in seen.items():
            endpoints.add_metric([state, reason], n)
        backlog.add_metric([outbox.PENDING], st["pending"])
        backlog.add_metric([outbox.FAILED], st["failed"])
        oldest.add_metric([], st["oldest_pending_seconds"])
        yield endpoints
        yield backlog
        yield oldest


def init_app(app: Flask) -> None:
    app.cli.add_command(webhooks_cli)
    services(app).collectors.append(WebhookCollector)
