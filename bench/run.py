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
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    PG_ADMIN_URL,
    base_env,
    flask_cli,
    fresh_pg_database,
    pg_available,
    start_gunicorn,
)

CONNECTIONS = 8
THREADS = 2
SCENARIOS = ("mint", "verify", "redeem")
P99_TARGET_MS = 20.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    wrk_version = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk_version[0] if wrk_version else "wrk").split(" [")[0],
        "loadavg_at_start": os.getloadavg(),
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("wrk is missing: installing it from Debian's packages")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], check=True, env=env)


# -- the floor, in-process -------------------------------------------------------------------


def per_op_us(fn: Callable[[], Any], n: int, repeats: int = 5) -> float:
    """Best of ``repeats`` of the mean time of ``n`` calls, in microseconds (timeit's rule:
    the fastest run is the one least disturbed by the rest of the machine)."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return round(min(samples), 1)


def crypto_floor(n: int) -> dict[str, Any]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from linksvc import tokens
    from linksvc.tokens import SigningKey, VerificationKey

    out: dict[str, Any] = {}
    now = int(time.time())
    for alg, private in (
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        public = private.public_key()
        claims = {
            "iss": "http://bench",
            "aud": "cl_bench",
            "sub": "user-42",
            "pur": "magic_link",
            "jti": tokens.new_jti(),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        headers = {"kid": "k1", "typ": "link+jwt"}
        token = jwt.encode(claims, private, algorithm=alg, headers=headers)
        row: dict[str, float] = {
            "pyjwt_sign_us": per_op_us(
                lambda: jwt.encode(claims, private, algorithm=alg, headers=headers), n
            ),
            "pyjwt_verify_us": per_op_us(
                lambda: jwt.decode(
                    token, public, algorithms=[alg], audience="cl_bench", issuer="http://bench"
                ),
                n,
            ),
        }

        # linksvc's own path over the same primitive: strict parsing and every claim check.
        class Keys:
            def signing_key(self) -> SigningKey:
                return SigningKey("k1", alg, private)

            def verification_key(self, kid: str) -> VerificationKey:
                return VerificationKey("k1", alg, public)

        c = tokens.Claims(**claims)
        ours = tokens.sign(c, Keys().signing_key())
        row["linksvc_sign_us"] = per_op_us(lambda: tokens.sign(c, Keys().signing_key()), n)
        row["linksvc_verify_us"] = per_op_us(
            lambda: tokens.verify(
                ours,
                keys=Keys(),
                issuer="http://bench",
                purposes=["magic_link"],
                audience="cl_bench",
                now=now,
                leeway=5,
                ceilings={"magic_link": 300, "password_reset": 300, "download": 300},
            ),
            n,
        )
        out[alg] = row
        log(f"  floor {alg}: {row}")
    return out


# -- servers ---------------------------------------------------------------------------------


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
        self, label: str, workdir: Path, database_url: str | None, wsgi: str = "app:app"
    ) -> None:
        self.label = label
        self.wsgi = wsgi
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
        from linksvc import create_app, db, ledger, tokens
        from linksvc.services import services

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


def worker_pids(master: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@contextlib.contextmanager
def serve(
    env: dict[str, str], wsgi: str, logdir: Path, name: str, args: tuple[str, ...] | None
) -> Iterator[Any]:
    """gunicorn with gunicorn.conf.py; ``args`` None: its own defaults (LINKSVC_WORKERS…)."""
    server = start_gunicorn(
        env, workers=None, log_path=logdir / f"{name}.log", wsgi=wsgi, extra_args=args or ()
    )
    try:
        yield server
    finally:
        server.stop()


def wrk(url: str, script: str, seconds: float, **env: str) -> dict[str, Any]:
    full = {**os.environ, "BENCH_LUA_DIR": str(BENCH / "lua"), "BENCH_THREADS": str(THREADS), **env}
    seconds = max(1, round(seconds))  # wrk takes whole seconds only
    cmd = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / "lua" / script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    res = json.loads(line[len("WRKJSON ") :])
    # The load generator's own CPU, in cores: evidence that it is not what limits a run.
    res["wrk_cpu_cores"] = round(
        (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds, 2
    )
    return res


# -- the rounds ------------------------------------------------------------------------------


def _tmpfs() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() else None


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
    env = {"PYTHONPATH": str(ROOT)}
    out: dict[str, Any] = {}
    for name, args in HELLO_CONFIGS.items():
        with serve(env, "bench.hello:app", workdir, name, args) as server:
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
    with serve(
        {**target.env, "PYTHONPATH": str(ROOT)}, target.wsgi, workdir, target.label, None
    ) as server:
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


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    keys = {
        (k, s)
        for r in rounds
        for k, v in r.items()
        if k not in ("round", "hello_configs")
        for s in v
    }
    for target, scenario in sorted(keys):
        runs = [r[target][scenario] for r in rounds if target in r]
        summary[f"{target}/{scenario}"] = {
            "rps": round(statistics.median([x["rps"] for x in runs]), 1),
            "p50_ms": round(statistics.median([x["p50_ms"] for x in runs]), 2),
            "p99_ms": round(statistics.median([x["p99_ms"] for x in runs]), 2),
            "non2xx": sum(x["non2xx"] for x in runs),
            "socket_errors": sum(
                x["connect_errors"] + x["read_errors"] + x["timeouts"] for x in runs
            ),
            "rss_mb_per_worker": max(max(x["rss_mb"]) for x in runs),
            "wrk_cpu_cores": round(statistics.median([x["wrk_cpu_cores"] for x in runs]), 2),
            "runs_rps": [round(x["rps"]) for x in runs],
        }
    # Ratios within each round (same conditions), then the median of those.
    ratios: dict[str, float] = {}
    vs: dict[str, float] = {}
    labels = sorted({k for r in rounds for k in r if k not in ("round", "hello", "hello_configs")})
    for label in labels:
        for scenario in SCENARIOS:
            per_round = [
                r[label][scenario]["rps"] / r["hello"]["hello"]["rps"]
                for r in rounds
                if label in r and "hello" in r
            ]
            if per_round:
                ratios[f"{label}/{scenario}"] = _median(per_round)
            if not label.startswith("linksvc-"):
                continue
            db_label = label.removeprefix("linksvc-")
            for base in ("naive", "lean"):
                other = f"{base}-{db_label}"
                per_round = [
                    r[label][scenario]["rps"] / r[other][scenario]["rps"]
                    for r in rounds
                    if label in r and other in r
                ]
                if per_round:
                    vs[f"{label}/{scenario} vs {base}"] = _median(per_round)
    return {"medians": summary, "ratios": ratios, "vs_baselines": vs}


#: Issue 18's targets: in-process CPU per request as a multiple of hello-world's (at most),
#: throughput as a share of hello-world's (at least), p99 in ms (at most).
INPROC_TARGETS = {"mint": 2.9, "verify": 3.1, "redeem": 3.5}
SHARE_TARGETS = {("sqlite", "mint"): 0.30, ("sqlite", "redeem"): 0.30, ("sqlite", "verify"): 0.40}
SHARE_TARGETS |= {("postgresql", "mint"): 0.35, ("postgresql", "redeem"): 0.35}
SHARE_TARGETS |= {("postgresql", "verify"): 0.40}
NAIVE_TARGETS = {"sqlite": 1.5, "postgresql": 1.2}
LEAN_WITHIN = 0.15


def _check(what: str, value: float | None, goal: float, at_most: bool) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value <= goal if at_most else value >= goal
    gap = (value / goal - 1) if at_most else (1 - value / goal)
    return {
        "what": what,
        "value": value,
        "goal": f"{'<=' if at_most else '>='} {goal}",
        "met": met,
        "missed_by": None if met else f"{gap:.0%}",
    }


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any] | None] = []
    inproc = result.get("inproc")
    if inproc:
        for scenario, goal in INPROC_TARGETS.items():
            ratio = inproc["ratio"].get(f"linksvc/{scenario}")
            checks.append(_check(f"in-process CPU, {scenario} / hello", ratio, goal, True))
            lean = inproc["ratio"].get(f"lean/{scenario}")
            if ratio is not None and lean:
                checks.append(
                    _check(
                        f"in-process CPU, {scenario}: linksvc / lean",
                        round(ratio / lean, 3),
                        1 + LEAN_WITHIN,
                        True,
                    )
                )
    for (db_label, scenario), goal in SHARE_TARGETS.items():
        ratio = result["ratios"].get(f"linksvc-{db_label}/{scenario}")
        checks.append(_check(f"{scenario} rps / hello rps on {db_label}", ratio, goal, False))
        if scenario == "verify":
            continue
        vs = result["vs_baselines"]
        checks.append(
            _check(
                f"{scenario} rps, linksvc / naive on {db_label}",
                vs.get(f"linksvc-{db_label}/{scenario} vs naive"),
                NAIVE_TARGETS[db_label],
                False,
            )
        )
        checks.append(
            _check(
                f"{scenario} rps, linksvc / lean on {db_label}",
                vs.get(f"linksvc-{db_label}/{scenario} vs lean"),
                1 - LEAN_WITHIN,
                False,
            )
        )
        m = result["medians"].get(f"linksvc-{db_label}/{scenario}")
        checks.append(
            _check(
                f"{scenario} p99 on {db_label} (ms)",
                m["p99_ms"] if m else None,
                P99_TARGET_MS,
                True,
            )
        )
    if "soak" in result:
        growth = max(result["soak"]["growth_mb"].values())
        checks.append(
            _check(
                f"RSS growth per worker over the {result['soak']['seconds']} s soak (MB)",
                growth,
                5.0,
                True,
            )
        )
    return [c for c in checks if c is not None]


def print_table(result: dict[str, Any]) -> None:
    print()
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    """The tables for the READMEs."""
    m = result["machine"]
    c = result["config"]
    out = [
        f"Run {result['date']} on {m['nproc']} × {m['cpu']}, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}, {m['wrk']}; linksvc, naive and lean under "
        f"`gunicorn -c gunicorn.conf.py` ({c['serving']}), hello-world in its faster of "
        f"{' / '.join(HELLO_CONFIGS)}; wrk {c['connections']} connections, {c['rounds']} "
        f"interleaved rounds × {c['seconds']} s per scenario (medians of the rounds; ratio = "
        "median of the per-round ratios). Load average at start: "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}.",
        "",
    ]
    inproc = result.get("inproc")
    if inproc:
        out += [
            f"In-process CPU per request (Flask test client, SQLite on tmpfs, "
            f"`time.process_time`, {inproc['n']} requests × {inproc['rounds']} rounds, each "
            "cell next to its own hello-world run):",
            "",
            "| endpoint | hello | linksvc | naive | lean | linksvc / lean | target |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        hello = inproc["cpu_us"]["hello/hello"]
        for scenario in ("mint", "verify", "redeem", "exchange"):
            cells = []
            for t in ("linksvc", "naive", "lean"):
                us = inproc["cpu_us"].get(f"{t}/{scenario}")
                ratio = inproc["ratio"].get(f"{t}/{scenario}")
                cells.append(f"{us:.0f} µs ({ratio:.2f}×)" if us is not None else "-")
            lk, ln = (
                inproc["ratio"].get(f"linksvc/{scenario}"),
                inproc["ratio"].get(f"lean/{scenario}"),
            )
            out.append(
                f"| {scenario} | {hello:.0f} µs | {' | '.join(cells)} | "
                f"{f'{lk / ln:.2f}' if lk and ln else '-'} | "
                f"{f'≤ {INPROC_TARGETS[scenario]}×' if scenario in INPROC_TARGETS else '-'} |"
            )
        out.append("")
        # What a webhook client's outbox row costs (linksvc.outbox; bench/inproc.py).
        wh = [
            (
                sc,
                inproc["cpu_us"].get(f"linksvc/{sc}"),
                inproc["cpu_us"].get(f"linksvc-webhooks/{sc}"),
            )
            for sc in ("mint", "redeem")
        ]
        if all(a and b for _, a, b in wh):
            out += [
                "With a webhook endpoint (its outbox row written with each change), CPU per "
                "request: "
                + ", ".join(
                    f"{sc} {b:.0f} µs against {a:.0f} µs ({(b / a - 1) * 100:+.1f}%)"
                    for sc, a, b in wh
                )
                + ".",
                "",
            ]
    out += [
        "| target / scenario | req/s | % of hello | vs naive | vs lean | p50 ms | p99 ms "
        "| non-2xx | RSS/worker MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in result["medians"].items():
        ratio = result["ratios"].get(name, 1.0 if name == "hello/hello" else None)
        naive = result["vs_baselines"].get(f"{name} vs naive")
        lean = result["vs_baselines"].get(f"{name} vs lean")
        out.append(
            f"| {name} | {v['rps']:.0f} | {f'{ratio:.0%}' if ratio is not None else '-'} "
            f"| {f'{naive:.2f}×' if naive else '-'} | {f'{lean:.2f}×' if lean else '-'} "
            f"| {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['non2xx']} "
            f"| {v['rss_mb_per_worker']:.0f} |"
        )
    if "soak" in result:
        s = result["soak"]
        out += [
            "",
            f"Memory: {s['seconds']} s of sustained minting on {s['database']}, after "
            f"{s['warmup_s']} s of the same (one window of the bench client's limits, which "
            "the in-memory limiter keeps a key per new subject for), RSS per worker (MB): "
            f"before the warm-up {', '.join(f'{v:.1f}' for v in s['rss_mb_before_warmup'].values())}; "
            + "; ".join(
                f"t={x['t']:.0f} s: " + ", ".join(f"{v:.1f}" for v in x["rss_mb"].values())
                for x in s["samples"]
            ),
        ]
    out += ["", "| target | value | goal | | missed by |", "|---|---:|---|---|---:|"]
    for t in result["targets"]:
        out.append(
            f"| {t['what']} | {t['value']} | {t['goal']} | "
            f"{'met' if t['met'] else '**not met**'} | {t['missed_by'] or ''} |"
        )
    return "\n".join(out) + "\n"


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["medians"])
    rps = [result["medians"][n]["rps"] for n in names]
    p99 = [result["medians"][n]["p99_ms"] for n in names]
    p50 = [result["medians"][n]["p50_ms"] for n in names]

    def color(n: str) -> str:
        if n.startswith("hello"):
            return "#888888"
        if n.startswith("naive"):
            return "#d9d9d9"
        if n.startswith("lean"):
            return "#a1d99b"
        return "#3a7bd5" if "sqlite" in n else "#e07a1f"

    colors = [color(n) for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    bars = ax.bar(names, rps, color=colors)
    for bar, n in zip(bars, names, strict=False):
        r = result["ratios"].get(n)
        if r is not None:
            ax.annotate(
                f"{r:.0%}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_title("requests/s (median of rounds; % of hello-world)")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax = axes[1]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#9ecae1")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#08519c")
    ax.axhline(P99_TARGET_MS, ls="--", color="red", lw=0.8, label="p99 target")
    ax.set_xticks(list(x), names, rotation=60, fontsize=7)
    ax.set_title("latency (ms)")
    ax.legend()
    ax = axes[2]
    inproc = result.get("inproc")
    if inproc:
        scen = ["mint", "verify", "redeem", "exchange"]
        for i, t in enumerate(("linksvc", "naive", "lean")):
            vals = [inproc["ratio"].get(f"{t}/{s}", 0) for s in scen]
            ax.bar([j + (i - 1) * 0.27 for j in range(len(scen))], vals, width=0.27, label=t)
        for j, s in enumerate(scen):
            if s in INPROC_TARGETS:
                ax.hlines(INPROC_TARGETS[s], j - 0.4, j + 0.4, colors="red", lw=1)
        ax.set_xticks(range(len(scen)), scen)
        ax.set_title("in-process CPU per request, × hello-world (red: target)")
        ax.legend()
    m = result["machine"]
    fig.suptitle(
        f"linksvc vs hello-world, naive and lean — {result['date']} — {m['nproc']} CPUs {m['cpu']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- profiling -------------------------------------------------------------------------------


#: The serving models compared by ``--models`` (bench/README.md, "Serving model").
MODELS = {
    "default": (),
    "gthread-2x4": ("--workers", "2", "--threads", "4"),
    "sync-3": ("--workers", "3", "--threads", "1"),
    "sync-5": ("--workers", "5", "--threads", "1"),
}


def models(workdir: Path, seconds: float) -> None:
    """linksvc on durable SQLite and on PostgreSQL under each of :data:`MODELS`: requests
    per second, p99 and each worker's CPU (in cores) per scenario, one line per cell."""

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with contextlib.ExitStack() as stack:
        for label in ("sqlite", "postgresql"):
            database = stack.enter_context(pg_bench_database()) if label == "postgresql" else None
            inst = Instance(f"linksvc-{label}", workdir, database)
            for name, args in MODELS.items():
                tokens = inst.premint(int(1000 * 2.5 * (seconds + 1)))
                auth = {"BENCH_API_KEY": inst.api_key}
                env = {**inst.env, "PYTHONPATH": str(ROOT)}
                with serve(env, inst.wsgi, workdir, f"{inst.label}-{name}", args or None) as srv:
                    wrk(srv.url, "mint.lua", 1, **auth)
                    token = verify_token(srv.url, inst.api_key)
                    cells = []
                    for scenario, extra in (
                        ("mint", {}),
                        ("verify", {"BENCH_TOKEN": token}),
                        ("redeem", {"BENCH_TOKENS_FILE": str(tokens)}),
                    ):
                        pids = worker_pids(srv.proc.pid)
                        before = {p: cpu(p) for p in pids}
                        r = wrk(srv.url, f"{scenario}.lua", seconds, **auth, **extra)
                        cores = "/".join(f"{(cpu(p) - before[p]) / seconds:.2f}" for p in pids)
                        cells.append(
                            f"{scenario} {r['rps']:5.0f} req/s p99 {r['p99_ms']:5.1f} ms"
                            f" (cores {cores}, non-2xx {r['non2xx']})"
                        )
                print(f"{label:10s} {name:12s} " + " | ".join(cells), flush=True)
                tokens.unlink()


