"""A throwaway PostgreSQL cluster of a test's own, on a free port, that the test may stop and
start (the machine's shared server is never touched). Made with ``initdb``/``pg_ctl`` as
the ``postgres`` user; where that cannot be done the test skips (fails in CI)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .env import free_port, missing


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    def __init__(self, bindir: Path, root: Path, port: int, as_postgres: bool) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.data = root / "data"
        self.as_postgres = as_postgres
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None:
        missing("initdb (PostgreSQL server binaries)", "not installed")
    assert bindir is not None
    as_postgres = os.geteuid() == 0
    if as_postgres:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            missing("a postgres system user", "initdb refuses to run as root")
    root = Path(tempfile.mkdtemp(prefix="linksvc-pgc-"))
    if as_postgres:
        os.chown(root, pg.pw_uid, pg.pw_gid)
    cluster = Cluster(bindir, root, free_port(), as_postgres)
    try:
        done = cluster._run(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "--no-sync",
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            missing("a throwaway PostgreSQL cluster", done.stderr.strip()[-300:])
        cluster.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
