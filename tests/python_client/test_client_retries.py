"""The client's retries, against a live linksvc behind a TCP proxy that fails on cue.

- A mint whose answer is cut in the middle (the server did mint) is retried with the same
  Idempotency-Key and answers the one link: the ledger holds one, not two.
- A redemption whose answer is cut is never sent again: OutcomeUnknown, and status()
  tells that the link was consumed.
- A refused connection is retried (nothing was sent), redeem included.
- On PostgreSQL behind a proxy, a database outage answers 503; the client retries with
  backoff until the database is back, and gives up with ServiceUnavailable at the deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import linksvc_client as lc
from linksvc_client import LinkClient, RetryPolicy
from tests.support.databases import pg_database
from tests.support.live import Live, live_linksvc
from tests.support.proxy import Proxy

pytestmark = pytest.mark.slow

FAST = RetryPolicy(max_attempts=4, backoff=0.05, max_backoff=0.2, deadline=20)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with live_linksvc(tmp_path_factory.mktemp("client_retries")) as live:
        yield live


@pytest.fixture
def proxy(live) -> Iterator[Proxy]:
    p = Proxy("127.0.0.1", int(urlsplit(live.url).port or 80))
    yield p
    p.close()


def _direct(live: Live) -> LinkClient:
    return LinkClient(live.url, live.api_key)


def test_a_mint_cut_mid_answer_is_retried_and_mints_once(live, proxy):
    waits: list[float] = []
    proxy.cut_answers(1)
    with LinkClient(proxy.url, live.api_key, retry=FAST, sleep=waits.append) as c:
        link = c.mint("magic_link", "u-cut", data={"n": 1})
    assert proxy.cut == 1 and proxy.connections == 2 and len(waits) == 1
    assert link.replayed  # the second try was answered from the first one's mint
    with _direct(live) as d:
        assert [x.jti for x in d.links_of("u-cut").links] == [link.jti]
        assert d.redeem(link.token, "magic_link").data == {"n": 1}


def test_every_answer_cut_gives_up_at_max_attempts_and_still_minted_once(live, proxy):
    proxy.cut_answers(10)
    with LinkClient(proxy.url, live.api_key, retry=FAST, sleep=lambda s: None) as c:
        with pytest.raises(lc.APIConnectionError) as err:
            c.mint("magic_link", "u-cut-all")
    assert type(err.value) is lc.APIConnectionError and err.value.code == "connection_error"
    assert proxy.connections == FAST.max_attempts
    with _direct(live) as d:
        assert len(d.links_of("u-cut-all").links) == 1


def test_a_redemption_cut_mid_answer_is_not_retried(live, proxy):
    with _direct(live) as d:
        link = d.mint("magic_link", "u-redeem-cut")
    proxy.cut_answers(1)
    with LinkClient(proxy.url, live.api_key, retry=FAST, sleep=lambda s: None) as c:
        with pytest.raises(lc.OutcomeUnknown) as err:
            c.redeem(link.token, "magic_link")
        assert err.value.code == "outcome_unknown" and err.value.status is None
        assert proxy.connections == 1  # sent once, never again
        assert c.status(link.jti).state == "consumed"  # what status() is for


def test_a_code_exchange_cut_mid_answer_is_not_retried(live, proxy):
    from tests.support.live import press

    with _direct(live) as d:
        code = press(d.mint("magic_link", "u-code-cut").url)
    proxy.cut_answers(1)
    with LinkClient(proxy.url, live.api_key, retry=FAST, sleep=lambda s: None) as c:
        with pytest.raises(lc.OutcomeUnknown):
            c.exchange_code(code)
    assert proxy.connections == 1


def test_a_refused_connection_is_retried_even_for_a_redemption(live, proxy):
    with _direct(live) as d:
        link = d.mint("magic_link", "u-refused")
    proxy.refuse()
    waits: list[float] = []

    def back_on_second_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            proxy.resume()

    with LinkClient(proxy.url, live.api_key, retry=FAST, sleep=back_on_second_wait) as c:
        assert c.redeem(link.token, "magic_link").jti == link.jti
    assert len(waits) == 2
    # Doubling from 0.05 s with jitter in [half, all]: the second wait is the longer.
    assert 0.025 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1


def test_no_retry_after_the_deadline(live, proxy):
    proxy.refuse()
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(max_attempts=100, backoff=1, max_backoff=4, deadline=10)
    with LinkClient(proxy.url, live.api_key, retry=policy, sleep=sleep, clock=lambda: now[0]) as c:
        with pytest.raises(lc.APIConnectionError):
            c.status("A" * 22)
    assert sum(waits) < 10 and max(waits) <= 4 and len(waits) >= 3


# -- 503 from a real database outage (PostgreSQL behind the proxy) ----------------------------


@pytest.fixture(scope="module")
def pg_live(tmp_path_factory) -> Iterator[tuple[Live, Proxy]]:
    with pg_database("linksvc_client") as url:
        parts = urlsplit(url)
        db_proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxied = url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{db_proxy.port}")
        try:
            with live_linksvc(tmp_path_factory.mktemp("client_pg"), proxied) as live:
                yield live, db_proxy
        finally:
            db_proxy.close()


def test_database_outage_is_retried_until_it_ends(pg_live):
    live, db_proxy = pg_live
    with _direct(live) as d:
        link = d.mint("magic_link", "u-outage")
    db_proxy.refuse()
    statuses: list[float] = []

    def database_back_later(seconds: float) -> None:
        statuses.append(seconds)
        if len(statuses) == 2:
            db_proxy.resume()

    policy = RetryPolicy(max_attempts=5, backoff=0.05, max_retry_after=10, deadline=60)
    try:
        with LinkClient(live.url, live.api_key, retry=policy, sleep=database_back_later) as c:
            # 503 means nothing was consumed: even a redemption is retried.
            assert c.redeem(link.token, "magic_link").jti == link.jti
    finally:
        db_proxy.resume()
    # The service asked for Retry-After: 5; the client waited that, not its own 0.05 s.
    assert len(statuses) == 2 and all(s >= 5 for s in statuses), statuses


def test_database_outage_past_the_deadline_raises_service_unavailable(pg_live):
    live, db_proxy = pg_live
    db_proxy.refuse()
    try:
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        policy = RetryPolicy(max_attempts=10, deadline=12, max_retry_after=10)
        with LinkClient(
            live.url, live.api_key, retry=policy, sleep=sleep, clock=lambda: now[0]
        ) as c:
            with pytest.raises(lc.ServiceUnavailable) as err:
                c.mint("magic_link", "u-down")
        assert (err.value.status, err.value.code, err.value.retry_after) == (503, "unavailable", 5)
        assert now[0] < 12
    finally:
        db_proxy.resume()
    with _direct(live) as d:
        assert d.links_of("u-down").links == ()  # nothing was minted during the outage


def test_concurrent_clients_cut_mid_answer_each_mint_once(live):
    """Several threads, each with its own key, through a proxy cutting every first answer."""
    proxy = Proxy("127.0.0.1", int(urlsplit(live.url).port or 80))
    proxy.cut_answers(6)
    results: dict[int, str] = {}

    # More tries than cuts: whichever client meets them, none runs out.
    policy = RetryPolicy(max_attempts=8, backoff=0.05, max_backoff=0.2, deadline=30)

    def one(i: int) -> None:
        with LinkClient(proxy.url, live.api_key, retry=policy, sleep=lambda s: None) as c:
            results[i] = c.mint("magic_link", f"u-many-{i}").jti

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        proxy.close()
    assert len(results) == 6
    with _direct(live) as d:
        for i, jti in results.items():
            assert [x.jti for x in d.links_of(f"u-many-{i}").links] == [jti]
