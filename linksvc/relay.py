"""The relay: ``flask --app app webhooks run`` delivers the outbox.

One loop per process: claim due rows under a lease (:func:`linksvc.outbox.claim`), send
each with a short timeout through :mod:`linksvc.ssrf` (several at once in a small thread
pool), record the attempt (:func:`linksvc.outbox.finish`), and now and then sweep for
expired links and purge old deliveries. Any number of relays may run against one database,
on one node or several; each row goes to one of them at a time.

What a crash costs: a relay killed mid-delivery leaves its rows leased; when the lease
ends (the delivery timeout plus a margin) another relay — or the same one restarted —
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

from . import errors, outbox, ssrf, webhook_signature, webhooks

log = logging.getLogger("linksvc.webhooks")

Sender = Callable[..., ssrf.Answer]


class Relay:
    def __init__(
        self,
        engine: Engine,
        kek: bytes,
        *,
        rules: ssrf.Policy,
        timeout: float = 5.0,
        lease_seconds: int | None = None,
        batch: int = 50,
        concurrency: int = 4,
        retention_seconds: int = 7 * 86400,
        clock: Callable[[], float] = time.time,
        resolver: ssrf.Resolver = socket.getaddrinfo,
        sender: Sender = ssrf.post,
    ) -> None:
        self.engine = engine
        self.kek = kek
        self.rules = rules
        self.timeout = timeout
        # A delivery ends within about two timeouts (connect, then reads); the lease outlasts it.
        self.lease_seconds = lease_seconds or int(timeout * 3) + 5
        self.batch = batch
        self.concurrency = concurrency
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.resolver = resolver
        self.sender = sender
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="relay")
        self._last_sweep = 0.0
        self._last_purge = 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def now(self) -> int:
        return int(self.clock())

    def run_once(self) -> int:
        """Claim one batch, deliver it, record it. Returns how many rows it handled."""
        claimed = outbox.claim(
            self.engine, now=self.now(), limit=self.batch, lease_seconds=self.lease_seconds
        )
        if claimed:
            list(self._pool.map(self._deliver, claimed))
        return len(claimed)

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
        answer = self.sender(
            c.url, body, headers, policy=self.rules, timeout=self.timeout, resolver=self.resolver
        )
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
            if not handled:
                stop.wait(poll)
        log.info("webhook relay stopped")
