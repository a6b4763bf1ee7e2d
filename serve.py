"""Serve linksvc: `python serve.py [options]` (what `make serve`, `make run` and the image run).

``LINKSVC_SERVER`` chooses the HTTP server (bench/README.md, "Serving model"):

- ``gunicorn`` (the default): this process becomes ``gunicorn -c gunicorn.conf.py [options]
  app:app``; every gunicorn option works (``--workers 8``, ``--bind 0.0.0.0:8000``).
- ``granian``: granian's WSGI server with the settings below, and the same operational
  contract: the same redacted JSON access line (linksvc/ops/accesslog.py), ``kill -HUP`` a
  graceful reload that loads new code, ``kill -TERM`` a graceful stop bounded like
  gunicorn's, a dead worker replaced, Prometheus counters summed across workers and kept
  across restarts. Options: ``--bind HOST:PORT``, ``--workers N``, ``--threads N`` (blocking
  threads a worker), ``--backpressure N`` (connections a worker holds).

LINKSVC_BIND, LINKSVC_WORKERS and LINKSVC_THREADS are read by both, from the environment or
the LINKSVC_CONFIG file. Where granian differs from gunicorn, docs/deploy.md says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

ROOT = os.path.dirname(os.path.abspath(__file__))
SERVERS = ("gunicorn", "granian")


def _load_by_path(name: str, relative: str) -> ModuleType:
    """A module of linksvc's loaded by its path: the master must not import the package,
    or a graceful reload (its workers are forked from it) would not load new code."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _settings() -> dict[str, str]:
    config = _load_by_path("_linksvc_serve_config", "linksvc/config.py")
    try:
        return config.environment()  # type: ignore[no-any-return]
    except config.ConfigError:
        return dict(os.environ)  # the app's own check says what is wrong (status 4)


def main(argv: list[str]) -> None:
    env = _settings()
    server = env.get("LINKSVC_SERVER", "gunicorn").strip().lower() or "gunicorn"
    if server not in SERVERS:
        print(
            f"linksvc: configuration error: LINKSVC_SERVER: must be one of {', '.join(SERVERS)},"
            f" not {server!r}",
            file=sys.stderr,
        )
        raise SystemExit(4)
    if server == "gunicorn":
        gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or "gunicorn"
        conf = os.path.join(ROOT, "gunicorn.conf.py")
        os.execvp(gunicorn, [gunicorn, "-c", conf, *argv, "app:app"])
    serve_granian(env, argv)


# -- granian ---------------------------------------------------------------------------------

#: How long a stopping worker may finish its requests (gunicorn.conf.py's graceful_timeout):
#: granian otherwise waits for every open connection, idle keep-alive ones included.
GRACEFUL_TIMEOUT = 20
#: The longest a client may take to send a request's headers, first or next on a keep-alive
#: connection (hyper's header read timeout, in ms): a slowloris client is cut off here.
HEADER_READ_TIMEOUT_MS = 10_000
#: Connections one worker holds at once (granian counts backpressure in connections, not
#: requests): far above the threads, so that slow or idle keep-alive connections cannot
#: starve a worker. At 128, 300 slowloris or idle connections made a good request wait for
#: the header timeout (bench/README.md, "Two servers"); tests/system/test_servers.py holds at 512.
BACKPRESSURE = 512
METRICS_PREFIX = "linksvc-metrics-"


def _defaults(env: dict[str, str]) -> dict[str, Any]:
    """Workers and threads, measured (bench/README.md, "Serving model")."""
    cores = multiprocessing.cpu_count()
    sqlite = (env.get("LINKSVC_DATABASE_URL") or "sqlite").startswith("sqlite")
    return {
        "bind": env.get("LINKSVC_BIND", "127.0.0.1:8000"),
        "workers": int(env.get("LINKSVC_WORKERS", str(cores if sqlite else cores + 1))),
        "threads": int(env.get("LINKSVC_THREADS", "2")),
        "backpressure": BACKPRESSURE,
    }


def _arguments(env: dict[str, str], argv: list[str]) -> argparse.Namespace:
    defaults = _defaults(env)
    parser = argparse.ArgumentParser(prog="serve.py (granian)")
    parser.add_argument("-b", "--bind", default=defaults["bind"])
    parser.add_argument("-w", "--workers", type=int, default=defaults["workers"])
    parser.add_argument("--threads", type=int, default=defaults["threads"])
    parser.add_argument("--backpressure", type=int, default=defaults["backpressure"])
    parser.add_argument("--app", default="app:app", help="the WSGI application (module:name)")
    return parser.parse_args(argv)


