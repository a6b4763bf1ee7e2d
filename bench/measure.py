"""What the bench measures and how: the machine, wrk against a server, the CPU of a call
in-process, the signature floor, a worker's RSS, and the statistics of the rounds (medians
of each cell, ratios within each round)."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONNECTIONS = 8
THREADS = 2
SCENARIOS = ("mint", "verify", "redeem")


#: The wrk scripts, one per scenario.
LUA = Path(__file__).resolve().parent / "lua"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def wrk(url: str, script: str, seconds: float, **env: str) -> dict[str, Any]:
    full = {**os.environ, "BENCH_LUA_DIR": str(LUA), "BENCH_THREADS": str(THREADS), **env}
    seconds = max(1, round(seconds))  # wrk takes whole seconds only
    cmd = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA / script),
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

    from linksvc.links import tokens
    from linksvc.links.tokens import SigningKey, VerificationKey

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
