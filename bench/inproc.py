"""In-process CPU per request: hello-world, linksvc, the naive baseline and the lean ceiling.

Each target is a Flask app driven through its test client (no sockets, no gunicorn) on
SQLite in /dev/shm, where an fsync costs nothing: what is measured is the CPU a request
costs in Python, ``time.process_time`` per request, so the other jobs on a shared machine
move the numbers much less than wall-clock rates. Within a cell, blocks of 20 requests
alternate with hello-world's, and the cell's ratio is the median of the blocks' ratios to
their neighbours; rounds are interleaved (every target and scenario runs once per round,
the order rotated), and the median over the rounds is reported.

    .venv/bin/python -m bench.inproc [--n 1000] [--rounds 5] [--profile redeem]

``--sample SCENARIO`` runs py-spy over ``--n`` requests of linksvc's SCENARIO and prints the
call tree of a request (what bench/README.md quotes); ``--profile SCENARIO`` does the same
with pyinstrument, whose per-call overhead inflates the many small Python calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCENARIOS = ("mint", "verify", "redeem", "exchange")
REDIRECT = "http://127.0.0.1:5001/callback"


class Target:
    """A served app and, per scenario, a function making one request (asserting its status)."""

    name = ""
    scenarios: dict[str, Callable[[], None]]

    def prepare(self, scenario: str, n: int) -> None:
        """Untimed set-up before ``n`` requests of ``scenario`` (tokens to redeem, codes)."""


def _expect(resp: Any, status: int) -> None:
    if resp.status_code != status:
        raise RuntimeError(f"expected {status}, got {resp.status_code}: {resp.get_data()[:300]!r}")
    # As a server does when the body is sent: ends the request's span when tracing is on.
    resp.close()


class Hello(Target):
    name = "hello"

    def __init__(self) -> None:
        from bench.hello import app

        http = app.test_client()
        self.scenarios = {"hello": lambda: _expect(http.get("/hello"), 200)}


class Linksvc(Target):
    """linksvc as deployed, on SQLite in tmpfs (rate limits, metrics, logs all on)."""

    name = "linksvc"

    def __init__(self, workdir: Path) -> None:
        import base64
        import logging
        import secrets

        from linksvc import create_app
        from linksvc.clients import registry as clients
        from linksvc.links import keys
        from linksvc.services import services
        from linksvc.store import db, migrate

        instance = workdir / "linksvc"
        instance.mkdir()

        def secret() -> str:
            return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")

        env = {
            "LINKSVC_ENV": "test",
            "LINKSVC_INSTANCE_PATH": str(instance),
            "LINKSVC_DATABASE_URL": f"sqlite:///{instance / 'linksvc.db'}",
            "LINKSVC_KEY_ENCRYPTION_KEY": secret(),
            "LINKSVC_SECRET_KEY": secret(),
            "LINKSVC_LOG_LEVEL": "info",
        }
        self.app = app = create_app(env)
        # The JSON log lines are built as in production, then dropped instead of written to a
        # terminal: building them is the cost that belongs to linksvc.
        for h in logging.getLogger("linksvc").handlers:
            h.stream = open(os.devnull, "w")  # type: ignore[attr-defined]
        svc = services(app).links
        migrate.upgrade(svc.engine)
        now = int(time.time())
        with db.write(svc.engine) as conn:
            keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, now)
            client, api_key = clients.create(
                conn,
                "bench",
                purposes=["magic_link"],
                redirect_uris=[REDIRECT],
                mint_limit="100000000 per minute",
                subject_limit="100000000 per minute",
                now=now,
            )
        self.client = client
        self.http = http = app.test_client()
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.counter = 0
        self.token = self._mint()["token"]
        self.pending: list[str] = []
        self.codes: list[str] = []
        self.scenarios = {
            "mint": lambda: self._mint() and None,
            "verify": lambda: _expect(
                http.post(
                    "/api/v1/links/verify",
                    json={"token": self.token, "purpose": "magic_link"},
                    headers=self.headers,
                ),
                200,
            ),
            "redeem": lambda: _expect(
                http.post(
                    "/api/v1/links/redeem",
                    json={"token": self.pending.pop(), "purpose": "magic_link"},
                    headers=self.headers,
                ),
                200,
            ),
            "exchange": lambda: _expect(
                http.post(
                    "/api/v1/codes/exchange", json={"code": self.codes.pop()}, headers=self.headers
                ),
                200,
            ),
        }

    def _mint(self) -> dict[str, Any]:
        self.counter += 1
        resp = self.http.post(
            "/api/v1/links",
            json={"purpose": "magic_link", "subject": f"user-{self.counter}"},
            headers=self.headers,
        )
        _expect(resp, 201)
        return resp.get_json()  # type: ignore[no-any-return]

    def prepare(self, scenario: str, n: int) -> None:
        if scenario == "verify":  # a fresh token: a long run outlives a link's lifetime
            self.token = self._mint()["token"]
        elif scenario == "redeem":
            self.pending = [self._mint()["token"] for _ in range(n)]
        elif scenario == "exchange":
            from linksvc.links import codes, ledger
            from linksvc.services import services

            svc = services(self.app).links
            now = svc.now()
            self.codes = []
            for _ in range(n):
                minted = self._mint()
                recorded = ledger.get(svc.engine, minted["jti"])
                assert recorded is not None
                rec = ledger.consume(
                    svc.engine,
                    jti=minted["jti"],
                    exp=recorded.exp,
                    client_id=self.client.id,
                    purpose="magic_link",
                    subject=minted["subject"],
                    now=now,
                    via="page",
                )
                code = codes.derive(svc.settings.secret_key, rec.jti, minted["jti"])
                codes.store(
                    svc.engine, code, jti=rec.jti, client_id=rec.client_id, now=now, ttl=600
                )
                self.codes.append(code)


def es256_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Baseline(Target):
    """``bench/naive.py`` or ``bench/lean.py`` (mint, verify and redeem; no codes)."""

    def __init__(self, name: str, workdir: Path) -> None:
        import importlib

        self.name = name
        self.module = importlib.import_module(f"bench.{name}")
        self.url = f"sqlite:///{workdir / (name + '.db')}"
        self.pem = es256_pem()
        api_key = "bench-" + name
        http = self.module.create_app(self.url, self.pem, api_key).test_client()
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.counter = 0
        self.pending: list[str] = []

        def mint() -> str:
            self.counter += 1
            resp = http.post(
                "/api/v1/links",
                json={"purpose": "magic_link", "subject": f"user-{self.counter}"},
                headers=self.headers,
            )
            _expect(resp, 201)
            return resp.get_json()["token"]  # type: ignore[no-any-return]

        self.mint = mint
        self.token = mint()
        self.scenarios = {
            "mint": lambda: mint() and None,
            "verify": lambda: _expect(
                http.post(
                    "/api/v1/links/verify",
                    json={"token": self.token, "purpose": "magic_link"},
                    headers=self.headers,
                ),
                200,
            ),
            "redeem": lambda: _expect(
                http.post(
                    "/api/v1/links/redeem",
                    json={"token": self.pending.pop(), "purpose": "magic_link"},
                    headers=self.headers,
                ),
                200,
            ),
        }

    def prepare(self, scenario: str, n: int) -> None:
        if scenario == "verify":  # a fresh token: a long run outlives a link's lifetime
            self.token = self.mint()
        elif scenario == "redeem":
            self.pending = self.module.premint(self.url, self.pem, n)


class LinksvcWebhooks(Linksvc):
    """linksvc for a client with a webhook endpoint: each mint and redemption also writes its
    outbox row (``link.minted``, ``link.consumed``) in the same transaction. No relay runs."""

    name = "linksvc-webhooks"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        from linksvc.services import services
        from linksvc.store import db
        from linksvc.webhooks import endpoints as webhooks
        from linksvc.webhooks import ssrf

        svc = services(self.app).links
        with db.write(svc.engine) as conn:
            webhooks.add(
                conn,
                self.app.config["LINKSVC"].key_encryption_key,
                self.client.id,
                "http://127.0.0.1:9/hook",
                events=None,
                rules=ssrf.Policy(allow_loopback=True),
                now=int(time.time()),
            )
        svc.sinks.clear()
        self.scenarios = {k: v for k, v in self.scenarios.items() if k in ("mint", "redeem")}


def make_targets(workdir: Path, names: list[str]) -> list[Target]:
    targets: list[Target] = [Hello()]
    if "linksvc" in names:
        targets.append(Linksvc(workdir))
    if "linksvc-webhooks" in names:
        (workdir / "webhooks").mkdir()
        targets.append(LinksvcWebhooks(workdir / "webhooks"))
    for name in ("naive", "lean"):
        if name in names:
            targets.append(Baseline(name, workdir))
    return targets


def cpu_us(target: Target, scenario: str, n: int) -> float:
    """Mean CPU time of one request over ``n``, in microseconds."""
    fn = target.scenarios[scenario]
    target.prepare(scenario, n + 5)
    for _ in range(5):  # warm caches touched by prepare()
        fn()
    return _block(fn, n)


def _block(fn: Callable[[], None], n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


#: Requests of a cell per block; each block sits between two half-blocks of hello-world.
BLOCK = 20


def cell(hello: Target, target: Target, scenario: str, n: int) -> tuple[float, float, float]:
    """``n`` requests of ``scenario`` in blocks of :data:`BLOCK`, each between two half
    blocks of hello-world: (median CPU µs of the cell, of hello-world, median block ratio).

    The speed of this VM's cores wanders by ±20 % within seconds (other guests): a ratio
    taken between neighbours a few milliseconds apart cancels that, where two 1,000-request
    runs a second apart did not."""
    fn, hf = target.scenarios[scenario], hello.scenarios["hello"]
    target.prepare(scenario, n + 5)
    for _ in range(5):  # warm caches touched by prepare()
        fn()
        hf()
    costs, bases, ratios = [], [], []
    for _ in range(max(1, n // BLOCK)):
        before = _block(hf, BLOCK // 2)
        us = _block(fn, BLOCK)
        base = (before + _block(hf, BLOCK // 2)) / 2
        costs.append(us)
        bases.append(base)
        ratios.append(us / base)
    return statistics.median(costs), statistics.median(bases), statistics.median(ratios)


def run(n: int, rounds: int, names: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(
        prefix="linksvc-inproc-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
    ) as tmp:
        targets = make_targets(Path(tmp), names)
        hello = targets[0]
        cells = [(t, s) for t in targets[1:] for s in t.scenarios]
        raw: dict[str, list[float]] = {"hello/hello": []}
        ratios: dict[str, list[float]] = {}
        for r in range(rounds):
            order = cells[r % len(cells) :] + cells[: r % len(cells)]
            this = {}
            for t, s in order:
                us, base, ratio = cell(hello, t, s, n)
                raw["hello/hello"].append(base)
                raw.setdefault(f"{t.name}/{s}", []).append(us)
                ratios.setdefault(f"{t.name}/{s}", []).append(ratio)
                this[f"{t.name}/{s}"] = f"{us:.0f} ({ratio:.2f}x)"
            log(f"  in-process round {r + 1}: " + json.dumps(this))
        ratios["hello/hello"] = [1.0]
    return {
        "n": n,
        "rounds": rounds,
        "block": BLOCK,
        "cpu_us": {k: round(statistics.median(v), 1) for k, v in raw.items()},
        "ratio": {k: round(statistics.median(v), 2) for k, v in ratios.items()},
    }


def profile(scenario: str, n: int) -> str:
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="linksvc-prof-", dir="/dev/shm") as tmp:
        target = Linksvc(Path(tmp))
        fn = target.scenarios[scenario]
        target.prepare(scenario, n + 5)
        for _ in range(5):
            fn()
        prof = Profiler(interval=0.0001)
        prof.start()
        for _ in range(n):
            fn()
        prof.stop()
        return str(prof.output_text(unicode=False, color=False, show_all=False))


def loop(scenario: str, n: int) -> None:
    """``n`` requests of linksvc's ``scenario`` (or hello-world's), for a sampler outside."""
    with tempfile.TemporaryDirectory(prefix="linksvc-loop-", dir="/dev/shm") as tmp:
        target: Target = Hello() if scenario == "hello" else Linksvc(Path(tmp))
        fn = target.scenarios[scenario]
        target.prepare(scenario, n + 5)

        def timed() -> None:
            for _ in range(n):
                fn()

        timed()


def sample(scenario: str, n: int) -> str:
    """py-spy over :func:`loop` in a child process: the call tree of one request."""
    import subprocess

    from bench.stacks import tree

    with tempfile.TemporaryDirectory(prefix="linksvc-spy-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        spy = Path(sys.executable).with_name("py-spy")
        child = [sys.executable, "-m", "bench.inproc", "--loop", scenario, "--n", str(n)]
        subprocess.run(
            [str(spy), "record", "-r", "400", "-f", "raw", "-o", str(raw), "--", *child],
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parent.parent,  # the repository's root: bench.inproc
        )
        # The timed requests only: the set-up (tokens minted for a redemption) is left out.
        return tree([raw], "Flask.wsgi_app", depth=7, floor=1.0, within="loop.<locals>.timed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--targets", default="linksvc,naive,lean")
    ap.add_argument("--profile", choices=SCENARIOS, help="pyinstrument over N requests")
    ap.add_argument("--sample", choices=(*SCENARIOS, "hello"), help="py-spy over N requests")
    ap.add_argument("--loop", choices=(*SCENARIOS, "hello"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile:
        print(profile(args.profile, args.n))
        return
    if args.sample:
        print(sample(args.sample, args.n))
        return
    if args.loop:
        loop(args.loop, args.n)
        return
    res = run(args.n, args.rounds, args.targets.split(","), lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
