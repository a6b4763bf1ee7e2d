"""The ledger at size: mint and redeem on an empty ledger and on one of 10 million links, and
the time to purge one day (bench/README.md, "Ledger at size").

    .venv/bin/python -m bench.ledger_scale                  # 10 M links, ~20 minutes
    .venv/bin/python -m bench.ledger_scale --links 200000   # a quick check of the script

One run:

1. starts a PostgreSQL 15 cluster of its own (initdb in a temporary directory, a free
   loopback port, the server's default settings but ``max_wal_size = 4GB``; run as the
   ``postgres`` user when started as root) so the fill's gigabytes of WAL stay off the
   machine's shared server — or uses ``--pg-url``;
2. makes two linksvc databases at the newest schema (the partitioned ledger), ``empty`` and
   ``full``, and fills ``full`` with COPY: ``--links`` links (and their history, ~1.6 events
   per link) whose ``exp`` run evenly over the 7 days up to 12 hours from now, so today's
   partition is as full as any;
3. measures, in interleaved rounds (empty, full, then full, empty, …), on both databases:
   - ``ledger``: the service's own ledger calls in-process, 4 threads for ``--seconds`` each:
     ``record_mint`` (one transaction: link + event), then ``consume`` of those links (the
     redemption's conditional UPDATE … RETURNING + event) — throughput and p50/p99;
   - ``service``: the whole request path in-process (Flask's test client, 4 threads):
     ``POST /api/v1/links``, then a first-use ``POST /api/v1/links/redeem`` of each;
4. purges one day of ``full`` (``ledger.purge`` as ``flask purge`` calls it, with ``now``
   set so that exactly the oldest day is past a 7-day retention) and, for comparison, times
   deleting 50,000 of the next day's links with their events the way SQLite's purge does
   (batches of 1,000);
5. writes ``bench/results/ledger_scale.json`` and ``.md`` (the table for bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import machine
from linksvc.links import ledger, tokens
from linksvc.services import services
from linksvc.store import db, migrate, partitions
from tests.support import ledger_fill
from tests.support.env import base_env, free_port
from tests.support.servers import prepare_instance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DAY = partitions.DAY
THREADS = 4


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- a PostgreSQL of our own ------------------------------------------------------------------


@contextlib.contextmanager
def private_cluster() -> Iterator[str]:
    """initdb + pg_ctl start on a free loopback port; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="linksvc-scale-pg-"))
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    port = free_port()
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=root, **user)

    run(str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
            "max_wal_size = '4GB'\n"
        )
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    with psycopg.connect(ledger_fill.plain(server) + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return f"{server}/{name}"


#: The keys and indexes of the two tables as migration 0007 makes them.
KEYS_AND_INDEXES = [
    "ALTER TABLE links ADD CONSTRAINT links_pkey PRIMARY KEY (jti, exp)",
    "CREATE INDEX ix_links_client_subject ON links (client_id, subject, purpose, state)",
    "CREATE INDEX ix_links_exp ON links (exp)",
    "ALTER TABLE link_events ADD CONSTRAINT link_events_pkey PRIMARY KEY (id, at)",
    "CREATE INDEX ix_link_events_jti ON link_events (jti, id)",
]


def fill_fast(url: str, n: int, client_id: str, start: int) -> None:
    """The days' partitions as the service would have made them, then COPY with the keys and
    indexes dropped and built again afterwards (a sort per index instead of a random insert
    per row), then VACUUM ANALYZE; the schema is checked against the models at the end."""
    engine = db.make_engine(url)
    with db.write(engine) as conn:
        partitions.ensure(conn, now=start)
    with psycopg.connect(ledger_fill.plain(url), autocommit=True) as conn:
        for stmt in (
            "ALTER TABLE links DROP CONSTRAINT links_pkey",
            "DROP INDEX ix_links_client_subject",
            "DROP INDEX ix_links_exp",
            "ALTER TABLE link_events DROP CONSTRAINT link_events_pkey",
            "DROP INDEX ix_link_events_jti",
        ):
            conn.execute(stmt)
    ledger_fill.fill(
        url, n, client_id=client_id, start=start, span=7 * DAY, progress=True, chunk=250_000
    )
    log("  building the keys and indexes")
    with psycopg.connect(ledger_fill.plain(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        for stmt in KEYS_AND_INDEXES:
            conn.execute(stmt)
        log("  vacuum analyze")
        conn.execute("VACUUM ANALYZE links")
        conn.execute("VACUUM ANALYZE link_events")
        default = conn.execute("SELECT count(*) FROM links_default").fetchone()[0]
    assert default == 0, f"{default} rows fell outside the day partitions"
    assert migrate.diff(engine) == [], "the filled schema differs from the models"
    engine.dispose()


def save(result: dict[str, Any], path: Path) -> None:
    """Written after every phase: a late failure keeps what was measured."""
    path.write_text(json.dumps(result, indent=2) + "\n")


# -- measurements -----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def ledger_load(url: str, client_id: str, seconds: float) -> dict[str, Any]:
    """The ledger calls of mint and redeem, ``THREADS`` at a time, in-process."""
    engine = db.make_engine(url, pool_size=THREADS)
    minted: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def run(op: str) -> dict[str, Any]:
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        def worker(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                now = int(time.time())
                t0 = time.perf_counter()
                if op == "mint":
                    rec = ledger.LinkRecord(
                        jti=tokens.new_jti(),
                        client_id=client_id,
                        purpose="magic_link",
                        subject=f"bench-{i}-{n}",
                        kid="k1",
                        iat=now,
                        exp=now + 300,
                        redirect_uri="https://app.example/callback",
                    )
                    with db.write(engine) as conn:
                        ledger.record_mint(conn, rec, supersede=False, now=now)
                    with lock:
                        minted.append((rec.jti, rec.exp, rec.subject))
                else:
                    with lock:
                        if not minted:
                            return
                        jti, exp, subject = minted.pop()
                    ledger.consume(
                        engine,
                        jti=jti,
                        exp=exp,
                        client_id=client_id,
                        purpose="magic_link",
                        subject=subject,
                        now=now,
                        via="api",
                    )
                latencies.append((time.perf_counter() - t0) * 1000)
                n += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        return {
            "ops": len(latencies),
            "per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.50), 2),
            "p99_ms": round(_percentile(latencies, 0.99), 2),
        }

    out = {"mint": run("mint"), "redeem": run("redeem")}
    engine.dispose()
    return out


def service_load(env: dict[str, str], api_key: str, seconds: float) -> dict[str, Any]:
    """The whole request path in-process (Flask test client: authentication, rate limits,
    signing, verification, ledger), ``THREADS`` at a time: POST /api/v1/links, then a
    first-use POST /api/v1/links/redeem of each link minted."""
    from linksvc import create_app

    app = create_app(env)
    headers = {"Authorization": f"Bearer {api_key}"}
    tokens_minted: list[str] = []
    lock = threading.Lock()

    def run(op: str) -> dict[str, Any]:
        latencies: list[float] = []
        failures = 0
        stop = time.monotonic() + seconds

        def worker(i: int) -> None:
            nonlocal failures
            client = app.test_client()
            n = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                if op == "mint":
                    r = client.post(
                        "/api/v1/links",
                        json={"purpose": "magic_link", "subject": f"svc-{i}-{n}"},
                        headers=headers,
                    )
                    ok = r.status_code == 201
                    if ok:
                        with lock:
                            tokens_minted.append(r.get_json()["token"])
                else:
                    with lock:
                        if not tokens_minted:
                            return
                        token = tokens_minted.pop()
                    r = client.post(
                        "/api/v1/links/redeem",
                        json={"token": token, "purpose": "magic_link"},
                        headers=headers,
                    )
                    ok = r.status_code == 200
                latencies.append((time.perf_counter() - t0) * 1000)
                failures += not ok
                n += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        return {
            "ops": len(latencies),
            "per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.50), 2),
            "p99_ms": round(_percentile(latencies, 0.99), 2),
            "failures": failures,
        }

    out = {"mint": run("mint"), "redeem": run("redeem")}
    services(app).links.engine.dispose()
    return out


def sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(ledger_fill.plain(url)) as conn:

        def total(table: str) -> int:
            return int(
                conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                    "FROM pg_partition_tree(%s::regclass)",
                    (table,),
                ).fetchone()[0]
            )

        links = conn.execute("SELECT count(*) FROM links").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM link_events").fetchone()[0]
        out = {"links": links, "events": events, "links_bytes": total("links")}
        out["events_bytes"] = total("link_events")
    if links:
        out["bytes_per_link"] = round((out["links_bytes"] + out["events_bytes"]) / links)
        out["links_bytes_per_link"] = round(out["links_bytes"] / links)
        out["events_bytes_per_link"] = round(out["events_bytes"] / links)
    return out


def purge_day(url: str, day: int) -> dict[str, Any]:
    """``ledger.purge`` with ``now`` such that exactly the links of ``day`` are past a
    7-day retention (and the history of the day before it, a day behind by design)."""
    engine = db.make_engine(url)
    try:
        now = day + DAY + 7 * DAY
        started = time.monotonic()
        report = ledger.purge(engine, now=now, retention_seconds=7 * DAY)
        report["seconds"] = round(time.monotonic() - started, 2)
    finally:
        engine.dispose()
    return report


def batched_delete(url: str, day: int, n: int, batch: int = 1000) -> dict[str, Any]:
    """Delete ``n`` links of ``day`` and their events the way SQLite's purge does (select a
    batch by ``exp``, delete it and its events by jti, commit): the alternative timed."""
    hi = day + DAY
    done = 0
    started = time.monotonic()
    with psycopg.connect(ledger_fill.plain(url), autocommit=True) as conn:
        while done < n:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT jti FROM links WHERE exp >= %s AND exp < %s LIMIT %s", (day, hi, batch)
                ).fetchall()
                if not rows:
                    break
                jtis = [r[0] for r in rows]
                conn.execute(
                    "DELETE FROM links WHERE jti = ANY(%s) AND exp >= %s AND exp < %s",
                    (jtis, day, hi),
                )
                conn.execute("DELETE FROM link_events WHERE jti = ANY(%s)", (jtis,))
            done += len(jtis)
    seconds = time.monotonic() - started
    return {"links": done, "seconds": round(seconds, 2), "links_per_s": round(done / seconds)}


# -- the run ----------------------------------------------------------------------------------


def median_of(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in rounds:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    return round(statistics.median(values), 2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--links", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--pg-url", help="a PostgreSQL server URL to use instead of a private one")
    ap.add_argument("--output", type=Path, default=RESULTS / "ledger_scale.json")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="linksvc-scale-"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": {
            "links": args.links,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "ledger_threads": THREADS,
        },
    }
    try:
        with contextlib.ExitStack() as stack:
            server = args.pg_url or stack.enter_context(private_cluster())
            result["config"]["server"] = "private cluster" if not args.pg_url else "given"
            urls = {name: create_database(server, f"linksvc_{name}") for name in ("empty", "full")}
            insts = {}
            for name, url in urls.items():
                env = base_env(workdir / f"instance-{name}", url)
                insts[name] = {"env": env, **prepare_instance(env, "bench")}
            today = partitions.day_of(int(time.time()))
            start = today - 6 * DAY  # seven whole days, today's among them
            log(f"filling {args.links:,} links over 7 days with COPY")
            t0 = time.monotonic()
            fill_fast(urls["full"], args.links, insts["full"]["client_id"], start)
            result["fill_seconds"] = round(time.monotonic() - t0, 1)
            result["sizes"] = {name: sizes(url) for name, url in urls.items()}
            log(f"filled in {result['fill_seconds']}s: {result['sizes']['full']}")
            save(result, args.output)

            rounds: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
            for r in range(args.rounds):
                order = ["empty", "full"] if r % 2 == 0 else ["full", "empty"]
                for name in order:
                    log(f"round {r + 1}: {name}")
                    inst = insts[name]
                    one = {
                        "ledger": ledger_load(urls[name], inst["client_id"], args.seconds),
                        "service": service_load(inst["env"], inst["api_key"], args.seconds),
                    }
                    rounds[name].append(one)
                    log(f"  {json.dumps(one)}")
                    result["rounds"] = rounds
                    save(result, args.output)
            result["rounds"] = rounds
            summary: dict[str, Any] = {}
            for layer in ("ledger", "service"):
                rate = "per_s"
                for op in ("mint", "redeem"):
                    row = {}
                    for name in ("empty", "full"):
                        row[f"{name}_per_s"] = median_of(rounds[name], layer, op, rate)
                        row[f"{name}_p99_ms"] = median_of(rounds[name], layer, op, "p99_ms")
                    row["throughput_ratio"] = round(row["full_per_s"] / row["empty_per_s"], 3)
                    row["p99_ratio"] = round(row["full_p99_ms"] / row["empty_p99_ms"], 3)
                    summary[f"{layer}/{op}"] = row
            result["summary"] = summary

            log("purge: the oldest day, then the next (the history of the first goes with it)")
            result["purge"] = [purge_day(urls["full"], start), purge_day(urls["full"], start + DAY)]
            log(f"  {result['purge']}")
            save(result, args.output)
            log("for comparison: 50,000 links of the next day deleted in batches of 1,000")
            result["batched_delete"] = batched_delete(urls["full"], start + 2 * DAY, 50_000)
            log(f"  {result['batched_delete']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    full = result["sizes"]["full"]
    lines = [
        f"Run {result['date']} on {m.get('cpu', '?')}, PostgreSQL 15 ({result['config']['server']}, "
        f"default settings, max_wal_size 4GB); {result['config']['rounds']} interleaved rounds × "
        f"{result['config']['seconds']} s per measurement, medians. Full ledger: "
        f"{full['links']:,} links and {full['events']:,} events over 7 daily partitions, "
        f"filled by COPY in {result['fill_seconds']} s; "
        f"{full.get('bytes_per_link', 0)} bytes per link held "
        f"({full.get('links_bytes_per_link', 0)} link row + {full.get('events_bytes_per_link', 0)} "
        "history, indexes included).",
        "",
        "| layer / operation | empty: per s | 10 M: per s | ratio | empty: p99 ms | 10 M: p99 ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in result["summary"].items():
        lines.append(
            f"| {key} | {row['empty_per_s']:.0f} | {row['full_per_s']:.0f} | "
            f"{row['throughput_ratio']:.2f} | {row['empty_p99_ms']:.1f} | {row['full_p99_ms']:.1f} | "
            f"{row['p99_ratio']:.2f} |"
        )
    lines.append("")
    for i, p in enumerate(result["purge"], 1):
        lines.append(
            f"- purge run {i}: {p['links']:,} links and {p['events']:,} events, "
            f"{p['partitions_dropped']} partitions dropped, {p['partitions_created']} created "
            f"ahead, in **{p['seconds']} s**"
        )
    b = result["batched_delete"]
    lines.append(
        f"- the same by batched DELETE (SQLite's way): {b['links']:,} links with their events "
        f"in {b['seconds']} s = {b['links_per_s']:,} links/s, so one day of "
        f"{result['purge'][1]['links']:,} links would take "
        f"~{result['purge'][1]['links'] / max(b['links_per_s'], 1) / 60:.0f} min"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
