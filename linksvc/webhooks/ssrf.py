"""Where a webhook may be sent: URL rules, address checks after DNS, and a pinned connection.

A client chooses its endpoint URLs, so without care it could aim linksvc at the internal
network (a metadata service at 169.254.169.254, a database admin page on 10.0.0.5). The
rules:

- ``https://`` only; ``http://`` only to a loopback address, and only outside production
  (development and tests), where a receiver on the same machine is the normal case.
- No credentials or fragment in the URL.
- The host is resolved, and **every** address it resolves to must be allowed: loopback only
  outside production, private, link-local, shared and other non-global ranges only with
  ``LINKSVC_WEBHOOK_ALLOW_PRIVATE``; multicast, unspecified and deprecated (site-local,
  IPv4-compatible) addresses never. An IPv6 form that embeds an IPv4 address (NAT64, SIIT,
  6to4, Teredo) is judged by the IPv4 address it leads to.
- The request then goes to the very address that was checked (the connection is pinned to
  it, TLS still verifies the certificate against the host name): a DNS answer that changes
  between the check and the connection (DNS rebinding) cannot redirect it.
- Redirects are never followed (``http.client`` does not follow them; a 3xx is a failure).

This module knows nothing of Flask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

#: Bytes of the receiver's answer read (and discarded) before the connection is closed.
MAX_RESPONSE_BYTES = 4096


class Refused(ValueError):
    """A URL or address webhooks may not be sent to; the message says why."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the operator allows: loopback (outside production), private ranges (opt-in)."""

    allow_loopback: bool = False
    allow_private: bool = False


