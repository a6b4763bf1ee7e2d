"""What an outbox row costs: mint and redeem with webhooks enabled against the same without.

In-process, through the service layer (``LinkService.mint`` and ``.redeem``, the code the API
handlers call), on durable SQLite and on a fresh PostgreSQL database: two clients, one with
a webhook endpoint (so every mint and every redemption writes its ``link.minted`` /
``link.consumed`` row in the same transaction) and one without. Rounds alternate the two, so
both see the same machine; each round times ``--n`` mints then ``--n`` redemptions of those
links. No relay runs: what is measured is the write path only. Prints a table and writes
``bench/results/webhooks.json`` and ``.md``.

    .venv/bin/python -m bench.webhooks [--n 500] [--rounds 5] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.databases import fresh_pg_database, pg_available
from tests.support.env import base_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@contextlib.contextmanager
def service(database_url: str | None, instance: Path) -> Iterator[Any]:
    import logging

    from linksvc import create_app
    from linksvc.clients import registry as clients
    from linksvc.links import keys
    from linksvc.services import services
    from linksvc.store import db, migrate
    from linksvc.webhooks import endpoints as webhooks
    from linksvc.webhooks import ssrf

    app = create_app(base_env(instance, database_url, LINKSVC_LOG_LEVEL="error"))
    logging.getLogger("linksvc").setLevel(logging.ERROR)
    svc = services(app).links
    migrate.upgrade(svc.engine)
    kek = app.config["LINKSVC"].key_encryption_key
    now = int(time.time())
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, kek, now)
        plain, _ = clients.create(conn, "plain", purposes=["magic_link"], now=now)
        hooked, _ = clients.create(conn, "hooked", purposes=["magic_link"], now=now)
        webhooks.add(
            conn,
            kek,
            hooked.id,
            "http://127.0.0.1:9/hook",
            events=None,
            rules=ssrf.Policy(allow_loopback=True),
            now=now,
        )
    try:
        yield svc, plain, hooked
    finally:
        svc.engine.dispose()


def one_round(svc: Any, client: Any, n: int, seq: int) -> tuple[float, float]:
    """µs per mint and per redemption, ``n`` of each, one at a time."""
    t0 = time.perf_counter()
    tokens = [svc.mint(client, purpose="magic_link", subject=f"u{seq}-{i}").token for i in range(n)]
    t1 = time.perf_counter()
    for token in tokens:
        svc.redeem(token, purposes=("magic_link",), audience=client.id)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def measure(label: str, database_url: str | None, n: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="linksvc-whbench-") as tmp:
        with service(database_url, Path(tmp)) as (svc, plain, hooked):
            one_round(svc, plain, max(20, n // 10), 0)  # warm-up: caches, pools, statements
            one_round(svc, hooked, max(20, n // 10), 0)
            runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
            for r in range(rounds):
                order = [("without", plain), ("with", hooked)]
                for name, client in order if r % 2 == 0 else reversed(order):
                    runs[name].append(one_round(svc, client, n, r + 1))
            from linksvc.store import db

            with db.read(svc.engine) as conn:
                rows = conn.execute(db.webhook_outbox.select()).fetchall()
    out: dict[str, Any] = {"database": label, "outbox_rows": len(rows)}
    for op, i in (("mint", 0), ("redeem", 1)):
        without = statistics.median(x[i] for x in runs["without"])
        with_ = statistics.median(x[i] for x in runs["with"])
        out[op] = {
            "without_us": round(without, 1),
            "with_us": round(with_, 1),
            "cost": round(with_ / without - 1, 3),
        }
    return out


def markdown(results: list[dict[str, Any]], n: int, rounds: int) -> str:
    lines = [
        f"Webhooks cost, in-process, {rounds} alternating rounds × {n} mints and {n} redemptions"
        f" per client (medians), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:",
        "",
        "| database | operation | without webhooks µs/op | with webhooks µs/op | cost |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        for op in ("mint", "redeem"):
            m = r[op]
            lines.append(
                f"| {r['database']} | {op} | {m['without_us']:.0f} | {m['with_us']:.0f} |"
                f" {m['cost'] * 100:+.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    results = [measure("sqlite", None, args.n, args.rounds)]
    if not args.sqlite_only:
        ok, why = pg_available()
        if ok:
            with fresh_pg_database("linksvc_whbench") as url:
                results.append(measure("postgresql", url, args.n, args.rounds))
        else:
            print(f"PostgreSQL skipped: {why}", file=sys.stderr)
    md = markdown(results, args.n, args.rounds)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "webhooks.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "webhooks.md").write_text(md)


if __name__ == "__main__":
    main()
