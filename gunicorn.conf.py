"""gunicorn settings for linksvc: `gunicorn -c gunicorn.conf.py app:app` (what `make serve` runs).

Link paths (/l/<token>, /d/<token>, /dl/<grant>) carry bearer credentials, so every line of
the access and error logs is redacted before it is written: link paths, anything shaped like a
link token or an API key, and the values of query parameters. Override any setting on the
command line (`--workers 8`, `--bind 0.0.0.0:8000`).

Graceful reload: `kill -HUP <master pid>` re-reads this file and the code, starts new workers
and lets the old ones finish their requests (up to ``graceful_timeout``) before they exit; no
request is dropped. `kill -TERM` is a graceful stop, `kill -USR1` reopens the log files.
"""

import multiprocessing
import os
import subprocess
import sys

from gunicorn.glogging import Logger, SafeAtoms


def _load_by_path(name: str, relative: str):  # type: ignore[no-untyped-def]
    """A module of linksvc's loaded by its path, not imported as part of the package: the
    master must not hold linksvc's modules, or `kill -HUP` would not load new code."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), relative)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look it up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _settings() -> dict[str, str]:
    """The LINKSVC_* settings with the LINKSVC_CONFIG file and the _FILE secrets, as the app
    reads them (linksvc.config.environment). A bad setting is left to the app's own check
    below (one line, status 4)."""
    module = _load_by_path("_linksvc_gunicorn_config", "linksvc/config.py")
    try:
        return module.environment()  # type: ignore[no-any-return]
    except module.ConfigError:
        return dict(os.environ)


_ENV = _settings()
bind = _ENV.get("LINKSVC_BIND", "127.0.0.1:8000")
# Sync workers (bench/README.md, "Serving model"): measured side by side on this 2-core
# machine, they beat threaded workers (gthread, 2 x 4) on every call and database, in
# throughput and in p99 — the threads of one process take turns on the GIL, and a few
# keep-alive connections can all land on one worker while the other idles. Every mint and
# redemption waits for its durable commit, so there are more workers than cores: on
# PostgreSQL gunicorn's 2 x cores + 1 (a worker waits for each round trip while the others
# run); on SQLite cores + 1, since its writers take turns on one lock (linksvc.store.db.WriteLock,
# queued in the kernel) and more processes would only queue there. LINKSVC_WORKERS
# overrides the count, LINKSVC_THREADS > 1 gives threaded workers. Sync workers read a
# request whole before anything else runs: put them behind a buffering proxy (docs/deploy.md).
_CORES = multiprocessing.cpu_count()
_SQLITE = (_ENV.get("LINKSVC_DATABASE_URL") or "sqlite").startswith("sqlite")
workers = int(_ENV.get("LINKSVC_WORKERS", str(_CORES + 1 if _SQLITE else 2 * _CORES + 1)))
threads = int(_ENV.get("LINKSVC_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
# gunicorn 27 opens a control socket at one fixed path per user; several masters on one host
# (two nodes, tests) would fight over it, and nothing here uses it.
control_socket_disable = True
# Each worker builds its own app and connection pool after the fork: a pool inherited from
# the master would share sockets between processes.
preload_app = False
# A request is bounded by the database timeouts (connect 3 s, statement 5 s) well below this;
# a worker stuck past it is killed and replaced by the master.
timeout = 30
graceful_timeout = 20
keepalive = 5
# Heartbeat files in memory, not on a possibly slow disk (containers).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No request-line limit of gunicorn's own: an over-long link (a token cut and pasted twice, a
# mangled mail of 20,000 characters) must reach linksvc, which refuses it on its own page
# ("This link is not valid", 400) instead of gunicorn's bare 414 — any value above 0 is capped
# at 8,190. Unbounded here is bounded in front: gunicorn serves behind a buffering proxy
# (docs/deploy.md), whose own request-line limit (nginx: large_client_header_buffers) is the
# one to raise to 32k or so.
limit_request_line = 0
max_requests = 0
accesslog = "-"
errorlog = "-"
access_log_format = (
    '{"remote":"%(h)s","request":"%(r)s","status":%(s)s,"bytes":"%(b)s","ms":%(M)s,'
    '"request_id":"%({x-request-id}o)s"}'
)

# The redaction every access and error line goes through (linksvc/ops/accesslog.py; under
# granian, serve.py writes the same lines with the same module).
_accesslog = _load_by_path("_linksvc_gunicorn_accesslog", "linksvc/ops/accesslog.py")
redact = _accesslog.redact
_json_safe = _accesslog.json_safe
_RedactFilter = _accesslog.RedactFilter


class _RedactedAtoms(SafeAtoms):
    """gunicorn's atoms, each redacted and made JSON-safe when the line format asks for it:
    a line names a handful of the dozens of atoms gunicorn builds (one per header), and
    redacting them all cost a tenth of a mint's time in the worker."""

    def __init__(self, atoms):  # type: ignore[no-untyped-def]
        dict.__init__(self, atoms)  # raw values; SafeAtoms escapes them all up front

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        value = super().__getitem__(key)  # headers case-insensitive, "-" when absent
        if isinstance(value, str):
            value = _json_safe(redact(value)).replace('"', '\\"')
        return value


