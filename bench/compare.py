"""Two checkouts side by side: is a change slower, endpoint by endpoint?

    .venv/bin/python -m bench.compare BEFORE [AFTER] [--n 600] [--rounds 6] [--limit 1.05]
    .venv/bin/python -m bench.compare BEFORE [AFTER] --served [--rounds 4] [--seconds 5]

BEFORE and AFTER are checkouts of linksvc (AFTER defaults to this one), each with its
translation catalogs compiled (``make catalogs``). Each round runs one round of the
in-process cells (``python -m bench.inproc --rounds 1``) in each checkout, in a process of
its own with this interpreter, the order alternating from round to round so that neither
always runs first. A cell's cost is taken relative to the hello-world blocks measured next
to it (``bench.inproc``), so a machine that speeds up or slows down between two processes
moves both alike; the ratio after / before is taken within each round and its median over
the rounds is printed per endpoint. Exits 1 when an endpoint's median ratio is above
``--limit`` (a change more than 5 % slower, by default).

``--served`` compares them under gunicorn instead, in their own production configuration
(each checkout's gunicorn.conf.py and code), on durable SQLite and on PostgreSQL: each round
serves one checkout and then the other on each database, the order alternating, and drives
each with wrk exactly as ``bench.run`` does (mint, verify, redeem; 8 connections). The cost
ratio of a round is before's req/s over after's (above 1: after is slower); its median over
the rounds is printed per database and endpoint, with the same ``--limit``. Both databases
are set up by this checkout's ``init-db`` (the schema must not differ between the two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def one_round(checkout: Path, n: int, targets: str) -> dict[str, Any]:
    """One round of ``bench.inproc`` in ``checkout``: its JSON result."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inproc",
            "--n",
            str(n),
            "--rounds",
            "1",
            "--targets",
            targets,
        ],
        cwd=checkout,
        # The checkout is only read: no __pycache__ written into it.
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench.inproc failed in {checkout}:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def compare(
    before: Path, after: Path, n: int, rounds: int, targets: str
) -> dict[str, dict[str, Any]]:
    """Per endpoint: the median CPU µs of each side and the median of the per-round ratios
    after / before of the hello-relative cost."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(rounds):
        order = [("before", before), ("after", after)]
        for side, checkout in order if r % 2 == 0 else order[::-1]:
            res = one_round(checkout, n, targets)
            runs[side].append(res)
            cells = {k: v for k, v in res["cpu_us"].items() if k != "hello/hello"}
            print(f"round {r + 1} {side:6s} " + json.dumps(cells), file=sys.stderr, flush=True)
    out: dict[str, dict[str, Any]] = {}
    for key in runs["after"][0]["ratio"]:
        if key == "hello/hello" or key not in runs["before"][0]["ratio"]:
            continue
        per_round = [
            a["ratio"][key] / b["ratio"][key]
            for a, b in zip(runs["after"], runs["before"], strict=True)
        ]
        out[key] = {
            "before_us": statistics.median(x["cpu_us"][key] for x in runs["before"]),
            "after_us": statistics.median(x["cpu_us"][key] for x in runs["after"]),
            "ratio": round(statistics.median(per_round), 3),
            "rounds": [round(x, 3) for x in per_round],
        }
    return out


def served(
    before: Path, after: Path, rounds: int, seconds: float, warmup: float, postgresql: bool
) -> dict[str, dict[str, Any]]:
    """Per database and endpoint under gunicorn: each side's median req/s and p99, and the
    median over the rounds of the cost ratio before req/s / after req/s."""
    import contextlib
    import tempfile

    from bench.harness import Instance, pg_bench_database, run_target
    from bench.measure import SCENARIOS, ensure_wrk

    ensure_wrk()
    sides = {"before": before, "after": after}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="linksvc-cmp-")))
        instances: dict[tuple[str, str], Instance] = {}
        for side, checkout in sides.items():
            instances["sqlite", side] = Instance(f"{side}-sqlite", workdir, None, root=checkout)
            if postgresql:
                url = stack.enter_context(pg_bench_database())
                instances["postgresql", side] = Instance(
                    f"{side}-postgresql", workdir, url, root=checkout
                )
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in instances}
        for r in range(rounds):
            for (db, side), inst in sorted(instances.items(), reverse=r % 2 == 1):
                res = run_target(inst, workdir, seconds, warmup, 1000.0)
                runs[db, side].append(res)
                rps = {s: round(res[s]["rps"]) for s in SCENARIOS}
                print(f"round {r + 1} {db:10s} {side:6s} {json.dumps(rps)}", file=sys.stderr)
    out: dict[str, dict[str, Any]] = {}
    for db in sorted({db for db, _ in instances}):
        b, a = runs[db, "before"], runs[db, "after"]
        for s in SCENARIOS:
            per_round = [x[s]["rps"] / y[s]["rps"] for x, y in zip(b, a, strict=True)]
            out[f"{db}/{s}"] = {
                "before_rps": round(statistics.median(x[s]["rps"] for x in b)),
                "after_rps": round(statistics.median(x[s]["rps"] for x in a)),
                "before_p99_ms": round(statistics.median(x[s]["p99_ms"] for x in b), 1),
                "after_p99_ms": round(statistics.median(x[s]["p99_ms"] for x in a), 1),
                "errors": sum(x[s]["non2xx"] + x[s]["read_errors"] for x in b + a),
                "ratio": round(statistics.median(per_round), 3),
                "rounds": [round(x, 3) for x in per_round],
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("before", type=Path, help="the checkout before the change")
    ap.add_argument("after", type=Path, nargs="?", default=ROOT, help="default: this checkout")
    ap.add_argument("--n", type=int, default=600, help="requests per cell and round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per checkout")
    ap.add_argument("--targets", default="linksvc", help="bench.inproc's targets")
    ap.add_argument("--limit", type=float, default=1.05, help="the largest ratio allowed")
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    ap.add_argument("--served", action="store_true", help="under gunicorn, on both databases")
    ap.add_argument("--seconds", type=float, default=5.0, help="--served: seconds a scenario")
    ap.add_argument("--warmup", type=float, default=2.0, help="--served: seconds of warm-up")
    ap.add_argument("--no-postgresql", action="store_true", help="--served: SQLite only")
    args = ap.parse_args()
    before, after = args.before.resolve(), args.after.resolve()
    print(f"before: {args.before}\nafter:  {args.after}")
    if args.served:
        result = served(
            before, after, args.rounds, args.seconds, args.warmup, not args.no_postgresql
        )
        head = f"{'req/s before':>13s} {'after':>6s} {'p99 ms before':>14s} {'after':>6s}"
        print(f"{'endpoint':22s} {head} {'cost ratio':>11s}  rounds")
        for key, v in result.items():
            flag = "  ** slower than the limit **" if v["ratio"] > args.limit else ""
            print(
                f"{key:22s} {v['before_rps']:13d} {v['after_rps']:6d} "
                f"{v['before_p99_ms']:14.1f} {v['after_p99_ms']:6.1f} {v['ratio']:11.3f}  "
                + " ".join(f"{x:.2f}" for x in v["rounds"])
                + flag
                + (f"  ({v['errors']} error answers)" if v["errors"] else "")
            )
    else:
        result = compare(before, after, args.n, args.rounds, args.targets)
        print(
            f"{'endpoint':26s} {'before µs':>10s} {'after µs':>10s} {'after/before':>13s}  rounds"
        )
        for key, v in result.items():
            flag = "  ** slower than the limit **" if v["ratio"] > args.limit else ""
            print(
                f"{key:26s} {v['before_us']:10.0f} {v['after_us']:10.0f} {v['ratio']:13.3f}  "
                + " ".join(f"{x:.2f}" for x in v["rounds"])
                + flag
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if any(v["ratio"] > args.limit for v in result.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
