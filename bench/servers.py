"""Both HTTP servers in one run (issue 27): hello-world, linksvc, the naive and the lean
baselines, each under gunicorn (gunicorn.conf.py) and under granian (serve.py), on durable
SQLite and on PostgreSQL; wrk, 2 threads, 8 connections. Every ratio is against numbers of
the same run, so every one has the same ceiling.

    .venv/bin/python -m bench.servers            # what `make bench` runs after bench/run.py
    .venv/bin/python -m bench.servers --quick    # 1 round of 3 s: to check the bench itself
    .venv/bin/python -m bench.servers --sweep    # linksvc under granian settings side by side

Writes bench/results/servers.json and servers.md (the table bench/README.md shows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, Baseline, Instance, pg_bench_database, verify_token
from bench.measure import SCENARIOS, ensure_wrk, machine, rss_mb, worker_pids, wrk
from tests.support.servers import SERVERS, start_server

ROOT = Path(__file__).resolve().parent.parent


TARGETS = ("linksvc", "naive", "lean")
#: granian settings tried for linksvc by --sweep: (workers, blocking threads, backpressure).
SWEEP = ((2, 1, 128), (2, 2, 128), (3, 1, 128), (3, 2, 128), (2, 2, 4))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def serve(
    server: str, env: dict[str, str], wsgi: str, logdir: Path, name: str, args: tuple[str, ...]
) -> Iterator[Any]:
    s = start_server(
        {**env, "PYTHONPATH": str(ROOT)},
        server=server,
        workers=None,
        log_path=logdir / f"{name}-{server}.log",
        wsgi=wsgi,
        extra_args=args,
    )
    try:
        yield s
    finally:
        s.stop()


def run_hello(server: str, workdir: Path, seconds: float, warmup: float) -> dict[str, Any]:
    # Hello-world in each server's own defaults on SQLite-sized workers (cores + 1 for
    # gunicorn, cores for granian): the ceiling of the server, not of a database.
    with serve(server, {}, "bench.hello:app", workdir, "hello", ()) as s:
        wrk(s.url, "hello.lua", warmup)
        res = wrk(s.url, "hello.lua", seconds)
        res["rss_mb"] = [rss_mb(p) for p in worker_pids(s.proc.pid)]
    return res


def run_target(
    server: str,
    target: Any,
    workdir: Path,
    seconds: float,
    warmup: float,
    args: tuple[str, ...] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tokens = target.premint(int(3000 * 2.5 * (seconds + warmup)))
    auth = {"BENCH_API_KEY": target.api_key}
    name = target.label + ("-" + "-".join(args).replace("--", "") if args else "")
    with serve(server, target.env, target.wsgi, workdir, name, args) as s:
        wrk(s.url, "mint.lua", warmup, **auth)
        out["mint"] = wrk(s.url, "mint.lua", seconds, **auth)
        token = verify_token(s.url, target.api_key)
        out["verify"] = wrk(s.url, "verify.lua", seconds, BENCH_TOKEN=token, **auth)
        out["redeem"] = wrk(s.url, "redeem.lua", seconds, BENCH_TOKENS_FILE=str(tokens), **auth)
        rss = [rss_mb(p) for p in worker_pids(s.proc.pid)]
    tokens.unlink()
    for scenario in SCENARIOS:
        out[scenario] = {k: out[scenario].get(k) for k in ("rps", "p50_ms", "p99_ms", "errors")}
        out[scenario]["rss_mb"] = rss
    return out


def _targets(db: str, url: str | None, workdir: Path) -> dict[str, Any]:
    linksvc = Instance(db, workdir, url)
    out: dict[str, Any] = {"linksvc": linksvc}
    base_url = url or f"sqlite:///{workdir / f'baseline-{db}.db'}"
    for kind in ("naive", "lean"):
        out[kind] = Baseline(kind, db, workdir, base_url)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    dbs: list[tuple[str, str | None]] = [("sqlite", None)]
    result: dict[str, Any] = {"machine": machine(), "load_at_start": os.getloadavg()}
    result["seconds"], result["rounds"] = args.seconds, args.rounds
    with contextlib.ExitStack() as stack:
        if not args.no_postgresql:
            dbs.append(("postgresql", stack.enter_context(pg_bench_database())))
        targets = {db: _targets(db, url, workdir) for db, url in dbs}
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            one: dict[str, Any] = {"hello": {}, "targets": {}}
            for server in SERVERS:
                log(f"round {r + 1}: hello under {server}")
                one["hello"][server] = run_hello(server, workdir, args.seconds, args.warmup)
            for db, _ in dbs:
                for name, target in targets[db].items():
                    for server in SERVERS:
                        log(f"round {r + 1}: {name} on {db} under {server}")
                        one["targets"][f"{name}/{db}/{server}"] = run_target(
                            server, target, workdir, args.seconds, args.warmup
                        )
            rounds.append(one)
    result["rounds_raw"] = rounds
    result["load_at_end"] = os.getloadavg()
    result["table"] = summarise(rounds)
    return result


def _median(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return round(statistics.median(vs), 2) if vs else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {"hello": {}, "rows": {}}
    for server in SERVERS:
        table["hello"][server] = _median([r["hello"][server]["rps"] for r in rounds])
    keys = rounds[0]["targets"].keys()
    for key in keys:
        _name, db, server = key.split("/")
        row: dict[str, Any] = {}
        for sc in SCENARIOS:
            cells = [r["targets"][key][sc] for r in rounds]
            lean_g = [r["targets"][f"lean/{db}/gunicorn"][sc]["rps"] for r in rounds]
            lean_s = [r["targets"][f"lean/{db}/{server}"][sc]["rps"] for r in rounds]
            row[sc] = {
                "rps": _median([c["rps"] for c in cells]),
                "p99_ms": _median([c["p99_ms"] for c in cells]),
                "errors": sum(sum((c.get("errors") or {}).values()) for c in cells),
                "vs_lean_gunicorn": _median(
                    [_ratio(c["rps"], b) for c, b in zip(cells, lean_g, strict=True)]
                ),
                "vs_lean_same_server": _median(
                    [_ratio(c["rps"], b) for c, b in zip(cells, lean_s, strict=True)]
                ),
                "vs_hello_same_server": _median(
                    [
                        _ratio(c["rps"], r["hello"][server]["rps"])
                        for c, r in zip(cells, rounds, strict=True)
                    ]
                ),
                "rss_mb": cells[-1]["rss_mb"],
            }
        table["rows"][key] = row
    return table


def markdown(result: dict[str, Any]) -> str:
    m, t = result["machine"], result["table"]
    la = ", ".join(f"{x:.1f}" for x in result["load_at_start"])
    le = ", ".join(f"{x:.1f}" for x in result["load_at_end"])
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {m.get('cpu', '?')}, "
        f"Python {m.get('python', '?')}; wrk 2 threads, 8 connections, {result['rounds']} "
        f"round(s) × {result['seconds']:g} s per cell (medians). Each server in its own default "
        f"settings (gunicorn.conf.py; serve.py for granian). Load average at start {la}, at "
        f"end {le}.",
        "",
        "Hello-world (Flask, one route): "
        + ", ".join(f"{s} {t['hello'][s]:.0f} req/s" for s in SERVERS)
        + f" ({_ratio(t['hello']['granian'], t['hello']['gunicorn'])}×).",
        "",
        "| target | db | server | call | req/s | p99 ms | errors | × lean (gunicorn) "
        "| × lean (same server) | × hello (same server) | RSS MB per worker |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, row in t["rows"].items():
        name, db, server = key.split("/")
        for sc in SCENARIOS:
            c = row[sc]
            lines.append(
                f"| {name} | {db} | {server} | {sc} | {c['rps']:.0f} | {c['p99_ms']} | "
                f"{c['errors']} | {c['vs_lean_gunicorn']} | {c['vs_lean_same_server']} | "
                f"{c['vs_hello_same_server']} | {', '.join(str(x) for x in c['rss_mb'])} |"
            )
    return "\n".join(lines) + "\n"


def sweep(args: argparse.Namespace, workdir: Path) -> None:
    """linksvc under each granian setting of SWEEP on both databases (how serve.py's
    defaults were chosen), gunicorn's default beside them."""
    rows = []
    with contextlib.ExitStack() as stack:
        dbs: list[tuple[str, str | None]] = [("sqlite", None)]
        if not args.no_postgresql:
            dbs.append(("postgresql", stack.enter_context(pg_bench_database())))
        for db, url in dbs:
            inst = Instance(f"sweep-{db}", workdir, url)
            configs: list[tuple[str, tuple[str, ...]]] = [("gunicorn", ())]
            for w, t, b in SWEEP:
                configs.append(
                    (
                        "granian",
                        ("--workers", str(w), "--threads", str(t), "--backpressure", str(b)),
                    )
                )
            for server, extra in configs:
                log(f"sweep {db} {server} {' '.join(extra)}")
                res = run_target(server, inst, workdir, args.seconds, args.warmup, extra)
                rows.append((db, server, " ".join(extra) or "defaults", res))
    out = [
        "| db | server | settings | mint req/s (p99) | verify req/s (p99) | redeem req/s (p99) |"
    ]
    out.append("|---|---|---|---|---|---|")
    for db, server, settings, res in rows:
        cells = " | ".join(f"{res[sc]['rps']:.0f} ({res[sc]['p99_ms']})" for sc in SCENARIOS)
        out.append(f"| {db} | {server} | {settings} | {cells} |")
    text = "\n".join(out) + "\n"
    (RESULTS / "servers-sweep.md").write_text(
        f"Load average at end {os.getloadavg()}; {args.seconds:g} s per cell.\n\n" + text
    )
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--no-postgresql", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    args, _ = ap.parse_known_args()  # `make bench BENCH_ARGS=…` passes bench/run.py's too
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3, 1
    ensure_wrk()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="linksvc-bench-servers-") as tmp:
        if args.sweep:
            sweep(args, Path(tmp))
            return
        result = bench(args, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "servers.json").write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    (RESULTS / "servers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
