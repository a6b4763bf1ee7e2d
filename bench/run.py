"""Side-by-side benchmark: linksvc against a Flask hello-world, a naive and a lean baseline.

`make bench` runs this. In one run it:

1. measures the in-process CPU per request (``bench/inproc.py``: Flask test client, SQLite
   on tmpfs, ``time.process_time``) of hello-world and of linksvc's mint, verify, redeem and
   code exchange, and of the same calls in ``bench/naive.py`` and ``bench/lean.py``;
2. times the signature floor in-process (PyJWT and linksvc's strict verify per algorithm);
3. serves, interleaved over several rounds, hello-world (``bench/hello.py``), linksvc, the
   naive baseline and the lean ceiling on durable SQLite and on PostgreSQL, all under
   ``gunicorn -c gunicorn.conf.py`` (linksvc's production defaults; hello-world in its faster
   configuration), and drives each with wrk (8 connections, loopback): mint, verify and
   redeem (every redemption a first use of a token recorded beforehand);
4. soaks linksvc with mints for 60 s, sampling each worker's RSS, after 60 s of the same
   (one window of the bench client's limits, whose keys the in-memory limiter keeps);
5. prints the tables with the ratios to hello-world and to the baselines and the issue's
   targets (met, or missed by how much), writes ``bench/results/latest.{json,md,png}``.

``--profile`` instead samples the linksvc workers with py-spy under mint and redeem load and
prints the hottest functions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.harness import BENCH_LIMIT_WINDOW_S, RESULTS, bench
from bench.measure import ensure_wrk, log
from bench.profiling import models, profile
from bench.report import draw, markdown, print_table


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--seconds", type=float, default=6, help="measured seconds per scenario per round"
    )
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--soak", type=int, default=60, help="seconds of the memory soak (0: none)")
    ap.add_argument(
        "--soak-warmup",
        type=int,
        default=BENCH_LIMIT_WINDOW_S,
        help="seconds of minting before the soak's first sample (one limit window)",
    )
    ap.add_argument("--no-postgresql", action="store_true")
    ap.add_argument("--floor-n", type=int, default=300)
    ap.add_argument("--inproc-n", type=int, default=1000, help="requests per in-process cell")
    ap.add_argument("--inproc-rounds", type=int, default=5)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 round × 3 s, 20 s soak after 5 s: to check the bench itself",
    )
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the workers instead of benchmarking"
    )
    ap.add_argument(
        "--models",
        action="store_true",
        help="compare the serving models (MODELS) instead of benchmarking",
    )
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.soak, args.floor_n = 1, 3, 1, 20, 50
        args.soak_warmup = 5
        args.inproc_n, args.inproc_rounds = 300, 1
    ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="linksvc-bench-"))
    try:
        if args.profile:
            profile(workdir, int(args.seconds), 30)
            return
        if args.models:
            models(workdir, args.seconds)
            return
        result = bench(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    draw(result, args.output.with_suffix(".png"))
    args.output.with_suffix(".md").write_text(markdown(result))
    print_table(result)
    log(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
