"""SSRF: webhook URLs may not reach loopback (outside development), private or link-local
addresses, directly or through DNS; the connection goes to the address that was checked;
redirects are not followed. Each test tries the attack against a real socket where it can."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from linksvc.webhooks import ssrf
from tests.support.webhook_receiver import Receiver

PROD = ssrf.Policy(allow_loopback=False, allow_private=False)
DEV = ssrf.Policy(allow_loopback=True, allow_private=False)
OPEN = ssrf.Policy(allow_loopback=True, allow_private=True)


def resolver_for(mapping: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    """A resolver answering ``mapping`` (host → addresses), like getaddrinfo."""

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in mapping[host]
        ]

    return resolve


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://127.8.9.10/hook",
        "https://[::1]/hook",
        "https://localhost/hook",
        "https://10.0.0.1/hook",
        "https://10.255.1.2:8443/hook",
        "https://172.16.5.4/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
    ],
)
def test_non_public_addresses_are_refused_in_production(url: str) -> None:
    with pytest.raises(ssrf.Refused):
        ssrf.check_url(url, PROD)


#: IPv6 transition forms that lead to a forbidden IPv4 address: every one of them is as
#: forbidden as the address it embeds (the review passed all nine through PROD).
EMBEDDED_FORMS = [
    ("64:ff9b::a9fe:a9fe", "NAT64 form of a link-local"),  # 169.254.169.254 via NAT64
    ("64:ff9b::7f00:1", "NAT64 form of a loopback"),  # 127.0.0.1 via NAT64
    ("64:ff9b::a00:1", "NAT64 form of a private"),  # 10.0.0.1
    ("64:ff9b:1::a9fe:a9fe", "local-use NAT64"),  # RFC 8215, never global
    ("2002:a9fe:a9fe::1", "6to4 form of a link-local"),  # 6to4 of 169.254.169.254
    ("2002:7f00:1::", "6to4 form of a loopback"),
    ("::a9fe:a9fe", "deprecated"),  # IPv4-compatible ::169.254.169.254
    ("::127.0.0.1", "deprecated"),
    ("::ffff:0:a9fe:a9fe", "SIIT form of a link-local"),  # IPv4-translated
    ("::ffff:0:a00:1", "SIIT form of a private"),
    # Teredo: server 65.54.227.120, client 10.0.0.1 stored bit-inverted (f5ff:fffe).
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo form of a private"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "Teredo form of a link-local"),  # 169.254.169.254
    ("fec0::1", "deprecated"),  # site-local
]


@pytest.mark.parametrize(("addr", "kind"), EMBEDDED_FORMS)
def test_ipv6_forms_embedding_a_forbidden_ipv4_address_are_refused(addr: str, kind: str) -> None:
    url = f"https://[{addr}]/hook"
    with pytest.raises(ssrf.Refused, match=f"is a {kind} address"):
        ssrf.check_url(url, PROD)
    with pytest.raises(ssrf.Refused):
        ssrf.check_url(url, DEV)  # the translator's loopback is not this host's
    # And through DNS, as an attacker's name would hand them out.
    resolve = resolver_for({"hooks.attacker.example": [addr]})
    with pytest.raises(ssrf.Refused, match=f"is a {kind} address"):
        ssrf.check_url("https://hooks.attacker.example/h", PROD, resolve)


@pytest.mark.parametrize("addr", ["::a9fe:a9fe", "fec0::1"])
def test_deprecated_ranges_are_refused_even_when_private_is_allowed(addr: str) -> None:
    with pytest.raises(ssrf.Refused, match="deprecated"):
        ssrf.check_url(f"https://[{addr}]/hook", OPEN)


@pytest.mark.parametrize(
    "addr",
    [
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34: an IPv6-only network reaching it
        "2002:5db8:d822::1",  # 6to4 of the same
    ],
)
def test_transition_forms_of_public_addresses_are_accepted(addr: str) -> None:
    assert ssrf.check_url(f"https://[{addr}]/hook", PROD).host == addr


def test_embedded_private_addresses_follow_the_private_allowance() -> None:
    ssrf.check_url("https://[64:ff9b::a00:1]/hook", OPEN)
    ssrf.check_url("https://[2002:a9fe:a9fe::1]/hook", OPEN)


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://192.168.0.10/hook",
        "https://[fe80::1]/hook",
    ],
)
def test_private_and_link_local_refused_in_development_too(url: str) -> None:
    with pytest.raises(ssrf.Refused, match="ALLOW_PRIVATE"):
        ssrf.check_url(url, DEV)


def test_loopback_allowed_in_development_only() -> None:
    assert ssrf.check_url("http://127.0.0.1:9/hook", DEV).port == 9
    assert ssrf.check_url("https://[::1]:9/hook", DEV).host == "::1"
    with pytest.raises(ssrf.Refused):
        ssrf.check_url("http://127.0.0.1:9/hook", PROD)


def test_allow_private_opens_private_ranges() -> None:
    resolve = resolver_for({"intranet.example": ["10.1.2.3"]})
    assert ssrf.check_url("https://intranet.example/h", OPEN, resolve).host == "intranet.example"
    ssrf.check_url("https://169.254.169.254/", OPEN)


def test_a_dns_name_resolving_to_a_private_address_is_refused() -> None:
    resolve = resolver_for({"hooks.attacker.example": ["10.20.30.40"]})
    with pytest.raises(ssrf.Refused, match=r"10\.20\.30\.40 is a private address"):
        ssrf.check_url("https://hooks.attacker.example/h", DEV, resolve)


def test_a_real_dns_name_resolving_to_loopback_is_refused_in_production() -> None:
    # The system resolver, not a stub: localhost resolves to a loopback address.
    with pytest.raises(ssrf.Refused, match="loopback"):
        ssrf.check_url("https://localhost:9/h", PROD)


def test_one_private_answer_among_public_ones_refuses_the_url() -> None:
    resolve = resolver_for({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(ssrf.Refused, match=r"10\.0\.0\.7"):
        ssrf.check_url("https://mixed.example/h", PROD, resolve)


def test_public_name_is_accepted() -> None:
    resolve = resolver_for({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    assert ssrf.check_url("https://hooks.example.com/h?x=1", PROD, resolve).path == "/h?x=1"


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/h",  # plain http to anything but loopback
        "ftp://hooks.example.com/h",
        "https://user:pw@hooks.example.com/h",
        "https://hooks.example.com/h#frag",
        "https:///nohost",
        "https://hooks.example.com:99999/h",
        "https://hooks.example.com/\u00e9",
        "https://hooks.example.com/a b",
    ],
)
def test_malformed_or_plain_http_urls_are_refused(url: str) -> None:
    resolve = resolver_for({"hooks.example.com": ["93.184.216.34"]})
    with pytest.raises(ssrf.Refused):
        ssrf.check_url(url, DEV, resolve)


def test_http_to_a_name_that_is_not_loopback_is_refused() -> None:
    resolve = resolver_for({"localhost": ["10.0.0.5"]})  # a poisoned hosts file
    with pytest.raises(ssrf.Refused):
        ssrf.check_url("http://localhost:9/h", OPEN, resolve)


def test_post_is_refused_before_any_connection(receiver: Receiver) -> None:
    """Outside development a receiver on 127.0.0.1 is never contacted at all."""
    answer = ssrf.post(receiver.url, b"{}", {}, policy=PROD, timeout=2)
    assert answer.status is None and answer.error is not None
    assert answer.error.startswith("refused")
    assert receiver.snapshot() == []


def test_connection_goes_to_the_checked_address(receiver: Receiver) -> None:
    """DNS rebinding: the first answer is checked and connected to; a later answer (here a
    private one) is never asked for, so it cannot redirect the request."""
    calls: list[str] = []
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])

    def rebinding(host: str, port: int, **kw: Any) -> Any:
        calls.append(host)
        return resolver_for({host: next(answers)})(host, port, **kw)

    url = f"http://localhost:{receiver.port}/hook"
    answer = ssrf.post(
        url, b"{}", {"webhook-id": "msg_1"}, policy=DEV, timeout=5, resolver=rebinding
    )
    assert answer.status == 200, answer
    assert calls == ["localhost"]  # resolved once: the connection did not resolve again
    [got] = receiver.snapshot()
    assert got.host == f"localhost:{receiver.port}"  # the Host header keeps the URL's name


def test_pinned_address_is_used_even_when_the_name_does_not_resolve_elsewhere(
    receiver: Receiver,
) -> None:
    """A made-up name only our stub resolver knows still reaches the receiver: the socket
    went to the checked address, not to whatever the system resolver would say."""
    resolve = resolver_for({"localhost": ["127.0.0.1"]})
    answer = ssrf.post(
        f"http://localhost:{receiver.port}/x", b"{}", {}, policy=DEV, timeout=5, resolver=resolve
    )
    assert answer.status == 200


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    target = Receiver()
    try:
        receiver.answer = lambda r: 302
        receiver.location = "http://169.254.169.254/latest/meta-data/"
        answer = ssrf.post(receiver.url, b"{}", {}, policy=OPEN, timeout=5)
        assert answer.status == 302
        receiver.location = target.url  # even to an allowed address: never followed
        answer = ssrf.post(receiver.url, b"{}", {}, policy=OPEN, timeout=5)
        assert answer.status == 302
        assert target.snapshot() == []
    finally:
        target.stop()


def test_timeout_is_short(receiver: Receiver) -> None:
    receiver.delay = 3
    answer = ssrf.post(receiver.url, b"{}", {}, policy=DEV, timeout=0.5)
    assert answer.status is None and answer.error in ("TimeoutError", "timeout")
    assert answer.seconds < 2.5


def test_connection_refused_is_an_answer_not_an_exception() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = ssrf.post(f"http://127.0.0.1:{port}/", b"{}", {}, policy=DEV, timeout=2)
    assert answer.status is None and answer.error == "ConnectionRefusedError"


def test_a_trickling_receiver_is_cut_at_the_attempt_deadline(receiver: Receiver) -> None:
    """One byte every 0.2 s keeps every read within the 5 s timeout, forever: the deadline
    bounds the attempt as a whole, and the sender hangs up on the receiver."""
    receiver.trickle = 0.2
    answer = ssrf.post(
        receiver.url, b"{}", {"webhook-id": "msg_slow"}, policy=DEV, timeout=5, deadline=1
    )
    assert answer.status is None and answer.error == "deadline"
    receiver.wait_log(lambda log: ("closed", "msg_slow") in log, timeout=10)
    assert not receiver.released.is_set()  # the sender hung up, not the end of the test
