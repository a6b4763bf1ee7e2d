"""Rate limits: per client and per (client, subject, purpose) on minting, per IP on the pages.

Counters live in the store named by ``LINKSVC_RATELIMIT_STORAGE_URL`` (``memory://`` by
default, one counter per worker process; ``redis://…`` in production, shared by every
worker and node). Flask-Limiter builds the store and the moving-window strategy; the
limits themselves are checked here because they depend on the authenticated client and on
the parsed mint body, which the API view hands to :meth:`RateLimits.check_mint`.

A limited request gets ``429`` with ``Retry-After``: problem+json on the API, an HTML page
on the end-user pages. The answer to a limited mint is the same whatever the subject, so it
tells nobody whether links were ever minted for it, and the limited mint changes nothing
(no link, no supersede, no mail).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import secrets
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, Response, g, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from limits.util import WindowStats
from werkzeug.middleware.proxy_fix import ProxyFix

from linksvc.clients.registry import Client
from linksvc.config import ConfigError, Settings
from linksvc.services import services
from linksvc.web.http import problem

log = logging.getLogger("linksvc.ratelimit")

#: Limits for clients created without their own (``clients create --mint-limit/--subject-limit``).
DEFAULT_MINT_LIMIT = "60 per minute"
DEFAULT_SUBJECT_LIMIT = "5 per 15 minutes"

#: Paths of the end-user pages (``/s/``: sign-ins' waiting pages), limited per IP. Not /dl/: a download in progress makes
#: many Range requests against one short-lived grant.
PAGE_PREFIXES = ("/l/", "/d/", "/s/")

#: After the shared store fails, count in memory this long before trying it again.
STORE_RETRY_SECONDS = 5.0

LIMITED_DETAIL = "Too many requests; try again later."


class _SweepingMemoryStorage(MemoryStorage):
    """limits' in-memory store, sweeping expired entries once a second instead of every 10 ms.

    The stock store starts a timer thread on nearly every hit and its sweep walks every key:
    with one key per (client, subject, purpose) kept for the subject window, a busy worker
    holds tens of thousands of keys and spent a growing share of its time sweeping them
    (the bench's mint rate halved over a 150 s soak). Counting is unaffected: the moving
    window compares entry times itself; the sweep only frees memory.
    """

    SWEEP_SECONDS = 1.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the private hook of MemoryStorage
        if not self.timer.is_alive():
            self.timer = threading.Timer(self.SWEEP_SECONDS, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
            self.timer.daemon = True
            self.timer.start()


class LocalMovingWindow:
    """A moving-window limiter in this process's memory, for ``memory://``.

    Per key it keeps the times of its hits inside the window, oldest first, and drops the
    ones that left it as the key is hit again, so a hit costs the same whatever the limit
    (limits' own store inserted every hit at the front of a list as long as the window's
    count, O(n) per hit, and ran a sweeping timer thread). Keys idle for a whole window are
    dropped, oldest first, as later hits come by: each key is dropped once, so the cleaning
    is paid a little per hit, never all at once.

    Memory is one entry per key hit in the last window: with one key per (client, subject,
    purpose), a worker minting for many subjects holds tens of thousands. Most such keys
    are hit once, so their times are a list (64 bytes; a deque's first block alone is 760);
    a key hit more than ``LIST_HITS`` times in a window moves to a deque, which drops its
    oldest hit in O(1).
    """

    LIST_HITS = 16

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # expiry (s) -> key -> its hit times in the window, least recently hit key first
        self._windows: dict[int, OrderedDict[tuple[Any, ...], list[float] | deque[float]]] = {}

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        # The window is per expiry already; the key is the identifiers and the amount (a
        # tuple: limits' own key_for escapes and joins them into a string on every hit).
        key, amount, expiry = (item.amount, *identifiers), item.amount, item.get_expiry()
        now = self.clock()
        cutoff = now - expiry
        with self._lock:
            window = self._windows.setdefault(expiry, OrderedDict())
            while window:
                oldest = next(iter(window.values()))
                if oldest and oldest[-1] > cutoff:
                    break
                window.popitem(last=False)
            hits = window.get(key)
            if hits is None:
                hits = window[key] = []
            else:
                window.move_to_end(key)
                while hits and hits[0] <= cutoff:
                    del hits[0]
            if len(hits) >= amount:
                return False
            hits.append(now)
            if len(hits) > self.LIST_HITS and isinstance(hits, list):
                window[key] = deque(hits)
            return True

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        key, amount, expiry = (item.amount, *identifiers), item.amount, item.get_expiry()
        now = self.clock()
        with self._lock:
            window = self._windows.get(expiry)
            hits = window.get(key) if window is not None else None
            live = [t for t in hits or () if t > now - expiry]
        reset = (live[0] if len(live) >= amount else now) + expiry
        return WindowStats(reset, max(0, amount - len(live)))


@functools.lru_cache(maxsize=256)
def _parse(limits: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limits))


class RateLimited(Exception):
    """A limit was reached. ``retry_after`` is in whole seconds (≥ 1)."""

    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(f"rate limited ({scope})")
        self.scope = scope
        self.retry_after = retry_after


class RateLimits:
    """Hit named limits against the configured store.

    If the shared store (Redis) stops answering, counting continues in this process's
    memory rather than failing every mint and page: limits get looser (per worker), the
    service stays up, and the log says so.
    """

    def __init__(self, limiter: Limiter, *, prefix: str = "linksvc") -> None:
        self._limiter = limiter
        self._fallback: RateLimiter = MovingWindowRateLimiter(_SweepingMemoryStorage())
        self._store_down_until = 0.0
        #: First part of every key; tests give each run its own so parallel runs never share counters.
        self.prefix = prefix

    #: Set for ``memory://``: counting in this process, O(1) per hit.
    local: LocalMovingWindow | None = None

    @property
    def strategy(self) -> RateLimiter | LocalMovingWindow:
        return self.local if self.local is not None else self._limiter.limiter

    def hit(self, scope: str, limits: str, *keys: str) -> None:
        """Count one request against every limit in ``limits`` (``"5 per minute;100 per day"``)
        for ``keys``; raise :class:`RateLimited` if any is exhausted."""
        items = _parse(limits)
        ident = (self.prefix, scope, *keys)
        if self.local is not None:  # memory://: nothing that can fail to answer
            self._hit(self.local, items, ident, scope)
            return
        if time.monotonic() < self._store_down_until:
            self._hit(self._fallback, items, ident, scope)
            return
        try:
            self._hit(self.strategy, items, ident, scope)
        except RateLimited:
            raise
        except Exception as exc:
            # Try the store again only after a pause, so an unreachable Redis costs one
            # connect timeout per pause, not one per request.
            self._store_down_until = time.monotonic() + STORE_RETRY_SECONDS
            log.warning(
                "rate limit storage unavailable; counting in memory",
                extra={
                    "error": type(exc).__name__,
                    "scope": scope,
                    "retry_in": STORE_RETRY_SECONDS,
                },
            )
            self._hit(self._fallback, items, ident, scope)

    def _hit(
        self,
        strategy: RateLimiter | LocalMovingWindow,
        items: Sequence[RateLimitItem],
        ident: tuple[str, ...],
        scope: str,
    ) -> None:
        breached = [item for item in items if not strategy.hit(item, *ident)]
        if breached:
            now = time.time()
            reset = max(strategy.get_window_stats(item, *ident).reset_time for item in breached)
            raise RateLimited(scope, max(1, math.ceil(reset - now)))

    #: Limits per recipient of mail (``LINKSVC_RECIPIENT_LIMIT``), across subjects and clients.
    recipient_limit = "5 per 15 minutes"
    #: Key of the recipient hash (``LINKSVC_SECRET_KEY``; a per-process one without it).
    recipient_key = b""

    def recipient_hash(self, address: str) -> str:
        """A keyed hash of the normalised address (case, surrounding space and ``+tag``
        ignored): the store never holds the address, nor a hash anyone could recompute."""
        local, _, domain = address.strip().lower().rpartition("@")
        normal = f"{local.split('+', 1)[0]}@{domain}"
        return hmac.new(
            self.recipient_key, b"linksvc.recipient\0" + normal.encode(), hashlib.sha256
        ).hexdigest()[:32]

    def check_mint(
        self, client: Client, subject: str, purpose: str, recipient: str | None = None
    ) -> None:
        """The mint limits: the client's overall rate, then its rate for one subject and
        purpose, then (a mint that sends mail) the rate of mail to one address — rotating
        the subject must not flood one mailbox."""
        self.hit("mint", client.mint_limit or DEFAULT_MINT_LIMIT, client.id)
        # The subject is an opaque id, but hashed all the same: keys stay short and carry
        # nothing an operator browsing the store could read.
        subject_key = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        self.hit(
            "subject",
            client.subject_limit or DEFAULT_SUBJECT_LIMIT,
            client.id,
            # One of a few names: the in-memory key holds the one interned copy, not this
            # request's (59 bytes per key, a key per subject for the subject window).
            sys.intern(purpose),
            subject_key,
        )
        if recipient is not None:
            self.hit("recipient", self.recipient_limit, self.recipient_hash(recipient))


def _storage_options(url: str) -> dict[str, float]:
    # A Redis that does not answer must not hold a request for long; the in-memory
    # fallback takes over instead.
    if url.startswith(("redis://", "rediss://", "redis+")):
        return {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
    return {}


def _too_many_api(exc: RateLimited) -> Response:
    resp = problem(429, "rate_limited", LIMITED_DETAIL, retry_after=exc.retry_after)
    resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def _too_many_page(exc: RateLimited) -> Response:
    from linksvc.web.html import render_failure

    resp = render_failure("rate_limited", 429)
    resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def init_app(app: Flask) -> None:
    settings: Settings = app.config["LINKSVC"]
    if settings.trusted_proxies > 0 and not isinstance(app.wsgi_app, ProxyFix):
        # Only behind proxies we were told about: otherwise anyone could pick their own
        # address with X-Forwarded-For and walk around the per-IP limit.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    url = settings.ratelimit_storage_url
    try:
        limiter = Limiter(
            key_func=lambda: request.remote_addr or "-",
            storage_uri=url,
            storage_options=_storage_options(url),  # type: ignore[arg-type]
            strategy="moving-window",
            headers_enabled=False,
            key_prefix="linksvc",
        )
        limiter.init_app(app)
    except (LimitsConfigurationError, ValueError) as exc:
        # Whatever config.load could not see in the URL: a message naming it, not a traceback.
        raise ConfigError("LINKSVC_RATELIMIT_STORAGE_URL", str(exc).splitlines()[0]) from None
    # linksvc applies its limits itself (they depend on the authenticated client and the
    # parsed mint body) and declares none on routes, so Flask-Limiter's own per-request
    # check would only search for route limits that do not exist — about 7 % of a mint.
    app.before_request_funcs[None].remove(limiter._check_request_limit)

    # Its after-request (rate-limit headers, conditional deductions) and teardown (its
    # per-request context) serve those route limits too: nothing to do on any request.
    def _ours(hook: object) -> bool:
        owner = getattr(hook, "__self__", None) or (getattr(hook, "args", None) or (None,))[0]
        return owner is limiter

    for hooks in (app.after_request_funcs, app.teardown_request_funcs):
        hooks[None] = [h for h in hooks.get(None, []) if not _ours(h)]
    limits = RateLimits(limiter)
    limits.recipient_limit = settings.recipient_limit
    limits.recipient_key = settings.secret_key or secrets.token_bytes(32)
    if url.startswith("memory://"):
        limits.local = LocalMovingWindow()
    found = services(app)
    found.ratelimit = limits
    # The mint view calls this with the parsed body (one parse, no second read of the body).
    found.mint_guard = limits.check_mint

    def page_limit() -> Response | None:
        if not request.path.startswith(PAGE_PREFIXES):
            return None
        try:
            limits.hit("page", settings.page_rate_limit, request.remote_addr or "-")
        except RateLimited as exc:
            log.info("rate limited", extra={"scope": "page", "outcome": "rate_limited"})
            return _too_many_page(exc)
        return None

    # An answer from a before_request skips the hooks after it (request id, metrics), so
    # the check runs as a hook of the blueprints serving the pages — those run after every
    # app-wide hook — and app-wide only for page paths no such blueprint serves.
    page_blueprints = {
        rule.endpoint.rpartition(".")[0]
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(PAGE_PREFIXES) and "." in rule.endpoint
    }
    for name in page_blueprints:
        app.before_request_funcs.setdefault(name, []).append(page_limit)

    @app.before_request
    def _page_limit_elsewhere() -> Response | None:
        if not request.path.startswith(PAGE_PREFIXES) or request.blueprint in page_blueprints:
            return None
        return page_limit()

    @app.errorhandler(RateLimited)
    def _limited(exc: RateLimited) -> Response:
        client = g.get("client")
        log.info(
            "rate limited",
            extra={
                "scope": exc.scope,
                "outcome": "rate_limited",
                "client": client.id if client is not None else None,
            },
        )
        if request.path.startswith(PAGE_PREFIXES):
            return _too_many_page(exc)
        return _too_many_api(exc)