def profile(workdir: Path, seconds: int, top: int) -> None:
    """py-spy both workers under mint, then redeem load; print the hottest functions."""
    inst = Instance("linksvc-sqlite", workdir, None)
    tokens_file = inst.premint(int(3000 * (seconds + 2)))
    auth = {"BENCH_API_KEY": inst.api_key}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with serve(inst.env, "app:app", workdir, "profile", None) as server:
        wrk(server.url, "mint.lua", 2, **auth)
        for scenario, script, extra in (
            ("mint", "mint.lua", {}),
            ("redeem", "redeem.lua", {"BENCH_TOKENS_FILE": str(tokens_file)}),
        ):
            procs, outs = [], []
            for pid in worker_pids(server.proc.pid):
                out = workdir / f"{scenario}-{pid}.txt"
                outs.append(out)
                procs.append(
                    subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(seconds),
                            "--rate",
                            "250",
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            res = wrk(server.url, script, seconds, **auth, **extra)
            for p in procs:
                p.wait(timeout=60)
            text = report_profile(outs, top)
            header = f"## {scenario}: {res['rps']:.0f} rps under py-spy, p99 {res['p99_ms']:.1f} ms"
            print(header + "\n" + text)
            (RESULTS / f"profile-{scenario}.txt").write_text(header + "\n" + text)


def report_profile(paths: list[Path], top: int) -> str:
    total = 0
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_frame(f) for f in stack.split(";") if f]
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
    lines = [f"{total} samples; inclusive % (own %) of worker time, idle accept() included", ""]
    boilerplate = (
        "gunicorn/arbiter.py",
        "gunicorn/app/",
        "(gunicorn)",
        "workers/base.py",
        "threading.py)",
    )
    shown = [
        (f, n)
        for f, n in sorted(incl.items(), key=lambda kv: -kv[1])
        if not any(b in f for b in boilerplate)
    ]
    for f, n in shown[:top]:
        lines.append(
            f"{100 * n / max(total, 1):6.1f}% ({100 * own.get(f, 0) / max(total, 1):5.1f}%)  {f}"
        )
    lines += ["", "hottest own time:"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"{100 * n / max(total, 1):6.1f}%  {f}")
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    # "func (path/to/module.py:123)" → "func (module path)" without the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


# -- main ------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    main()
