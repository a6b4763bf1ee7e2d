"""Looking inside linksvc under load: the serving models side by side (``--models``) and
py-spy samples of the workers (``--profile``), summed into the hottest functions."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import RESULTS, ROOT, Instance, pg_bench_database, serve, verify_token
from bench.measure import worker_pids, wrk

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
