"""The run: the instances and baselines under test, gunicorn serving them, the interleaved
rounds of hello-world, linksvc, naive and lean, and the memory soak; ``bench`` puts one run's
result together."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import (
    CONNECTIONS,
    SCENARIOS,
    THREADS,
    crypto_floor,
    log,
    machine,
    rss_mb,
    summarise,
    worker_pids,
    wrk,
)
from bench.targets import check_targets
from tests.support.databases import PG_ADMIN_URL, fresh_pg_database, pg_available
from tests.support.env import base_env, flask_cli
from tests.support.servers import start_gunicorn

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"


@contextlib.contextmanager
def pg_bench_database() -> Iterator[str]:
    ok, why = pg_available()
    if not ok:
        raise SystemExit(f"PostgreSQL at {PG_ADMIN_URL} is not available: {why}")
    with fresh_pg_database("linksvc_bench") as url:
        yield url


#: The bench client's limits: far above any rate here, so that no request is limited, but
#: counted all the same (every mint is a new subject, so a key per mint for one window).
BENCH_LIMIT = "1000000 per minute"
BENCH_LIMIT_WINDOW_S = 60


class Instance:
    """A linksvc instance (settings, database, bench client) that servers are started on."""

    def __init__(
        self,
        label: str,
        workdir: Path,
        database_url: str | None,
        wsgi: str = "app:app",
        root: Path = ROOT,
    ) -> None:
        self.label = label
        self.wsgi = wsgi
        #: The checkout served (its schema must be this one's: the database is set up here).
        self.root = root
        instance = workdir / f"instance-{label}"
        self.env = base_env(
            instance, database_url, LINKSVC_MAX_TTL_MAGIC_LINK="900", LINKSVC_LOG_LEVEL="info"
        )
        flask_cli(self.env, "init-db")
        out = flask_cli(
            self.env,
            "clients",
            "create",
            "bench",
            "--purposes",
            "magic_link",
            "--redirect-uri",
            "http://127.0.0.1:5001/callback",
            "--mint-limit",
            BENCH_LIMIT,
            "--subject-limit",
            BENCH_LIMIT,
            "--json",
        )
        created = json.loads(out.stdout)
        self.api_key, self.client_id = created["api_key"], created["client_id"]
        self.workdir = workdir

    def premint(self, n: int) -> Path:
        """Sign ``n`` tokens and record them in the ledger in one transaction, as a mint would."""
        from linksvc import create_app
        from linksvc.links import ledger, tokens
        from linksvc.services import services
        from linksvc.store import db

        app = create_app(self.env)
        svc = services(app).links
        s = svc.settings
        key = svc.keyring.signing_key()
        now = int(time.time())
        path = self.workdir / f"tokens-{self.label}.txt"
        lines = []
        with db.write(svc.engine) as conn:
            for i in range(n):
                claims = tokens.Claims(
                    iss=s.issuer,
                    aud=self.client_id,
                    sub=f"pre-{i}",
                    pur="magic_link",
                    jti=tokens.new_jti(),
                    iat=now,
                    nbf=now,
                    exp=now + 900,
                )
                lines.append(tokens.sign(claims, key))
                ledger.record_mint(
                    conn,
                    ledger.LinkRecord(
                        jti=claims.jti,
                        client_id=self.client_id,
                        purpose="magic_link",
                        subject=claims.sub,
                        kid=key.kid,
                        iat=now,
                        exp=claims.exp,
                        redirect_uri="http://127.0.0.1:5001/callback",
                    ),
                    supersede=False,
                    now=now,
                )
        svc.engine.dispose()
        path.write_text("\n".join(lines) + "\n")
        return path


@contextlib.contextmanager
def serve(
    env: dict[str, str],
    wsgi: str,
    logdir: Path,
    name: str,
    args: tuple[str, ...] | None,
    root: Path = ROOT,
) -> Iterator[Any]:
    """gunicorn with gunicorn.conf.py; ``args`` None: its own defaults (LINKSVC_WORKERS…)."""
    server = start_gunicorn(
        {**env, "PYTHONPATH": str(root)},
        workers=None,
        log_path=logdir / f"{name}.log",
        wsgi=wsgi,
        extra_args=args or (),
        root=root,
    )
    try:
        yield server
    finally:
        server.stop()


#: Gunicorn options per kind of target. linksvc runs in its own default production
#: configuration (gunicorn.conf.py alone); the baselines run the same way, so the comparison
#: is of the code, not the serving model; hello-world runs both ways each round and the
#: faster counts (the configuration that is fastest for it).
#: Hello-world runs in each of these and counts in its fastest: gunicorn.conf.py's default
#: (sync workers, cores + 1), 2 sync workers, and threaded workers with keep-alive (2 x 4
#: gthread, the old default).
HELLO_CONFIGS = {
    "hello-default": (),
    "hello-2sync": ("--workers", "2"),
    "hello-gthread": ("--workers", "2", "--threads", "4"),
}


class Baseline:
    """bench/naive.py or bench/lean.py on one database, served by gunicorn."""

    def __init__(self, kind: str, db_label: str, workdir: Path, database_url: str) -> None:
        import importlib

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.kind, self.db_label = kind, db_label
        self.label = f"{kind}-{db_label}"
        self.module = importlib.import_module(f"bench.{kind}")
        self.database_url = database_url
        self.pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.key_file = workdir / f"{self.label}.pem"
        self.key_file.write_bytes(self.pem)
        self.api_key = f"bench-{self.label}"
        self.workdir = workdir
        self.root = ROOT
        self.wsgi = f"bench.{kind}:app"
        self.env = {
            # What the baseline reads is BENCH_DATABASE_URL; gunicorn.conf.py reads this one
            # to size its workers, so that the baseline is served exactly like linksvc.
            "LINKSVC_DATABASE_URL": database_url,
            "BENCH_DATABASE_URL": database_url,
            "BENCH_KEY_FILE": str(self.key_file),
            "BENCH_API_KEY": self.api_key,
        }

    def premint(self, n: int) -> Path:
        path = self.workdir / f"tokens-{self.label}.txt"
        path.write_text("\n".join(self.module.premint(self.database_url, self.pem, n)) + "\n")
        return path


def run_hello(workdir: Path, seconds: float, warmup: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, args in HELLO_CONFIGS.items():
        with serve({}, "bench.hello:app", workdir, name, args) as server:
            wrk(server.url, "hello.lua", warmup)
            res = wrk(server.url, "hello.lua", seconds)
            res["rss_mb"] = [rss_mb(p) for p in worker_pids(server.proc.pid)]
            res["config"] = " ".join(args) or "gunicorn.conf.py"
            out[name] = res
    best = max(out.values(), key=lambda r: r["rps"])
    return {"hello": best, "configs": {k: round(v["rps"]) for k, v in out.items()}}


def verify_token(url: str, api_key: str) -> str:
    """One link minted on the server at ``url``: the token the verify scenario checks."""
    import requests

    resp = requests.post(
        url + "/api/v1/links",
        json={"purpose": "magic_link", "subject": "verify-me"},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    return str(resp.json()["token"])


def run_target(
    target: Any, workdir: Path, seconds: float, warmup: float, expected_rps: float
) -> dict[str, Any]:
    """mint, verify and redeem against one target (linksvc or a baseline) under gunicorn."""
    out: dict[str, Any] = {}
    # Enough first-use tokens for the fastest plausible redeem run, and then some.
    tokens_file = target.premint(int(max(expected_rps, 800) * 2.5 * (seconds + warmup)))
    auth = {"BENCH_API_KEY": target.api_key}
    with serve(target.env, target.wsgi, workdir, target.label, None, target.root) as server:
        wrk(server.url, "mint.lua", warmup, **auth)
        out["mint"] = wrk(server.url, "mint.lua", seconds, **auth)
        token = verify_token(server.url, target.api_key)
        out["verify"] = wrk(server.url, "verify.lua", seconds, BENCH_TOKEN=token, **auth)
        out["redeem"] = wrk(
            server.url, "redeem.lua", seconds, BENCH_TOKENS_FILE=str(tokens_file), **auth
        )
        rss = [rss_mb(p) for p in worker_pids(server.proc.pid)]
        for scenario in SCENARIOS:
            out[scenario]["rss_mb"] = rss
    tokens_file.unlink()
    return out


def soak(
    inst: Instance, workdir: Path, seconds: int, step: int = 10, warmup: int = BENCH_LIMIT_WINDOW_S
) -> dict[str, Any]:
    """Mint for ``seconds``, sampling every worker's RSS after each ``step``.

    First ``warmup`` seconds of the same minting, one window of the bench client's limits:
    the in-memory limiter keeps every new subject's key for that window, so RSS grows
    through the first window of new subjects by design and the soak measures after it,
    when keys leave as fast as they come, what is left to grow."""
    auth = {"BENCH_API_KEY": inst.api_key}
    samples: list[dict[str, Any]] = []
    with serve(inst.env, "app:app", workdir, f"soak-{inst.label}", None) as server:
        pids = worker_pids(server.proc.pid)
        first = {str(p): rss_mb(p) for p in pids}
        wrk(server.url, "mint.lua", warmup, **auth)
        t0 = time.monotonic()
        samples.append({"t": 0.0, "rss_mb": {str(p): rss_mb(p) for p in pids}, "rps": None})
        while time.monotonic() - t0 < seconds - 0.5:
            res = wrk(server.url, "mint.lua", step, **auth)
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "rss_mb": {str(p): rss_mb(p) for p in pids},
                    "rps": res["rps"],
                    "p99_ms": res["p99_ms"],
                    "non2xx": res["non2xx"],
                }
            )
            log(f"  soak t={samples[-1]['t']}s rps={res['rps']:.0f} rss={samples[-1]['rss_mb']}")
        same_workers = worker_pids(server.proc.pid) == pids
    growth = {
        p: round(samples[-1]["rss_mb"][p] - samples[0]["rss_mb"][p], 1)
        for p in samples[0]["rss_mb"]
    }
    return {
        "seconds": seconds,
        "warmup_s": warmup,
        "database": inst.label,
        "rss_mb_before_warmup": first,
        "samples": samples,
        "same_workers": same_workers,
        "growth_mb": growth,
    }


def serving_model() -> str:
    """What gunicorn.conf.py serves with by default on each database, in words (tables)."""
    import runpy

    out = []
    saved = os.environ.get("LINKSVC_DATABASE_URL")
    try:
        for label, url in (("SQLite", "sqlite:///x.db"), ("PostgreSQL", "postgresql://x/y")):
            os.environ["LINKSVC_DATABASE_URL"] = url
            conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
            threads = conf.get("threads", 1)
            model = f"{conf['workers']} {conf['worker_class']} workers" + (
                f" × {threads} threads" if threads > 1 else ""
            )
            out.append(f"{model} on {label}")
    finally:
        if saved is None:
            os.environ.pop("LINKSVC_DATABASE_URL", None)
        else:
            os.environ["LINKSVC_DATABASE_URL"] = saved
    return ", ".join(out)


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from bench import inproc

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": {
            "serving": serving_model(),
            "connections": CONNECTIONS,
            "wrk_threads": THREADS,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
        },
    }
    log("in-process CPU per request")
    result["inproc"] = inproc.run(
        args.inproc_n, args.inproc_rounds, ["linksvc", "linksvc-webhooks", "naive", "lean"], log
    )
    log("floor: signatures")
    result["floor"] = {"crypto": crypto_floor(args.floor_n)}
    with contextlib.ExitStack() as stack:
        targets: list[Any] = [
            Instance("linksvc-sqlite", workdir, None),
            Baseline("naive", "sqlite", workdir, f"sqlite:///{workdir / 'naive.db'}"),
            Baseline("lean", "sqlite", workdir, f"sqlite:///{workdir / 'lean.db'}"),
        ]
        if not args.no_postgresql:
            pg = [stack.enter_context(pg_bench_database()) for _ in range(3)]
            targets += [
                Instance("linksvc-postgresql", workdir, pg[0]),
                Baseline("naive", "postgresql", workdir, pg[1]),
                Baseline("lean", "postgresql", workdir, pg[2]),
            ]
        rounds: list[dict[str, Any]] = []
        expected = 1000.0
        for r in range(args.rounds):
            order: list[Any] = ["hello", *targets]
            order = order[r % len(order) :] + order[: r % len(order)]  # interleave: each leads once
            this: dict[str, Any] = {"round": r + 1}
            for target in order:
                if target == "hello":
                    log(f"round {r + 1}: hello-world")
                    hello = run_hello(workdir, args.seconds, args.warmup)
                    this["hello"] = {"hello": hello["hello"]}
                    this["hello_configs"] = hello["configs"]
                else:
                    log(f"round {r + 1}: {target.label}")
                    this[target.label] = run_target(
                        target, workdir, args.seconds, args.warmup, expected
                    )
                    expected = max(
                        expected,
                        this[target.label]["verify"]["rps"],
                        this[target.label]["mint"]["rps"],
                    )
                log(
                    "  "
                    + json.dumps(
                        {
                            k: {s: round(v[s]["rps"]) for s in v}
                            for k, v in this.items()
                            if k not in ("round", "hello_configs")
                        }
                    )
                )
            rounds.append(this)
        result["rounds"] = rounds
        result.update(summarise(rounds))
        if args.soak:
            log(f"soak: {args.soak} s of mints on sqlite, after {args.soak_warmup} s of the same")
            result["soak"] = soak(targets[0], workdir, args.soak, warmup=args.soak_warmup)
    result["targets"] = check_targets(result)
    return result
