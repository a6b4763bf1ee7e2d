#!/usr/bin/env python3
"""A small process supervisor for `make run`: start every process of the development journey,
prefix their output with their names, and stop them all together.

    scripts/dev_run.py [--env-file FILE] [--ready URL]... [--banner TEXT] NAME=COMMAND ...

Each ``NAME=COMMAND`` is one process (split like a shell would, no shell involved); the
Makefile's ``run`` target lists them one per line, so adding a process (a relay, a worker) is
one line there. ``--env-file`` adds ``KEY=VALUE`` lines to every process's environment (the
demo client's key, written by ``flask --app app demo``). Once every ``--ready`` URL answers,
the ``--banner`` is printed.

Ctrl-C (SIGINT) or SIGTERM stops everything: each process runs in its own process group, gets
SIGTERM, and SIGKILL if it is still there after ``--grace`` seconds. If one process exits on
its own, the others are stopped too and the exit status is 1, so a half-started journey never
lingers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
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

    def wait_ready(self, urls: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pending = list(urls)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            if self.exited() is not None:
                return False
            url = pending[0]
            try:
                with urllib.request.urlopen(url, timeout=1):
                    pending.pop(0)
                    continue
            except urllib.error.HTTPError:
                pending.pop(0)  # it answers: that is all we wait for
                continue
            except OSError:
                time.sleep(0.2)
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
    parser.add_argument("--ready", action="append", default=[], help="URL to wait for")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--banner", default="")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("process", nargs="+", help="NAME=COMMAND")
    args = parser.parse_args(argv)

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