def _metrics_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR: the operator's (emptied of an earlier run's counters), else a
    fresh one for this master, as gunicorn.conf.py does; set before any worker is forked."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
        return path
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    for old in os.listdir(parent):  # left by masters killed outright
        pid = old[len(METRICS_PREFIX) :].split("-", 1)[0]
        if old.startswith(METRICS_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-", dir=parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _app_loads(app: str) -> bool:
    """Import the WSGI module once in a throwaway process before any worker starts: a bad
    setting or no usable signing key stops the master with app.py's one line and status 4,
    instead of workers failing in a loop (gunicorn.conf.py's on_starting does the same)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, *sys.path] if p)
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    check = subprocess.run(
        [sys.executable, "-c", code, app.split(":", 1)[0]],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return check.returncode == 0


def _load_app(target: str) -> Any:
    """Runs in each worker, after the fork: linksvc's app behind the access log.

    Until granian installs the worker's own handlers (after this returns), the worker has
    the master's, which only set a flag in the master's memory: a TERM sent while the app
    was loading (a stop right after a respawn) was swallowed, and the worker then served on
    until killed at the graceful timeout. A worker still loading serves nothing yet, so
    here TERM and INT simply end it."""
    import importlib

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    module, _, name = target.partition(":")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    app = getattr(importlib.import_module(module), name or "app")
    from linksvc.ops.accesslog import AccessLog

    return AccessLog(app)


def serve_granian(env: dict[str, str], argv: list[str]) -> None:
    args = _arguments(env, argv)
    if not _app_loads(args.app):
        raise SystemExit(4)
    metrics_dir = _metrics_dir()
    owned = os.path.basename(metrics_dir).startswith(METRICS_PREFIX)

    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    accesslog = _load_by_path("_linksvc_serve_accesslog", "linksvc/ops/accesslog.py")

    class LinksvcGranian(Server):  # type: ignore[misc,valid-type]
        """granian's server with what linksvc needs of gunicorn's arbiter:

        - a hook at a worker's end, for Prometheus: the counters of a dead worker still
          count; its live gauges must not (granian has no per-worker exit hook);
        - a killed worker replaced however often it happens: granian stops the whole
          server when a worker dies within 5.5 s of its own respawn ("crash loop"), so two
          kills of one worker (the OOM killer, an operator) took the node down. A worker
          that cannot start at all is caught before (``_app_loads``); past that, only a
          storm of respawns (more than ``CRASH_LOOP`` in 10 s) stops the server."""

        CRASH_LOOP = 10
        respawns: tuple[float, ...] = ()

        def _dead(self, pids: set[int]) -> None:
            from prometheus_client import multiprocess

            for pid in pids:
                multiprocess.mark_process_dead(pid, metrics_dir)

        def _respawn_workers(self, workers: Any, *a: Any, **kw: Any) -> Any:
            before = {w.inner.pid for w in self.wrks}
            try:
                return super()._respawn_workers(workers, *a, **kw)
            finally:
                self._dead(before - {w.inner.pid for w in self.wrks})
                now = time.monotonic()
                recent = tuple(t for t in self.respawns if now - t < 10)
                self.respawns = recent + (now,) * len(workers)
                if len(self.respawns) <= self.CRASH_LOOP:
                    self.respawned_wrks.clear()

        def _stop_workers(self) -> Any:
            before = {w.inner.pid for w in self.wrks}
            try:
                return super()._stop_workers()
            finally:
                self._dead(before)

    host, _, port = args.bind.rpartition(":")
    redacting = {"()": accesslog.RedactFilter}
    server = LinksvcGranian(
        args.app,
        address=host.strip("[]") or "127.0.0.1",
        port=int(port),
        interface=Interfaces.WSGI,
        # HTTP/1.1 only: behind a proxy (docs/deploy.md) HTTP/2 buys nothing, and its
        # settings are one more surface.
        http=HTTPModes.http1,
        websockets=False,
        workers=args.workers,
        blocking_threads=args.threads,
        backpressure=args.backpressure,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_READ_TIMEOUT_MS,
            keep_alive=True,
            # The request line and headers a client may send: above the 20,000-character
            # link that must reach linksvc's own page (tests/web/test_pages.py); the body limit
            # is linksvc's (LINKSVC_MAX_BODY_BYTES).
            max_buffer_size=64 * 1024,
        ),
        log_dictconfig={
            "filters": {"redact": redacting},
            "handlers": {
                "console": {
                    "formatter": "generic",
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "filters": ["redact"],
                },
                "access": {"class": "logging.NullHandler"},
            },
        },
        log_access=False,  # ours (accesslog.AccessLog) has the gunicorn line's fields
        respawn_failed_workers=True,
        respawn_interval=1.0,
        workers_kill_timeout=GRACEFUL_TIMEOUT,
    )
    if owned:
        server.on_shutdown(lambda: shutil.rmtree(metrics_dir, ignore_errors=True))
    server.serve(target_loader=_load_app)


if __name__ == "__main__":
    main(sys.argv[1:])
