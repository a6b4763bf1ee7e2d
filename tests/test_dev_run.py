"""scripts/dev_run.py, the supervisor of `make run`: Ctrl-C stops every process it started
(their children too), and one process dying stops the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .support import ROOT

DEV_RUN = ROOT / "scripts" / "dev_run.py"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its parent is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _start(tmp_path: Path, *procs: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DEV_RUN), *extra, *procs],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
    )


def _wait_for(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_ctrl_c_stops_every_process_and_their_children(tmp_path):
    # Each process writes its own pid and its child's, then waits.
    script = "sleep 60 & echo $$ $! > {name}.pids; wait"
    sup = _start(
        tmp_path,
        f"one=sh -c '{script.format(name='one')}'",
        f"two=sh -c '{script.format(name='two')}'",
    )
    try:
        pids = [int(p) for n in ("one", "two") for p in _wait_for(tmp_path / f"{n}.pids").split()]
        assert all(_alive(p) for p in pids)
        os.killpg(sup.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, _ = sup.communicate(timeout=20)
        assert sup.returncode == 0, out
        assert "one | stopped" in out and "two | stopped" in out
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), out
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)


def test_one_process_exiting_stops_the_others(tmp_path):
    sup = _start(
        tmp_path, "dies=sh -c 'sleep 0.5; exit 3'", "waits=sh -c 'echo $$ > w.pid; exec sleep 60'"
    )
    try:
        pid = int(_wait_for(tmp_path / "w.pid"))
        out, _ = sup.communicate(timeout=20)
        assert sup.returncode == 1
        assert "dies  | exited with status 3; stopping the others" in out
        assert not _alive(pid)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)


def test_env_file_reaches_the_processes_and_banner_waits_for_ready(tmp_path):
    (tmp_path / "demo.env").write_text("# comment\nLINKSVC_API_KEY=lsk_example\n")
    sup = _start(
        tmp_path,
        "show=sh -c 'echo key=$LINKSVC_API_KEY; exec sleep 60'",
        extra=("--env-file", "demo.env", "--banner", "READY-BANNER"),
    )
    try:
        deadline = time.monotonic() + 10
        seen = []
        assert sup.stdout is not None
        # Read until both lines are there (the banner may come before the child has run).
        while time.monotonic() < deadline and not (
            any("READY-BANNER" in s for s in seen) and any("show | key=" in s for s in seen)
        ):
            seen.append(sup.stdout.readline())
        os.killpg(sup.pid, signal.SIGTERM)
        out = "".join(seen) + sup.communicate(timeout=20)[0]
        assert "show | key=lsk_example" in out and "READY-BANNER" in out
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
