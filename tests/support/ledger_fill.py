"""Fill a PostgreSQL ledger fast with COPY: links in every state spread over some days, and
their history. Shared by the partition tests (100,000 links) and bench/ledger_scale.py
(10 million). The rows look like the service's own: 22-character jtis, a few thousand
subjects, states in a plausible mix, and the history the service writes: an event for each
revocation, supersession and page consumption (minted and API consumptions are implied by
the row).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterator

import psycopg

LINK_COLUMNS = (
    "jti, client_id, purpose, subject, kid, iat, exp, state, state_at, state_via, "
    "redirect_uri, confirm"
)
EVENT_COLUMNS = "jti, at, event, via"
#: Out of every 20 links: 8 issued (never used), 10 consumed, 1 revoked, 1 superseded.
STATES = ["issued"] * 8 + ["consumed"] * 10 + ["revoked", "superseded"]
EVENT_OF = {"consumed": "consumed", "revoked": "revoked", "superseded": "superseded"}


def plain(url: str) -> str:
    """A libpq URL from linksvc's SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def jti_of(i: int, tag: str = "f") -> str:
    return f"{tag}{i:021d}"


def _rows(
    n: int, *, total: int, client_id: str, start: int, span: int, tag: str, offset: int
) -> Iterator[tuple[str, str]]:
    """(links line, events lines) of COPY text for links ``offset`` .. ``offset + n`` of
    ``total``, whose ``exp`` run evenly over [start, start + span)."""
    for k in range(offset, offset + n):
        exp = start + (k * span) // total
        iat = exp - 300
        state = STATES[k % len(STATES)]
        jti = jti_of(k, tag)
        state_at = str(iat + 10) if state != "issued" else "\\N"
        via = "api" if state != "issued" else "\\N"
        link = (
            f"{jti}\t{client_id}\tmagic_link\tuser-{k % 5000}\tk1\t{iat}\t{exp}\t{state}\t"
            f"{state_at}\t{via}\thttps://app.example/callback\tf\n"
        )
        # As the service writes them: minted and API consumptions live in the row itself; a
        # consumption on a page (every other one here) keeps its event, as do the others.
        events = ""
        if state in EVENT_OF and not (state == "consumed" and k % 2):
            events = f"{jti}\t{iat + 10}\t{EVENT_OF[state]}\tpage\n"
        yield link, events


def fill(
    url: str,
    n: int,
    *,
    client_id: str,
    start: int,
    span: int,
    tag: str = "f",
    chunk: int = 50_000,
    progress: bool = False,
) -> None:
    """COPY ``n`` links with ``exp`` spread evenly over [start, start + span) and their
    events into the ledger at ``url``, in chunks (one transaction each)."""
    done = 0
    with psycopg.connect(plain(url), autocommit=True) as conn:
        while done < n:
            size = min(chunk, n - done)
            links, events = [], []
            for link, ev in _rows(
                size, total=n, client_id=client_id, start=start, span=span, tag=tag, offset=done
            ):
                links.append(link)
                events.append(ev)
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY links ({LINK_COLUMNS}) FROM STDIN") as copy:
                    copy.write("".join(links))
                with cur.copy(f"COPY link_events ({EVENT_COLUMNS}) FROM STDIN") as copy:
                    copy.write("".join(events))
            done += size
            if progress and done % (chunk * 20) == 0:
                print(f"  filled {done:,} links", flush=True)


def fingerprint(url: str) -> dict[str, object]:
    """What must survive a migration: row counts, states, and a digest of every row's
    contents (links by jti, events by id)."""
    with psycopg.connect(plain(url)) as conn:
        links = conn.execute(
            "SELECT jti, client_id, purpose, subject, kid, iat, exp, state, state_at, "
            "state_via, state_detail, redirect_uri, download, data, confirm, completion_hash "
            "FROM links ORDER BY jti"
        )
        h_links = hashlib.sha256()
        states: collections.Counter[str] = collections.Counter()
        n_links = 0
        for row in links:
            h_links.update(repr(row).encode())
            states[row[7]] += 1
            n_links += 1
        h_events = hashlib.sha256()
        n_events = 0
        for row in conn.execute(
            "SELECT id, jti, at, event, reason, via, actor FROM link_events ORDER BY id"
        ):
            h_events.update(repr(row).encode())
            n_events += 1
    return {
        "links": n_links,
        "events": n_events,
        "states": dict(states),
        "links_sha256": h_links.hexdigest(),
        "events_sha256": h_events.hexdigest(),
    }