@dataclasses.dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def parse(url: str, policy: Policy) -> Target:
    """Check the form of ``url`` (no DNS). Raises :class:`Refused`."""
    if (
        not isinstance(url, str)
        or len(url) > 2000
        or not url.isascii()
        or not url.isprintable()
        or " " in url
    ):
        raise Refused("the URL must be printable ASCII without spaces, at most 2000 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Refused(f"the URL must be an absolute https URL: {url!r}")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise Refused("the URL must not carry credentials or a fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused(f"the URL has an invalid port: {url!r}") from None
    if parts.scheme == "http" and not (policy.allow_loopback and _loopback_literal(parts.hostname)):
        raise Refused(
            "the URL must use https (http is allowed only to 127.0.0.1, [::1] or localhost,"
            " outside production)"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path)


def _loopback_literal(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: IPv6 prefixes that carry an IPv4 address in their last 32 bits, and what each is called:
#: NAT64 (RFC 6052's well-known prefix) and SIIT (RFC 2765's IPv4-translated form). A packet
#: to one reaches the embedded IPv4 address through a translator, so that address decides.
_TRANSLATED = (
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64"),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "SIIT"),
)
#: RFC 8215's local-use NAT64 prefix: translation inside one network, never global.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
#: Ranges the IETF has withdrawn: no receiver lives there, and hosts may still route them
#: to something internal (site-local, RFC 3879; IPv4-compatible, RFC 4291 §2.5.5.1).
_DEPRECATED = (
    ipaddress.IPv6Network("fec0::/10"),
    ipaddress.IPv6Network("::/96"),
)


def _embedded(addr: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 transition form carries, with the form's name."""
    for net, name in _TRANSLATED:
        if addr in net:
            return name, ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return "6to4", addr.sixtofour
    if addr.teredo is not None:
        return "Teredo", addr.teredo[1]  # the client's address, its bits already inverted
    return None


def classify(addr: Address) -> str | None:
    """The kind of a non-global address (``loopback``, ``private``…), ``None`` if global."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return classify(addr.ipv4_mapped)  # ::ffff:10.0.0.1 is 10.0.0.1
        if addr in _LOCAL_NAT64:
            return "local-use NAT64"
        if not addr.is_unspecified and not addr.is_loopback:
            if any(addr in net for net in _DEPRECATED):
                return "deprecated"
            embedded = _embedded(addr)
            if embedded is not None:
                form, v4 = embedded
                kind = classify(v4)
                if kind in ("unspecified", "multicast"):
                    return kind
                if kind is not None:
                    # Never "loopback": it is the translator's loopback, not this host's,
                    # so the development allowance for a local receiver does not cover it.
                    return f"{form} form of a {kind}"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        return "reserved"
    return None


def check_address(addr: Address, policy: Policy) -> None:
    kind = classify(addr)
    if kind is None:
        return
    if kind in ("unspecified", "multicast", "deprecated"):
        raise Refused(f"{addr} is a {kind} address")
    if kind == "loopback" and (policy.allow_loopback or policy.allow_private):
        return
    if kind != "loopback" and policy.allow_private:
        return
    raise Refused(
        f"{addr} is a {kind} address (set LINKSVC_WEBHOOK_ALLOW_PRIVATE=1 to allow such endpoints)"
    )


def resolve(
    target: Target, policy: Policy, resolver: Resolver = socket.getaddrinfo
) -> list[Address]:
    """Every address ``target.host`` resolves to, each checked against ``policy``.

    One refused address refuses the URL: were any allowed, an attacker could mix a public
    and a private answer and win whenever the private one is tried first.
    """
    try:
        infos = resolver(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise Refused(f"{target.host} does not resolve ({type(exc).__name__})") from None
    addrs: list[Address] = []
    for info in infos:
        try:
            # The scope of an IPv6 link-local address ("fe80::1%eth0") is not part of it.
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            raise Refused(f"{target.host} resolves to an unusable address") from None
        if addr not in addrs:
            addrs.append(addr)
    if not addrs:
        raise Refused(f"{target.host} does not resolve")
    for addr in addrs:
        check_address(addr, policy)
    if target.scheme == "http" and not all(_loopback(a) for a in addrs):
        raise Refused("http is allowed only to a loopback address")
    return addrs


def _loopback(addr: Address) -> bool:
    return classify(addr) == "loopback"


def check_url(url: str, policy: Policy, resolver: Resolver = socket.getaddrinfo) -> Target:
    """Form and addresses of ``url`` (what ``webhooks add`` checks). Raises :class:`Refused`."""
    target = parse(url, policy)
    resolve(target, policy, resolver)
    return target


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a delivery attempt got: a status, or an error (``status`` is then ``None``)."""

    status: int | None
    error: str | None
    seconds: float


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    policy: Policy,
    timeout: float,
    deadline: float | None = None,
    resolver: Resolver = socket.getaddrinfo,
    tls: ssl.SSLContext | None = None,
) -> Answer:
    """POST ``body`` to ``url`` under the rules above; never raises for network trouble.

    ``timeout`` bounds the connection and each read; ``deadline`` (seconds from the call)
    bounds the whole attempt: a receiver that trickles a byte now and then, each read well
    within ``timeout``, is cut off when it passes (``error`` is ``"deadline"``). Redirects are
    answered, not followed.
    """
    t0 = time.monotonic()
    end = None if deadline is None else t0 + deadline
    try:
        target = parse(url, policy)
        addrs = resolve(target, policy, resolver)
    except Refused as exc:
        return Answer(None, f"refused: {exc}"[:200], time.monotonic() - t0)
    last = "unreachable"
    for addr in addrs:
        left = timeout if end is None else min(timeout, end - time.monotonic())
        if left <= 0:
            return Answer(None, "deadline", time.monotonic() - t0)
        watch = _Watchdog(end)
        conn = _connection(target, addr, left, tls, watch)
        try:
            conn.request("POST", target.path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            # The status is the receiver's answer; a body cut short (by the deadline, or
            # the receiver) does not take it back.
            with contextlib.suppress(OSError, http.client.HTTPException):
                resp.read(MAX_RESPONSE_BYTES)
            return Answer(resp.status, None, time.monotonic() - t0)
        except (ConnectionRefusedError, TimeoutError) as exc:
            if watch.fired:
                return Answer(None, "deadline", time.monotonic() - t0)
            last = type(exc).__name__
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            return Answer(
                None, "deadline" if watch.fired else type(exc).__name__, time.monotonic() - t0
            )
        finally:
            watch.cancel()
            conn.close()
    return Answer(None, last, time.monotonic() - t0)


class _Watchdog:
    """Shuts the attempt's connection down when the deadline passes.

    A socket timeout bounds each read, not their sum; shutting the connection down from
    another thread wakes whatever read, write or TLS step is blocked on it, at once and
    whatever the receiver does. It holds a duplicate of the socket's descriptor: TLS wraps
    (and detaches) the original, and shutdown acts on the connection, not the descriptor.
    """

    def __init__(self, end: float | None) -> None:
        self.end = end
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> None:
        if self.end is None:
            return
        with self._lock:
            self._sock = sock.dup()
        self._timer = threading.Timer(max(0.0, self.end - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._sock is None:
                return  # the attempt ended first
            self.fired = True
            with contextlib.suppress(OSError):  # the receiver closed it meanwhile
                self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _connection(
    target: Target,
    addr: Address,
    timeout: float,
    tls: ssl.SSLContext | None,
    watch: _Watchdog,
) -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=tls or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    # Pinned: the socket goes to the address that was checked, whatever DNS says now; the
    # Host header and the TLS server name (certificate check) stay the URL's host.
    def _create(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        sock = socket.create_connection((str(addr), target.port), timeout, source_address)
        watch.watch(sock)
        return sock

    conn._create_connection = _create  # type: ignore[attr-defined]
    return conn
