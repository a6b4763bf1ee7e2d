#!/usr/bin/env python3
"""A small process supervisor for `make run`: start every process of the development journey,
prefix their output with their names, and stop them all together.

    scripts/dev_run.py [--env-file FILE] [--port PORT HINT]... [--ready URL [--expect TEXT]]...
                       [--banner TEXT] NAME=COMMAND ...

Each ``NAME=COMMAND`` is one process (split like a shell would, no shell involved); the
Makefile's ``run`` target lists them one per line, so adding a process (a relay, a worker) is
one line there. ``--env-file`` adds ``KEY=VALUE`` lines to every process's environment (the
demo client's key, written by ``flask --app app demo``).

``--port PORT HINT`` names a port on 127.0.0.1 that one of the processes will listen on. If
another program already answers there, nothing is started: one line names the port and says
how to choose another (HINT, where ``{free}`` becomes a port that is free now), and the exit
status is 1. Otherwise a server already on the port would answer the readiness checks while
ours fails to bind, and the banner would announce a journey that is not there.

Once every ``--ready`` URL answers ``2xx`` — with TEXT in its body, when ``--expect TEXT``
follows the URL, which tells our server's answer from another program's — the ``--banner`` is
printed.

Ctrl-C (SIGINT) or SIGTERM stops everything: each process runs in its own process group, gets
SIGTERM, and SIGKILL if it is still there after ``--grace`` seconds. If one process exits on
its own, the others are stopped too and the exit status is 1, so a half-started journey never
lingers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def parse_process(spec: str) -> tuple[str, list[str]]:
    name, sep, command = spec.partition("=")
    if not sep or not name.isidentifier() or not command.strip():
        raise SystemExit(f"dev_run: expected NAME=COMMAND, got {spec!r}")
    return name, shlex.split(command)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` (a server we did not start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def free_port_after(port: int, taken: set[int]) -> int | None:
    """The first port above ``port`` that nothing listens on and we may bind, for the hint."""
    for candidate in range(port + 1, min(port + 100, 65536)):
        if candidate in taken or port_in_use(candidate):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        return candidate
    return None


def taken_ports(ports: list[tuple[int, str]]) -> list[str]:
    """One line for each port of ``ports`` that another program already answers on."""
    wanted = {port for port, _hint in ports}
    lines = []
    for port, hint in ports:
        if port_in_use(port):
            free = free_port_after(port, wanted)
            advice = hint.replace("{free}", str(free) if free is not None else "…")
            lines.append(
                f"dev_run: port {port} is already in use by another program; "
                f"stop it, or choose another port: {advice}"
            )
    return lines


class _Ready(argparse.Action):
    """``--ready URL``: one readiness check, with no expected text (yet)."""

    def __call__(self, parser, namespace, value, option_string=None):  # type: ignore[no-untyped-def]
        namespace.ready = [*(namespace.ready or []), (value, None)]


class _Expect(argparse.Action):
    """``--expect TEXT``: what the answer of the ``--ready`` URL before it must contain."""

    def __call__(self, parser, namespace, value, option_string=None):  # type: ignore[no-untyped-def]
        if not namespace.ready or namespace.ready[-1][1] is not None:
            parser.error("--expect TEXT follows the --ready URL it is for")
        namespace.ready[-1] = (namespace.ready[-1][0], value)


# Straight to the URL: a proxy from http_proxy would answer for a server that is not there.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers_as_expected(url: str, expect: str | None) -> bool | None:
    """True when ``url`` answers 2xx (with ``expect`` in its body), False when it answers
    otherwise — some other program, or ours not ready —, None when nothing answers."""
    try:
        with _DIRECT.open(url, timeout=1) as resp:
            body = resp.read(65536).decode("utf-8", "replace")
    except (urllib.error.HTTPError, http.client.HTTPException):
        return False  # an HTTP error, or something that does not speak HTTP
    except OSError:
        return None
    return expect is None or expect in body


class Supervisor:
    def __init__(self, processes: list[tuple[str, list[str]]], env: dict[str, str], grace: float):
        self.processes = processes
        self.env = env
        self.grace = grace
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = threading.Event()
        self.width = max(len(name) for name, _ in processes)
        self.out_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self.out_lock:
            sys.stdout.write(f"{name:<{self.width}} | {line}\n")
            sys.stdout.flush()

    def _pump(self, name: str, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def start(self) -> None:
        for name, argv in self.processes:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: Ctrl-C reaches us, we stop it
            )
            self.children.append((name, proc))
            threading.Thread(target=self._pump, args=(name, proc.stdout), daemon=True).start()
            self.say(name, f"started (pid {proc.pid}): {shlex.join(argv)}")

    def wait_ready(self, checks: list[tuple[str, str | None]], timeout: float) -> bool:
        """Wait until every URL answers as its check expects. Any answer is not enough: a
        server we did not start may be on the port (ours then fails to bind and exits)."""
        deadline = time.monotonic() + timeout
        pending = list(checks)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            if self.exited() is not None:
                break
            url, expect = pending[0]
            if answers_as_expected(url, expect):
                pending.pop(0)
                continue
            time.sleep(0.2)
        for url, expect in pending:
            if answers_as_expected(url, expect) is False:
                wanted = f"a 2xx answer containing {expect!r}" if expect else "a 2xx answer"
                self.say("dev_run", f"{url} answers, but not with {wanted}")
        return not pending

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.children:
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def stop(self) -> None:
        self.stopping.set()
        for _name, proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for name, proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(name, "did not stop in time: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.say(name, f"stopped ({proc.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, action="append", default=[])
    parser.add_argument(
        "--port",
        nargs=2,
        action="append",
        default=[],
        metavar=("PORT", "HINT"),
        help="a port one of the processes listens on; if it is taken, say HINT and stop",
    )
    parser.add_argument("--ready", action=_Ready, default=[], metavar="URL", help="URL to wait for")
    parser.add_argument(
        "--expect", action=_Expect, metavar="TEXT", help="what the --ready URL before it answers"
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--banner", default="")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("process", nargs="+", help="NAME=COMMAND")
    args = parser.parse_args(argv)
    ports = []
    for port, hint in args.port:
        if not (port.isdigit() and 0 < int(port) < 65536):
            parser.error(f"--port: not a port number: {port!r}")
        ports.append((int(port), hint))

    taken = taken_ports(ports)
    if taken:
        for line in taken:
            print(line, file=sys.stderr, flush=True)
        return 1

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for path in args.env_file:
        env.update(parse_env_file(path))
    sup = Supervisor([parse_process(p) for p in args.process], env, args.grace)

    def on_signal(signum: int, _frame: object) -> None:
        sup.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    sup.start()
    status = 0
    try:
        if args.ready and not sup.wait_ready(args.ready, args.ready_timeout):
            if not sup.stopping.is_set():
                sup.say("dev_run", "not every process came up; stopping")
                status = 1
                sup.stopping.set()
        elif args.banner and not sup.stopping.is_set():
            with sup.out_lock:
                print(args.banner.replace("\\n", "\n"), flush=True)
        while not sup.stopping.wait(0.2):
            gone = sup.exited()
            if gone is not None:
                sup.say(gone[0], f"exited with status {gone[1]}; stopping the others")
                status = 1
                break
    finally:
        sup.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