class RedactingLogger(Logger):
    """gunicorn's logger with link tokens, API keys and query values removed from every line."""

    atoms_wrapper_class = _RedactedAtoms

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, _RedactFilter) for f in log.filters):
                log.addFilter(_RedactFilter())


logger_class = RedactingLogger


# -- Prometheus metrics shared by the workers (linksvc.ops.metrics) -----------------------------
# Each worker writes its counters to files in PROMETHEUS_MULTIPROC_DIR and a scrape sums them.
# Unless the operator names a directory, each master gets a fresh one (in memory when it can),
# set here, before any worker imports prometheus_client, and removed when the master exits.
_METRICS_PREFIX = "linksvc-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    _parent = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    # A master killed outright (SIGKILL) leaves its directory behind: remove those of dead masters.
    for _old in os.listdir(_parent) if os.path.isdir("/proc/self") else ():
        _pid = _old[len(_METRICS_PREFIX) :].split("-", 1)[0]
        if (
            _old.startswith(_METRICS_PREFIX)
            and _pid.isdigit()
            and not os.path.exists(f"/proc/{_pid}")
        ):
            import shutil

            shutil.rmtree(os.path.join(_parent, _old), ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix=f"{_METRICS_PREFIX}{os.getpid()}-", dir=_parent
    )


def _app_loads(server) -> bool:  # type: ignore[no-untyped-def]
    """Import the WSGI module once, in a throwaway process, before any worker is forked.

    A bad setting, or in production no usable signing key, then stops the master with
    app.py's one line and status 4 (gunicorn's "app failed to load"). Left to the workers,
    each printed it, and when two exited together gunicorn's arbiter raised HaltServer again
    while halting: two tracebacks and status 1. Not imported in the master itself: every
    worker would inherit that module, and `kill -HUP` would no longer load new code."""
    app_uri = getattr(server.app, "app_uri", None)
    if not app_uri:
        return True
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    # The workers import with the master's sys.path (--chdir, --pythonpath included).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys; importlib.import_module(sys.argv[1])",
            app_uri.split(":", 1)[0],
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return check.returncode == 0


def on_starting(server):  # type: ignore[no-untyped-def]
    if not _app_loads(server):
        on_exit(server)
        if server.pidfile is not None:
            server.pidfile.unlink()
        sys.exit(4)  # what a worker failing to load the app makes gunicorn exit with
    # Counters left by an earlier run in an operator-named directory would be summed in.
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    # A dead worker's counters still count; its live gauges must not.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server):  # type: ignore[no-untyped-def]
    import shutil

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(path).startswith(_METRICS_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
