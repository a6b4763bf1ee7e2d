"""A pg_auto_failover formation of our own for the failover tests: a monitor, a primary and a
standby, each a PostgreSQL 15 cluster on a free loopback port in a temporary directory, run
by ``pg_autoctl`` as the ``postgres`` OS user, and removed afterwards.

The machine's shared PostgreSQL (127.0.0.1:5432) is never touched. Every process started
here is in a process group of its own (one per node), so a node can be killed whole — the
way a host dies — and everything is stopped by its own id at the end.

Needs Debian's ``postgresql-15-auto-failover`` (``pg_autoctl`` and the monitor's extension)
and root (to run the clusters as ``postgres``) or the ``postgres`` user itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from .env import free_port, missing

PG_BIN = Path("/usr/lib/postgresql/15/bin")
EXTENSION = Path("/usr/share/postgresql/15/extension/pgautofailover.control")
DBNAME = "linksvc"

#: The monitor's failure detection, tightened from its defaults (5 s checks, 20 s before a
#: node counts as unhealthy, 30 s before a failed primary is assumed demoted) so a failover
#: takes seconds instead of most of a minute. The demote timeout guards against a primary
#: that is only cut off and still running; the tests kill the primary whole, so it can be
#: short here. docs/deploy.md gives the production values.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "2000",
    "pgautofailover.primary_demote_timeout": "5000",
}


def unavailable_reason() -> str | None:
    """Why a formation cannot be run here, or None when it can."""
    if shutil.which("pg_autoctl") is None or not EXTENSION.exists():
        return "pg_autoctl and the pgautofailover extension (apt-get install postgresql-15-auto-failover)"
    if not (PG_BIN / "pg_ctl").exists():
        return f"PostgreSQL 15 server binaries in {PG_BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "an OS user 'postgres' to run the clusters as (tests run as root)"
    return None


def require() -> None:
    """Skip (fail in CI) where pg_auto_failover cannot run."""
    reason = unavailable_reason()
    if reason is not None:
        missing("pg_auto_failover", f"needs {reason}")


class Formation:
    """One monitor and its data nodes; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.monitor_port = free_port()
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._user: dict[str, object] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self.env = {
            "PATH": f"{PG_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PG_CONFIG": str(PG_BIN / "pg_config"),
            "HOME": str(root),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "LANG": "C.UTF-8",
        }

    # -- running pg_autoctl ------------------------------------------------------------

    def _autoctl(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            ["pg_autoctl", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._user,  # type: ignore[arg-type]
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            ["pg_autoctl", *args],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group per node: it can be killed whole
            **self._user,  # type: ignore[arg-type]
        )
        log.close()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pgdata(self, name: str) -> Path:
        return self.root / name

    # -- building the formation ----------------------------------------------------------

    @property
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    def start_monitor(self) -> None:
        for sub in ("config", "data", "run"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
            if self._user:
                os.chown(self.root / sub, int(self._user["user"]), int(self._user["group"]))  # type: ignore[call-overload]
        pgdata = str(self.pgdata("monitor"))
        common = ["--pgdata", pgdata, "--pgctl", str(PG_BIN / "pg_ctl")]
        self._autoctl(
            "create", "monitor", *common, "--pgport", str(self.monitor_port),
            "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl",
        )  # fmt: skip
        # The monitor listens on every address by default; keep it on loopback.
        self._autoctl(
            "config", "set", "--pgdata", pgdata, "postgresql.listen_addresses", "127.0.0.1"
        )
        self._spawn("monitor", "run", "--pgdata", pgdata)
        self._wait(self._try_monitor, 60, "the monitor to accept connections")
        with self.monitor() as conn:
            for name, value in MONITOR_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")

    def add_node(self, name: str, *, replication_quorum: bool = True) -> None:
        """Create and run a data node: the first becomes the primary, the next its standby."""
        port = self.ports[name] = free_port()
        self._spawn(
            name, "create", "postgres", "--pgdata", str(self.pgdata(name)),
            "--pgctl", str(PG_BIN / "pg_ctl"), "--pgport", str(port),
            "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--name", name,
            "--dbname", DBNAME, "--monitor", self.monitor_uri, "--auth", "trust", "--no-ssl",
            "--replication-quorum", "true" if replication_quorum else "false", "--run",
        )  # fmt: skip

    def wait_states(self, wanted: dict[str, str], timeout: float = 180) -> None:
        """Wait until each named node reports (and is assigned) the state given."""

        def reached() -> bool:
            states = self.states()
            ok = all(states.get(n) == (s, s) for n, s in wanted.items())
            if not ok:
                # pg_basebackup waits for a spread checkpoint (minutes on an idle cluster);
                # asking the primary for one makes the standby's copy start at once.
                for n, (reported, _) in states.items():
                    if reported in ("single", "wait_primary", "primary") and n in self.ports:
                        with contextlib.suppress(psycopg.Error):
                            with self.connect(n) as conn:
                                conn.execute("CHECKPOINT")
            return ok

        self._wait(reached, timeout, f"states {wanted} (now {self._safe_states()})")

    def states(self) -> dict[str, tuple[str, str]]:
        """Each node's (reported state, assigned state) as the monitor sees them."""
        with self.monitor() as conn:
            rows = conn.execute(
                "SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node"
            ).fetchall()
        return {n: (r, g) for n, r, g in rows}

    def _safe_states(self) -> object:
        try:
            return self.states()
        except psycopg.Error as exc:
            return f"monitor unreachable: {exc}"

    # -- connections -----------------------------------------------------------------------

    def _try_monitor(self) -> bool:
        try:
            with self.monitor():
                return True
        except psycopg.Error:
            return False

    @contextlib.contextmanager
    def monitor(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(
            host="127.0.0.1", port=self.monitor_port, dbname="pg_auto_failover",
            user="postgres", autocommit=True, connect_timeout=3,
        ) as conn:  # fmt: skip
            yield conn

    @contextlib.contextmanager
    def connect(self, name: str, dbname: str = DBNAME) -> Iterator[psycopg.Connection]:
        with psycopg.connect(
            host="127.0.0.1", port=self.ports[name], dbname=dbname,
            user="postgres", autocommit=True, connect_timeout=3,
        ) as conn:  # fmt: skip
            yield conn

    def url(self, *names: str) -> str:
        """linksvc's multi-host URL: libpq tries each host in turn and keeps the one that
        accepts writes (``target_session_attrs=read-write``), wherever the primary is now."""
        hosts = ",".join("127.0.0.1" for _ in names)
        ports = ",".join(str(self.ports[n]) for n in names)
        return (
            f"postgresql://postgres@/{DBNAME}?host={hosts}&port={ports}"
            "&target_session_attrs=read-write"
        )

    # -- faults --------------------------------------------------------------------------

    def postmaster_pid(self, name: str) -> int:
        return int((self.pgdata(name) / "postmaster.pid").read_text().split()[0])

    def walsender_pids(self, primary: str) -> list[int]:
        with self.connect(primary) as conn:
            return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]

    def kill_node(self, name: str) -> int:
        """SIGKILL the node's postmaster, then the rest of the node (its pg_autoctl keeper
        and the backends): the host is gone. With its keeper alive a killed postmaster is
        only restarted in place, and nothing fails over. Returns the postmaster's pid."""
        pid = self.postmaster_pid(name)
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=10)
        return pid

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every node, monitor last, by its own process group; remove the directory."""
        order = [n for n in self.procs if n != "monitor"] + ["monitor"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # pg_autoctl stops its postgres (fast)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def formation(*, synchronous: bool = True) -> Iterator[Formation]:
    """Monitor, primary ``a`` and standby ``b`` (a synchronous standby unless told not to),
    both running and in sync; stopped and removed afterwards."""
    require()
    root = Path(tempfile.mkdtemp(prefix="linksvc-paf-"))
    f = Formation(root)
    try:
        f.start_monitor()
        f.add_node("a")
        f.wait_states({"a": "single"}, timeout=120)
        f.add_node("b", replication_quorum=synchronous)
        f.wait_states({"a": "primary", "b": "secondary"}, timeout=240)
        yield f
    except BaseException:
        for name in ("monitor", *f.ports):
            tail = f.log(name)[-2000:]
            if tail:
                print(f"--- {name}.log (tail) ---\n{tail}")
        raise
    finally:
        f.close()
