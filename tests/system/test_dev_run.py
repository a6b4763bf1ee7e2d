"""scripts/dev_run.py, the supervisor of `make run`: Ctrl-C stops every process it started
(their children too), and one process dying stops the others; a port another program holds
stops it before anything starts, and only the expected answer counts as ready."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.env import ROOT, free_port

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


# -- a port held by another program (issue 24 item 10) -------------------------------------


@contextlib.contextmanager
def other_server(status: int = 200, body: bytes = b"hello from another program") -> Iterator[int]:
    """Another program's HTTP server on a free port, answering every GET the same way."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEV_RUN), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=timeout,
        start_new_session=True,
    )


def test_a_taken_port_stops_it_before_anything_starts(tmp_path):
    """What `make run` does when port 8000 is taken: one line naming the port and how to
    choose another, no banner, nothing started, a non-zero status."""
    with other_server(body=b'{"status":"ok"}') as port:
        out = _run(
            tmp_path,
            *("--port", str(port), "make run PORT={free}"),
            *("--ready", f"http://127.0.0.1:{port}/healthz", "--expect", '"service":"linksvc"'),
            *("--banner", "Ready. Open it"),
            "srv=sh -c 'touch started; exec sleep 60'",
        )
    assert out.returncode == 1, out
    assert "Ready" not in out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"dev_run: port {port} is already in use by another program; ")
    suggested = lines[0].rsplit("make run PORT=", 1)[1]
    assert suggested.isdigit() and int(suggested) != port
    assert not (tmp_path / "started").exists()


def test_any_answer_is_not_ready(tmp_path):
    """Another program answering the readiness URL — 200 with another body, or an error —
    never makes the banner appear; the runner gives up and says which URL answered what."""
    for status, body in ((200, b'{"status":"ok"}'), (404, b"not found")):
        with other_server(status, body) as port:
            out = _run(
                tmp_path,
                *("--ready", f"http://127.0.0.1:{port}/healthz", "--expect", '"service":"x"'),
                *("--ready-timeout", "2", "--grace", "2", "--banner", "Ready. Open it"),
                "srv=sleep 60",
            )
        assert out.returncode == 1, out
        assert "Ready" not in out.stdout
        assert f"http://127.0.0.1:{port}/healthz answers, but not with a 2xx answer" in out.stdout
        assert "not every process came up; stopping" in out.stdout


def test_a_program_that_does_not_speak_http_is_not_ready(tmp_path):
    """A port held by something else (a database, say): no banner and no traceback."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"-ERR unknown command\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        out = _run(
            tmp_path,
            *("--ready", f"http://127.0.0.1:{port}/healthz", "--ready-timeout", "2"),
            *("--grace", "2", "--banner", "Ready. Open it"),
            "srv=sleep 60",
        )
    finally:
        listener.close()
    assert out.returncode == 1, out
    assert "Ready" not in out.stdout and "Traceback" not in out.stdout + out.stderr, out
    assert f"http://127.0.0.1:{port}/healthz answers, but not with a 2xx answer" in out.stdout


def test_the_expected_answer_is_ready(tmp_path):
    """Our own server, started by the runner, answering what --expect names: the banner."""
    port = free_port()
    (tmp_path / "serve.py").write_text(
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.end_headers()\n"
        '        self.wfile.write(b\'{"status":"ok","service":"linksvc"}\')\n'
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    sup = _start(
        tmp_path,
        f"srv={sys.executable} serve.py",
        extra=(
            *("--port", str(port), "make run PORT={free}"),
            *("--ready", f"http://127.0.0.1:{port}/healthz", "--expect", '"service":"linksvc"'),
            *("--banner", "READY-BANNER"),
        ),
    )
    try:
        deadline = time.monotonic() + 30
        seen = []
        assert sup.stdout is not None
        while time.monotonic() < deadline and not any("READY-BANNER" in s for s in seen):
            line = sup.stdout.readline()
            if not line:
                break
            seen.append(line)
        os.killpg(sup.pid, signal.SIGTERM)
        out = "".join(seen) + sup.communicate(timeout=20)[0]
        assert "READY-BANNER" in out, out
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
