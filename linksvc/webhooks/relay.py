"""The relay: ``flask --app app webhooks run`` delivers the outbox.

One loop per process: claim due rows under a lease (:func:`linksvc.webhooks.outbox.claim`), as many
as there are idle delivery threads and never more than a few per endpoint, hand each to a
thread that sends it through :mod:`linksvc.webhooks.ssrf` and records the attempt
(:func:`linksvc.webhooks.outbox.finish`), and claim again as threads come free — the loop never waits
for a delivery, so one slow receiver holds its own rows, not everyone's. Each attempt has a
total deadline that ends before its lease does. Now and then the loop sweeps for expired
links and purges old deliveries. Any number of relays may run against one database,
on one node or several; each row goes to one of them at a time.

What a crash costs: a relay killed mid-delivery leaves its rows leased; when the lease
ends (the attempt's deadline plus a margin) another relay — or the same one restarted —
sends them again, with the same ``webhook-id``. Nothing is lost; a receiver may see a
message twice and deduplicates by ``webhook-id``. A database that goes away stops the loop
until it is back: the rows are where they were.

This module knows nothing of Flask.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import Engine

from linksvc import errors
from linksvc.webhooks import endpoints as webhooks
from linksvc.webhooks import outbox, ssrf
from linksvc.webhooks import signature as webhook_signature

log = logging.getLogger("linksvc.webhooks")

Sender = Callable[..., ssrf.Answer]


#: Seconds a lease outlasts the attempt it covers: for recording the attempt, and for the
#: clocks of relays on other nodes, which decide from their own clock that it ran out.
LEASE_MARGIN = 10

#: A claim slower than this (seconds) means the outbox's statistics are stale: the relay
#: refreshes them, at most once per STATISTICS_EVERY seconds (outbox.refresh_statistics).
CLAIM_SLOW = 0.1
STATISTICS_EVERY = 60.0

#: Set by linksvc.ops.tracing when tracing is on (None, and never called, otherwise):
#: ``attempt(claimed)`` is a context manager spanning one delivery attempt, continuing the
#: trace of the request that queued the event; ``inject(headers)`` adds its ``traceparent``
#: to the outgoing request; ``answer(status, error)`` records what the endpoint said.
TRACING: Any = None


class Relay:
    def __init__(
        self,
        engine: Engine,
        kek: bytes,
        *,
        rules: ssrf.Policy,
        timeout: float = 5.0,
        deadline: float = 15.0,
        lease_seconds: int | None = None,
        batch: int = 50,
        concurrency: int = 4,
        per_endpoint: int | None = 2,
        retention_seconds: int = 7 * 86400,
        clock: Callable[[], float] = time.time,
        resolver: ssrf.Resolver = socket.getaddrinfo,
        sender: Sender = ssrf.post,
    ) -> None:
        self.engine = engine
        self.kek = kek
        self.rules = rules
        self.timeout = timeout
        self.deadline = deadline
        self.lease_seconds = lease_seconds or int(deadline) + LEASE_MARGIN
        # An attempt is cut this long before its lease ends, so that no other relay can
        # take the row while it is still being sent (a message sent twice at once).
        self.margin = min(LEASE_MARGIN, self.lease_seconds / 2)
        self.batch = batch
        self.concurrency = concurrency
        self.per_endpoint = per_endpoint
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.resolver = resolver
        self.sender = sender
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="relay")
        self._busy = 0
        self._freed = threading.Condition()
        self._last_sweep = 0.0
        self._last_purge = 0.0
        self._last_statistics = -STATISTICS_EVERY

    def close(self) -> None:
        """Wait for the deliveries in hand (each ends by its deadline)."""
        self._pool.shutdown(wait=True)

    def now(self) -> int:
        return int(self.clock())

    def run_once(self) -> int:
        """Claim as many due rows as there are idle delivery slots and start them; never
        waits for a delivery. Returns how many it started."""
        with self._freed:
            free = self.concurrency - self._busy
        if free <= 0:
            return 0
        # Only what can start at once is claimed: a row claimed to wait in a queue would
        # spend its lease waiting for slow receivers, and then go to a second relay.
        started = time.monotonic()
        claimed = outbox.claim(
            self.engine,
            now=self.now(),
            limit=min(self.batch, free),
            lease_seconds=self.lease_seconds,
            per_endpoint=self.per_endpoint,
        )
        took = time.monotonic() - started
        if took > CLAIM_SLOW and started - self._last_statistics >= STATISTICS_EVERY:
            self._last_statistics = started
            if outbox.refresh_statistics(self.engine):
                log.info("webhook outbox statistics refreshed", extra={"ms": int(took * 1000)})
        for c in claimed:
            with self._freed:
                self._busy += 1
            self._pool.submit(self._run, c)
        return len(claimed)

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds``, less when a delivery ends (a slot is free again)."""
        with self._freed:
            self._freed.wait(seconds)

    def _run(self, c: outbox.Claimed) -> None:
        try:
            if TRACING is None:
                self._deliver(c)
            else:
                with TRACING.attempt(c):
                    self._deliver(c)
        except errors.ServiceUnavailable:
            log.warning("webhook relay: database unavailable", extra={"msg_id": c.msg_id})
        except Exception as exc:
            # The row keeps its lease until it runs out, then goes again: nothing is lost.
            log.error(
                "webhook relay: unexpected error",
                extra={"msg_id": c.msg_id, "error": type(exc).__name__},
            )
        finally:
            with self._freed:
                self._busy -= 1
                self._freed.notify_all()

    def _deliver(self, c: outbox.Claimed) -> outbox.Outcome | None:
        now = self.now()
        try:
            secret_list = webhooks.signing_secrets(
                self.kek, c.endpoint_id, c.secret_enc, c.old_secret_enc, c.old_secret_until, now
            )
        except webhooks.WebhookError as exc:
            log.error(
                "webhook not sent",
                extra={"msg_id": c.msg_id, "endpoint": c.endpoint_id, "error": str(exc)},
            )
            return None  # the lease runs out; it is tried again once the KEK is right
        body = c.payload.encode()
        # webhook-timestamp is the time of this attempt: receivers refuse old timestamps.
        headers = webhook_signature.headers(secret_list, c.msg_id, now, body)
        if TRACING is not None:
            TRACING.inject(headers)
        deadline = min(self.deadline, c.lease_until - self.margin - self.clock())
        if deadline <= 0:
            return None  # no time left under this lease: the next claim sends it
        answer = self.sender(
            c.url,
            body,
            headers,
            policy=self.rules,
            timeout=self.timeout,
            deadline=deadline,
            resolver=self.resolver,
        )
        if TRACING is not None:
            TRACING.answer(answer.status, answer.error)
        try:
            outcome = outbox.finish(
                self.engine,
                c,
                status=answer.status,
                error=answer.error,
                duration_ms=int(answer.seconds * 1000),
                now=self.now(),
            )
        except errors.ServiceUnavailable:
            # Delivered (or not) but unrecorded: the lease runs out and it is sent again.
            log.warning(
                "webhook attempt not recorded (database unavailable)",
                extra={"msg_id": c.msg_id, "endpoint": c.endpoint_id, "status": answer.status},
            )
            return None
        extra: dict[str, Any] = {
            "msg_id": c.msg_id,
            "endpoint": c.endpoint_id,
            "client": c.client_id,
            "event": c.event_type,
            "jti": c.jti,
            "attempt": c.attempts,
            "status": answer.status,
            "error": answer.error,
            "outcome": outcome.state,
        }
        if outcome.state == "delivered":
            log.info("webhook delivered", extra=extra)
        else:
            log.info("webhook attempt failed", extra=extra)
        if outcome.endpoint_disabled:
            log.warning(
                "webhook endpoint disabled",
                extra={
                    "endpoint": c.endpoint_id,
                    "client": c.client_id,
                    "reason": outcome.endpoint_disabled,
                    "outcome": "endpoint_disabled",
                },
            )
        return outcome

    def housekeeping(self) -> None:
        """The ``link.expired`` sweep (every few seconds) and the purge (hourly)."""
        mono = time.monotonic()
        if mono - self._last_sweep >= 5:
            self._last_sweep = mono
            outbox.sweep_expired(self.engine, now=self.now())
        if mono - self._last_purge >= 3600:
            self._last_purge = mono
            outbox.purge(self.engine, now=self.now(), retention_seconds=self.retention_seconds)

    def run(self, stop: threading.Event, *, poll: float = 0.5) -> None:
        """Until ``stop`` is set: deliver what is due, then wait ``poll`` seconds when idle."""
        log.info("webhook relay started", extra={"lease_seconds": self.lease_seconds})
        down = False
        while not stop.is_set():
            try:
                self.housekeeping()
                handled = self.run_once()
                if down:
                    log.info("webhook relay: database back")
                    down = False
            except errors.ServiceUnavailable:
                if not down:
                    log.warning("webhook relay: database unavailable; waiting")
                    down = True
                handled = 0
                stop.wait(1.0)
            except Exception as exc:
                # A relay that stops on the unexpected stops every delivery; its rows are
                # safe in the outbox, so it logs, waits and tries again.
                log.error("webhook relay: unexpected error", extra={"error": type(exc).__name__})
                handled = 0
                stop.wait(1.0)
            if not handled and not stop.is_set():
                self.wait(poll)
        log.info("webhook relay stopped")
