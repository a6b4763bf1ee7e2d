"""Side-by-side benchmark: linksvc against a Flask hello-world and against the physical floor.

`make bench` runs this. In one run it:

1. times the floor in-process: PyJWT sign and verify per algorithm (and linksvc's own strict
   verify), and one committed ledger write (the mint's INSERT, the redemption's UPDATE) on
   SQLite and on PostgreSQL;
2. serves, one after the other and interleaved over several rounds, (a) ``bench/hello.py`` and
   (b) linksvc on SQLite and on PostgreSQL, each under gunicorn with ``gunicorn.conf.py`` and
   the same 2 workers, and drives each with wrk (8 connections, loopback): hello, then mint,
   verify and redeem (every redemption a first use of a token minted beforehand);
3. soaks linksvc with mints for 60 s, sampling each worker's RSS;
4. prints medians and the ratios linksvc/hello-world, writes ``bench/results/latest.json`` and
   draws ``bench/results/latest.png``.

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

WORKERS = 2
CONNECTIONS = 8
THREADS = 2
SCENARIOS = ("mint", "verify", "redeem")
TARGETS = {"sqlite": 0.60, "postgresql": 0.50}
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


def ledger_floor(database_url: str, n: int) -> dict[str, float]:
    """One committed ledger write: the mint's INSERT (link + event) and the redemption's
    conditional UPDATE (… RETURNING, + event), each its own transaction, one at a time."""
    from linksvc import db, ledger, migrate, tokens

    engine = db.make_engine(database_url)
    migrate.upgrade(engine)
    now = int(time.time())
    jtis: list[str] = []

    def insert() -> None:
        rec = ledger.LinkRecord(
            jti=tokens.new_jti(),
            client_id="cl_floor",
            purpose="magic_link",
            subject="user-42",
            kid="k1",
            iat=now,
            exp=now + 300,
        )
        with db.write(engine) as conn:
            ledger.record_mint(conn, rec, supersede=False, now=now)
        jtis.append(rec.jti)

    def update() -> None:
        ledger.consume(
            engine,
            jti=jtis.pop(),
            client_id="cl_floor",
            purpose="magic_link",
            subject="user-42",
            now=now,
            via="api",
        )

    out = {"insert_tx_us": per_op_us(insert, n, repeats=3)}
    out["update_tx_us"] = per_op_us(update, n, repeats=3)
    out["insert_plus_update_us"] = round(out["insert_tx_us"] + out["update_tx_us"], 1)
    engine.dispose()
    return out


# -- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_bench_database() -> Iterator[str]:
    ok, why = pg_available()
    if not ok:
        raise SystemExit(f"PostgreSQL at {PG_ADMIN_URL} is not available: {why}")
    with fresh_pg_database("linksvc_bench") as url:
        yield url


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
            "1000000 per minute",
            "--subject-limit",
            "1000000 per minute",
            "--json",
        )
        created = json.loads(out.stdout)
        self.api_key, self.client_id = created["api_key"], created["client_id"]
        self.workdir = workdir

    def premint(self, n: int) -> Path:
        """Sign ``n`` tokens and record them in the ledger in one transaction, as a mint would."""
        from linksvc import create_app, db, ledger, tokens

        app = create_app(self.env)
        svc = app.extensions["linksvc"]
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
def serve(env: dict[str, str], wsgi: str, logdir: Path, name: str) -> Iterator[Any]:
    server = start_gunicorn(env, workers=WORKERS, log_path=logdir / f"{name}.log", wsgi=wsgi)
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


def run_hello(workdir: Path, seconds: float, warmup: float) -> dict[str, Any]:
    env = {"PYTHONPATH": str(ROOT)}
    with serve(env, "bench.hello:app", workdir, "hello") as server:
        wrk(server.url, "hello.lua", warmup)
        res = wrk(server.url, "hello.lua", seconds)
        res["rss_mb"] = [rss_mb(p) for p in worker_pids(server.proc.pid)]
    return {"hello": res}


def run_linksvc(
    inst: Instance, workdir: Path, seconds: float, warmup: float, expected_rps: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Enough first-use tokens for the fastest plausible redeem run, and then some.
    tokens_file = inst.premint(int(max(expected_rps, 800) * 2.5 * (seconds + warmup)))
    auth = {"BENCH_API_KEY": inst.api_key}
    with serve(
        {**inst.env, "PYTHONPATH": str(ROOT)}, inst.wsgi, workdir, f"linksvc-{inst.label}"
    ) as server:
        wrk(server.url, "mint.lua", warmup, **auth)
        out["mint"] = wrk(server.url, "mint.lua", seconds, **auth)
        import requests

        token = requests.post(
            server.url + "/api/v1/links",
            json={"purpose": "magic_link", "subject": "verify-me"},
            headers={"Authorization": f"Bearer {inst.api_key}"},
            timeout=10,
        ).json()["token"]
        out["verify"] = wrk(server.url, "verify.lua", seconds, BENCH_TOKEN=token, **auth)
        out["redeem"] = wrk(
            server.url, "redeem.lua", seconds, BENCH_TOKENS_FILE=str(tokens_file), **auth
        )
        rss = [rss_mb(p) for p in worker_pids(server.proc.pid)]
        for scenario in SCENARIOS:
            out[scenario]["rss_mb"] = rss
    tokens_file.unlink()
    return out


def soak(inst: Instance, workdir: Path, seconds: int, step: int = 10) -> dict[str, Any]:
    """Mint for ``seconds``, sampling every worker's RSS after each ``step``."""
    auth = {"BENCH_API_KEY": inst.api_key}
    samples: list[dict[str, Any]] = []
    with serve(inst.env, "app:app", workdir, f"soak-{inst.label}") as server:
        pids = worker_pids(server.proc.pid)
        wrk(server.url, "mint.lua", 2, **auth)
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
        p: round(samples[-1]["rss_mb"][p] - samples[1]["rss_mb"][p], 1)
        for p in samples[0]["rss_mb"]
    }
    return {
        "seconds": seconds,
        "database": inst.label,
        "samples": samples,
        "same_workers": same_workers,
        "growth_mb_after_first_step": growth,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    summary: dict[str, Any] = {}
    keys = {(k, s) for r in rounds for k, v in r.items() if k != "round" for s in v}
    for target, scenario in sorted(keys):
        runs = [r[target][scenario] for r in rounds if target in r]
        summary[f"{target}/{scenario}"] = {
            "rps": med([x["rps"] for x in runs]),
            "p50_ms": med([x["p50_ms"] for x in runs]),
            "p99_ms": med([x["p99_ms"] for x in runs]),
            "non2xx": sum(x["non2xx"] for x in runs),
            "socket_errors": sum(
                x["connect_errors"] + x["read_errors"] + x["timeouts"] for x in runs
            ),
            "rss_mb_per_worker": max(max(x["rss_mb"]) for x in runs),
            "wrk_cpu_cores": med([x["wrk_cpu_cores"] for x in runs]),
            "runs_rps": [round(x["rps"]) for x in runs],
        }
    # Ratios within each round (same conditions), then the median of those.
    ratios: dict[str, float] = {}
    labels = sorted({k for r in rounds for k in r if k not in ("round", "hello")})
    for db_label in labels:
        for scenario in SCENARIOS:
            per_round = [
                r[db_label][scenario]["rps"] / r["hello"]["hello"]["rps"]
                for r in rounds
                if db_label in r and "hello" in r
            ]
            if per_round:
                ratios[f"{db_label}/{scenario}"] = round(statistics.median(per_round), 3)
    # What the metrics cost: the same instance shape with and without linksvc.metrics.
    overhead: dict[str, float] = {}
    for scenario in SCENARIOS:
        per_round = [
            1 - r["sqlite-tmpfs"][scenario]["rps"] / r["sqlite-tmpfs-nometrics"][scenario]["rps"]
            for r in rounds
            if "sqlite-tmpfs" in r and "sqlite-tmpfs-nometrics" in r
        ]
        if per_round:
            overhead[scenario] = round(statistics.median(per_round), 3)
    return {"medians": summary, "ratios": ratios, "metrics_cost": overhead}


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for db_label, goal in TARGETS.items():
        for scenario in ("mint", "redeem"):
            ratio = result["ratios"].get(f"{db_label}/{scenario}")
            if ratio is not None:
                checks.append(
                    {
                        "what": f"{scenario} rps / hello rps on {db_label}",
                        "value": ratio,
                        "goal": f">= {goal}",
                        "met": ratio >= goal,
                    }
                )
            m = result["medians"].get(f"{db_label}/{scenario}")
            if m is not None:
                checks.append(
                    {
                        "what": f"{scenario} p99 on {db_label} (ms)",
                        "value": m["p99_ms"],
                        "goal": f"<= {P99_TARGET_MS}",
                        "met": m["p99_ms"] <= P99_TARGET_MS,
                    }
                )
    for scenario, cost in result.get("metrics_cost", {}).items():
        checks.append(
            {
                "what": f"metrics cost on {scenario} (share of rps)",
                "value": cost,
                "goal": "<= 0.05",
                "met": cost <= 0.05,
            }
        )
    if "soak" in result:
        growth = max(result["soak"]["growth_mb_after_first_step"].values())
        checks.append(
            {
                "what": f"RSS growth per worker over the {result['soak']['seconds']} s soak (MB)",
                "value": growth,
                "goal": "<= 5 (flat)",
                "met": growth <= 5,
            }
        )
    return checks


def print_table(result: dict[str, Any]) -> None:
    print()
    print(
        f"linksvc bench — {result['date']} — {result['machine']['nproc']} CPUs, {result['machine']['cpu']}, "
        f"{result['machine']['ram_gib']} GiB; {WORKERS} gunicorn workers, wrk {CONNECTIONS} connections, "
        f"{result['config']['rounds']} rounds × {result['config']['seconds']} s"
    )
    print()
    hello = result["medians"].get("hello/hello")
    print(
        f"{'target':<22}{'rps':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'RSS MB':>8}  runs"
    )
    for name, m in result["medians"].items():
        ratio = result["ratios"].get(name, 1.0 if name == "hello/hello" else None)
        print(
            f"{name:<22}{m['rps']:>9.0f}{(f'{ratio:.0%}' if ratio is not None else '-'):>8}{m['p50_ms']:>9.2f}"
            f"{m['p99_ms']:>9.2f}{m['non2xx']:>9}{m['rss_mb_per_worker']:>8.1f}  {m['runs_rps']}"
        )
    if result.get("metrics_cost"):
        print(
            "metrics cost (1 - rps with / rps without linksvc.metrics, SQLite on tmpfs): "
            + ", ".join(f"{k} {v:+.1%}" for k, v in result["metrics_cost"].items())
        )
    if hello:
        print()
    print("floor (in-process, one core, µs per operation):")
    for alg, row in result["floor"]["crypto"].items():
        print(f"  {alg:<6} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    for db_label, row in result["floor"]["ledger"].items():
        print(f"  ledger {db_label:<10} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    if "soak" in result:
        s = result["soak"]
        print(f"soak: {s['seconds']} s of mints on {s['database']}; RSS per worker (MB) over time:")
        for sample in s["samples"]:
            print(
                f"  t={sample['t']:>5}s  "
                + "  ".join(f"{v:.1f}" for v in sample["rss_mb"].values())
                + (f"  ({sample['rps']:.0f} rps)" if sample["rps"] else "")
            )
    print()
    for c in result["targets"]:
        print(
            f"  [{'met' if c['met'] else 'NOT MET'}] {c['what']}: {c['value']} (goal {c['goal']})"
        )
    print()


def markdown(result: dict[str, Any]) -> str:
    """The table for the READMEs."""
    m = result["machine"]
    c = result["config"]
    out = [
        f"Run {result['date']} on {m['nproc']} × {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['wrk']}; {c['workers']} gunicorn sync workers, wrk {c['connections']} "
        f"connections, {c['rounds']} interleaved rounds × {c['seconds']} s per scenario (medians of the rounds; "
        f"ratio = median of the per-round ratios to hello-world). Load average at start: "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}.",
        "",
        "| target / scenario | req/s | % of hello | p50 ms | p99 ms | non-2xx | RSS/worker MB | wrk CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in result["medians"].items():
        ratio = result["ratios"].get(name, 1.0 if name == "hello/hello" else None)
        out.append(
            f"| {name} | {v['rps']:.0f} | {f'{ratio:.0%}' if ratio is not None else '-'} | {v['p50_ms']:.1f} "
            f"| {v['p99_ms']:.1f} | {v['non2xx']} | {v['rss_mb_per_worker']:.0f} | {v['wrk_cpu_cores']:.2f} |"
        )
    out += [
        "",
        "Floor, in-process, µs per operation (one thread, best of 5):",
        "",
        "| | PyJWT sign | PyJWT verify | linksvc sign | linksvc strict verify |",
        "|---|---:|---:|---:|---:|",
    ]
    for alg, row in result["floor"]["crypto"].items():
        out.append(
            f"| {alg} | {row['pyjwt_sign_us']} | {row['pyjwt_verify_us']} | {row['linksvc_sign_us']} "
            f"| {row['linksvc_verify_us']} |"
        )
    out += [
        "",
        "| ledger, one committed transaction | mint INSERT (link + event) | redeem UPDATE … RETURNING (+ event) |",
        "|---|---:|---:|",
    ]
    for db_label, row in result["floor"]["ledger"].items():
        out.append(f"| {db_label} | {row['insert_tx_us']} µs | {row['update_tx_us']} µs |")
    if result.get("metrics_cost"):
        out += [
            "",
            "Cost of linksvc.metrics (SQLite on tmpfs, with vs without the module): "
            + ", ".join(f"{k} {v:+.1%}" for k, v in result["metrics_cost"].items())
            + " of requests per second (negative: faster with metrics, i.e. noise).",
        ]
    if "soak" in result:
        s = result["soak"]
        out += [
            "",
            f"Memory: {s['seconds']} s of sustained minting on {s['database']}, RSS per worker (MB): "
            + "; ".join(
                f"t={x['t']:.0f} s: " + ", ".join(f"{v:.1f}" for v in x["rss_mb"].values())
                for x in s["samples"]
            ),
        ]
    out += ["", "| target | value | goal | |", "|---|---:|---|---|"]
    for t in result["targets"]:
        out.append(
            f"| {t['what']} | {t['value']} | {t['goal']} | {'met' if t['met'] else '**not met**'} |"
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
        if n.startswith("sqlite-tmpfs-nometrics"):
            return "#c6dbef"
        if n.startswith("sqlite-tmpfs"):
            return "#9ecae1"
        return "#3a7bd5" if n.startswith("sqlite") else "#e07a1f"

    colors = [color(n) for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
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
            )
    for label, goal in TARGETS.items():
        hello = result["medians"].get("hello/hello", {}).get("rps")
        if hello:
            ax.axhline(
                hello * goal,
                ls="--",
                lw=0.8,
                color="#3a7bd5" if label == "sqlite" else "#e07a1f",
                label=f"target on {label}: {goal:.0%} of hello",
            )
    ax.legend(fontsize=8)
    ax.set_title("requests/s (median of rounds; % of hello-world)")
    ax.tick_params(axis="x", rotation=45)
    ax = axes[1]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#9ecae1")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#08519c")
    ax.axhline(P99_TARGET_MS, ls="--", color="red", lw=0.8, label="p99 target")
    ax.set_xticks(list(x), names, rotation=45)
    ax.set_title("latency (ms)")
    ax.legend()
    ax = axes[2]
    if "soak" in result:
        samples = result["soak"]["samples"]
        for pid in samples[0]["rss_mb"]:
            ax.plot(
                [s["t"] for s in samples],
                [s["rss_mb"][pid] for s in samples],
                marker="o",
                label=f"worker {pid}",
            )
        ax.set_ylim(0, max(max(s["rss_mb"].values()) for s in samples) * 1.3)
        ax.set_xlabel("seconds of sustained minting")
        ax.legend()
    ax.set_title("RSS per worker (MB)")
    m = result["machine"]
    fig.suptitle(
        f"linksvc vs Flask hello-world — {result['date']} — {m['nproc']} CPUs {m['cpu']}, "
        f"{WORKERS} workers, {CONNECTIONS} connections"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- profiling -------------------------------------------------------------------------------


def profile(workdir: Path, seconds: int, top: int) -> None:
    """py-spy both workers under mint, then redeem load; print the hottest functions."""
    inst = Instance("sqlite", workdir, None)
    tokens_file = inst.premint(int(3000 * (seconds + 2)))
    auth = {"BENCH_API_KEY": inst.api_key}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with serve(inst.env, "app:app", workdir, "profile") as server:
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
    ap.add_argument("--no-postgresql", action="store_true")
    ap.add_argument("--durable-only", action="store_true", help="skip the SQLite-on-tmpfs runs")
    ap.add_argument("--floor-n", type=int, default=300)
    ap.add_argument(
        "--quick", action="store_true", help="1 round × 3 s, 20 s soak: to check the bench itself"
    )
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the workers instead of benchmarking"
    )
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.soak, args.floor_n = 1, 3, 1, 20, 50
    ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="linksvc-bench-"))
    try:
        if args.profile:
            profile(workdir, int(args.seconds), 30)
            return
        result = bench(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    draw(result, args.output.with_suffix(".png"))
    args.output.with_suffix(".md").write_text(markdown(result))
    print_table(result)
    log(f"wrote {args.output} and {args.output.with_suffix('.png')}")


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": {
            "workers": WORKERS,
            "connections": CONNECTIONS,
            "wrk_threads": THREADS,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
        },
    }
    log("floor: signatures")
    floor: dict[str, Any] = {"crypto": crypto_floor(args.floor_n), "ledger": {}}
    with contextlib.ExitStack() as stack:
        log("floor: ledger writes")
        floor["ledger"]["sqlite"] = ledger_floor(f"sqlite:///{workdir / 'floor.db'}", args.floor_n)
        instances = [Instance("sqlite", workdir, None)]
        if not args.no_postgresql:
            floor["ledger"]["postgresql"] = ledger_floor(
                stack.enter_context(pg_bench_database()), args.floor_n
            )
            instances.append(
                Instance("postgresql", workdir, stack.enter_context(pg_bench_database()))
            )
        if not args.durable_only:
            # SQLite on tmpfs, where fsync costs nothing: NOT durable, not a deployment. It shows
            # linksvc's own cost above the disk, and (with and without linksvc.metrics) what
            # the metrics cost.
            shm = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="linksvc-bench-", dir=_tmpfs())
                )
            )
            instances.append(Instance("sqlite-tmpfs", shm, None))
            instances.append(
                Instance("sqlite-tmpfs-nometrics", shm, None, wsgi="bench.nometrics:app")
            )
        result["floor"] = floor
        rounds: list[dict[str, Any]] = []
        expected = 1000.0
        for r in range(args.rounds):
            order: list[Any] = ["hello", *instances]
            order = order[r % len(order) :] + order[: r % len(order)]  # interleave: each leads once
            this: dict[str, Any] = {"round": r + 1}
            for target in order:
                if target == "hello":
                    log(f"round {r + 1}: hello-world")
                    this["hello"] = run_hello(workdir, args.seconds, args.warmup)
                else:
                    log(f"round {r + 1}: linksvc on {target.label}")
                    this[target.label] = run_linksvc(
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
                            if k != "round"
                        }
                    )
                )
            rounds.append(this)
        result["rounds"] = rounds
        result.update(summarise(rounds))
        if args.soak:
            log(f"soak: {args.soak} s of mints on sqlite")
            result["soak"] = soak(instances[0], workdir, args.soak)
    result["targets"] = check_targets(result)
    return result


if __name__ == "__main__":
    main()
