"""The database: schema (SQLAlchemy Core), engines, and transactions.

SQLite (WAL) is the embedded default and PostgreSQL the production database; the
schema is built by the Alembic migrations in ``migrations/``, never by ``create_all``
outside the check that the two agree. Times are stored as integer seconds since the
epoch, the same on both databases.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from linksvc import errors

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    # SHA-256 of the API key; the key itself is shown once and never stored.
    sa.Column("api_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("purposes", sa.Text(), nullable=False),  # JSON list
    sa.Column("redirect_uris", sa.Text(), nullable=False),  # JSON list
    sa.Column("download_prefixes", sa.Text(), nullable=False),  # JSON list
    sa.Column("mint_limit", sa.String(64), nullable=True),
    sa.Column("subject_limit", sa.String(64), nullable=True),
    sa.Column("allow_pii_subject", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("restart_uri", sa.Text(), nullable=True),  # "Request a new link" on failure pages
    sa.Column("locale", sa.String(16), nullable=True),  # default language of its pages and mails
    # Its face on pages and mails (migration 0009); the sender *address* stays the operator's.
    sa.Column("brand_color", sa.String(7), nullable=True),  # "#RRGGBB"
    sa.Column("support_url", sa.Text(), nullable=True),
    sa.Column("support_email", sa.String(254), nullable=True),
    sa.Column("mail_from_name", sa.String(100), nullable=True),
    sa.Column("link_format", sa.String(8), nullable=False, server_default="jwt"),  # jwt | short
)

#: A client's logo, re-encoded by linksvc (metadata dropped), served at a URL named by its
#: SHA-256 and embedded in mails; kept out of the ``clients`` row that every request reads.
client_logos = sa.Table(
    "client_logos",
    metadata,
    sa.Column("client_id", sa.String(40), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(20), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.Column("updated_at", sa.BigInteger(), nullable=False),
)

#: On PostgreSQL ``links`` is partitioned by day of ``exp`` and ``link_events`` by day of
#: ``at`` (linksvc/store/partitions.py, migration 0007), so each primary key holds its partition
#: key: (jti, exp) here, and (id, at) for the history on PostgreSQL — which Alembic's
#: comparison does not look at; ``id`` comes from one sequence either way.
links = sa.Table(
    "links",
    metadata,
    sa.Column("jti", sa.String(43), primary_key=True),
    sa.Column("client_id", sa.String(40), nullable=False),
    sa.Column("purpose", sa.String(20), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("iat", sa.BigInteger(), nullable=False),
    sa.Column("exp", sa.BigInteger(), primary_key=True),
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("state_at", sa.BigInteger(), nullable=True),
    sa.Column("state_via", sa.String(40), nullable=True),
    # Why a link was revoked or superseded; while it is issued or consumed, the S256 code
    # challenge of a bound flow, "S256:<challenge>" (linksvc.links.ledger.CHALLENGE_PREFIX).
    sa.Column("state_detail", sa.String(64), nullable=True),
    # Server-side data the link needs; never put in the token.
    sa.Column("redirect_uri", sa.Text(), nullable=True),
    sa.Column("download", sa.Text(), nullable=True),  # JSON object
    sa.Column("data", sa.Text(), nullable=True),  # JSON, the caller's
    sa.Column("confirm", sa.Boolean(), nullable=False, server_default=sa.false()),
    # Hash binding a completed redemption to the browser that did it (double-click safety).
    sa.Column("completion_hash", sa.String(64), nullable=True),
    # "<locale>|<time zone>" of its pages and mail (linksvc.links.ledger.LinkRecord.l10n).
    sa.Column("l10n", sa.String(100), nullable=True),
    # A short link's handle, as its keyed hash (linksvc.links.handles; migration 0010); NULL for a
    # link that exists as a JWT only. Not unique: on the partitioned ledger a unique index
    # would have to include exp, and 128 random bits do not collide in practice.
    sa.Column("handle_hash", sa.String(64), nullable=True),
    sa.Index("ix_links_client_subject", "client_id", "subject", "purpose", "state"),
    sa.Index("ix_links_exp", "exp"),
    sa.Index(
        "ix_links_handle_hash",
        "handle_hash",
        postgresql_where=sa.text("handle_hash IS NOT NULL"),
        sqlite_where=sa.text("handle_hash IS NOT NULL"),
    ),
)

link_events = sa.Table(
    "link_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("jti", sa.String(43), nullable=False),
    sa.Column("at", sa.BigInteger(), nullable=False),
    sa.Column("event", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(40), nullable=True),
    sa.Column("via", sa.String(20), nullable=True),
    # A keyed hash of the requester's address: enough to tell requests apart, not to name anyone.
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Index("ix_link_events_jti", "jti", "id"),
)

codes = sa.Table(
    "codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(43), nullable=False),
    sa.Column("client_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("used_at", sa.BigInteger(), nullable=True),
    # Set when a revocation voids the code before its exchange (linksvc.links.codes).
    sa.Column("voided_at", sa.BigInteger(), nullable=True),
    sa.Index("ix_codes_expires_at", "expires_at"),
)

#: Sign-ins that complete on the device that asked (linksvc.signins.flow), keyed by the jti of
#: the magic link that approves them. Only keyed hashes of the mailed code and of the
#: browser binding are kept; the e-mail address is never stored.
sign_ins = sa.Table(
    "sign_ins",
    metadata,
    sa.Column("jti", sa.String(43), primary_key=True),
    sa.Column("id", sa.String(43), nullable=False, unique=True),
    sa.Column("client_id", sa.String(40), nullable=False),
    # pending | approved | completed | denied | ended
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("state_at", sa.BigInteger(), nullable=True),
    sa.Column("state_detail", sa.String(20), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("exp", sa.BigInteger(), nullable=False),
    sa.Column("browser", sa.String(64), nullable=False),
    sa.Column("match_number", sa.Integer(), nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("code_failures", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("binding_hash", sa.String(64), nullable=True),
    sa.Index("ix_sign_ins_exp", "exp"),
)

#: Idempotent minting (linksvc.links.idempotency): a client's key, by hash, names one link.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("client_id", sa.String(40), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),  # SHA-256 of the key
    sa.Column("request_hash", sa.String(64), nullable=False),  # HMAC of the parsed body
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    # Null while the claiming request is minting; then the link's facts, to answer a replay.
    sa.Column("jti", sa.String(43), nullable=True),
    sa.Column("purpose", sa.String(20), nullable=True),
    sa.Column("subject", sa.String(255), nullable=True),
    sa.Column("iat", sa.BigInteger(), nullable=True),
    sa.Column("exp", sa.BigInteger(), nullable=True),
    sa.Column("superseded", sa.Integer(), nullable=True),
    sa.Column("emailed", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("alg", sa.String(10), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # next | active | retired | removed
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("activated_at", sa.BigInteger(), nullable=True),
    sa.Column("retired_at", sa.BigInteger(), nullable=True),
    sa.Column("removed_at", sa.BigInteger(), nullable=True),
    sa.Column("public_jwk", sa.Text(), nullable=False),
    # PKCS#8 private key, AES-256-GCM under the key-encryption key, nonce prepended.
    sa.Column("private_key_enc", sa.LargeBinary(), nullable=False),
)

# -- webhooks (linksvc.webhooks.endpoints, linksvc.webhooks.outbox, linksvc.webhooks.relay) ------------------------

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("client_id", sa.String(40), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    # ",link.minted,link.consumed," (matched with LIKE in the outbox insert), NULL for all.
    sa.Column("events", sa.Text(), nullable=True),
    # The whsec_ secret, AES-256-GCM under the key-encryption key, nonce prepended.
    sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
    # The secret before the last rotation, still signing until old_secret_until.
    sa.Column("old_secret_enc", sa.LargeBinary(), nullable=True),
    sa.Column("old_secret_until", sa.BigInteger(), nullable=True),
    sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("disabled_reason", sa.String(40), nullable=True),
    sa.Column("disabled_at", sa.BigInteger(), nullable=True),
    # First failure since the last success; 3 days of it disable the endpoint.
    sa.Column("failing_since", sa.BigInteger(), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_webhook_endpoints_client", "client_id"),
)

webhook_clients = sa.Table(
    "webhook_clients",
    metadata,
    sa.Column("client_id", sa.String(40), primary_key=True),
    # What a replayed consumed link does besides its event: NULL, or "revoke-subject".
    sa.Column("on_replay", sa.String(20), nullable=True),
    # link.expired has been emitted for every link of this client with exp <= swept_until.
    sa.Column("swept_until", sa.BigInteger(), nullable=False),
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("msg_id", sa.String(40), nullable=False),  # the webhook-id, same on every retry
    sa.Column("endpoint_id", sa.String(40), nullable=False),
    sa.Column("client_id", sa.String(40), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("jti", sa.String(43), nullable=True),
    sa.Column("payload", sa.Text(), nullable=False),  # the exact body that is signed
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
    sa.Column("lease_token", sa.String(40), nullable=True),
    sa.Column("lease_until", sa.BigInteger(), nullable=True),
    sa.Column("delivered_at", sa.BigInteger(), nullable=True),
    sa.Column("last_status", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    # The W3C traceparent of the request that queued the event, with tracing on (migration 0011).
    sa.Column("traceparent", sa.String(55), nullable=True),
    sa.UniqueConstraint("msg_id", "endpoint_id", name="uq_webhook_outbox_msg_endpoint"),
    sa.Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
    sa.Index("ix_webhook_outbox_link", "endpoint_id", "jti", "id"),
    sa.Index("ix_webhook_outbox_client", "client_id", "id"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", BigId, nullable=False),
    sa.Column("at", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=True),
    sa.Column("error", sa.String(200), nullable=True),
    sa.Column("duration_ms", sa.Integer(), nullable=False),
    sa.Index("ix_webhook_attempts_outbox", "outbox_id", "id"),
)


def make_engine(
    url: str, *, pool_size: int = 5, statement_timeout_ms: int = 5000, connect_timeout: int = 3
) -> Engine:
    """An engine tuned for the ledger on SQLite or PostgreSQL.

    On PostgreSQL every way the database can go missing ends within seconds, never at the
    gunicorn worker timeout: ``connect_timeout`` bounds a new connection, ``pool_pre_ping``
    replaces a connection the server closed (restart, failover) before it is used, the
    server's ``statement_timeout`` bounds a query, ``tcp_user_timeout`` and keepalives bound
    a connection whose peer vanished from the network, and ``pool_timeout`` bounds the wait
    for a free connection.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 15, "isolation_level": None, "check_same_thread": False},
            pool_pre_ping=False,
        )
        _sqlite_setup(engine)
        if path and path != ":memory:":
            _WRITE_LOCKS[engine] = WriteLock(f"{path}.writelock")
        return engine
    network_ms = statement_timeout_ms + connect_timeout * 1000
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=connect_timeout,
        # Pinged on checkout only after PING_IDLE_SECONDS idle (see _ping_if_idle), not on
        # every checkout: a ping is a round trip, as costly as the statement that follows.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": connect_timeout,
            "application_name": "linksvc",
            # Unacknowledged data for this long means the server is gone (network partition).
            "tcp_user_timeout": network_ms,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "options": f"-c statement_timeout={statement_timeout_ms}"
            f" -c lock_timeout={statement_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={max(statement_timeout_ms * 2, 10000)}",
        },
    )
    _ping_if_idle(engine)
    return engine


#: A pooled PostgreSQL connection idle this long is pinged before it is handed out.
PING_IDLE_SECONDS = 1.0


def _ping_if_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, without a round trip per request.

    A connection that served a request in the last second is handed out as it is; an older
    one is pinged first, and a dead one replaced (SQLAlchemy retries the checkout on
    ``DisconnectionError``). A server that restarts under load costs at most one 503 per
    connection that was busy at that moment: its statement fails, the connection is
    invalidated, and the next request gets a fresh one.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        record.info["linksvc_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() - record.info.get("linksvc_used", 0.0) < PING_IDLE_SECONDS:
            return
        try:
            if not engine.dialect.do_ping(dbapi_conn):
                raise sa.exc.DisconnectionError("ping failed")
        except sa.exc.DisconnectionError:
            raise
        except Exception as exc:
            raise sa.exc.DisconnectionError(str(exc)) from exc


class WriteLock:
    """One SQLite writer at a time across this host's processes and threads, queued in the
    kernel (``flock``) instead of in SQLite's busy handler.

    SQLite's busy handler polls a held write lock with sleeps of 1, 2, 5, 10 … 100 ms, so a
    writer that finds the lock taken waits until its next wake-up, not until the lock is
    free: under load that was most of the p99. ``flock`` wakes the next writer the moment
    the commit releases it. SQLite's own locking stays in force underneath (other tools,
    the CLI), so correctness never rests on this lock; only the queueing does. A process
    that dies holding it releases it with its file descriptor.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None or self._pid != os.getpid():  # opened after a fork: our own
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # type: ignore[arg-type]
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


# Weak: an engine disposed and dropped (tests build hundreds) takes its lock with it.
_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, WriteLock] = weakref.WeakKeyDictionary()


def write_lock(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """The host-wide writer queue of an SQLite file database; a no-op elsewhere."""
    lock = _WRITE_LOCKS.get(engine)
    return lock.held() if lock is not None else contextlib.nullcontext()


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # The driver's own transaction handling is switched off; _on_begin emits BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the consumed state is on disk before the winner's response is sent.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=15000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front (BEGIN IMMEDIATE), so two
        # workers racing for one link queue on the lock instead of failing with SQLITE_BUSY.
        # Straight to the driver: BEGIN runs on every request, and SQLAlchemy's statement
        # machinery costs more than the statement. Its errors are wrapped as SQLAlchemy's
        # would be, so a locked database still becomes a 503.
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN"
        try:
            conn.connection.dbapi_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            raise sa.exc.OperationalError(sql, None, exc) from exc


#: What "the database is not answering" looks like through SQLAlchemy: a lost or refused
#: connection, a statement or lock timeout (psycopg's QueryCanceled is an OperationalError),
#: or no free connection in the pool in time.
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def _unavailable() -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable("database", "The database is unavailable; try again shortly.")


_ADVISORY_LOCK = sa.text("SELECT pg_advisory_xact_lock(:k)")


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Hold PostgreSQL's advisory lock ``key`` until ``conn``'s transaction ends."""
    conn.execute(_ADVISORY_LOCK, {"k": key})


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on success; database trouble becomes 503.

    The commit happens before this block exits, so a caller that answers after it answers
    about a durable change; a commit that fails (the connection dropped) raises instead.
    """
    try:
        with write_lock(engine):
            with engine.connect().execution_options(sqlite_immediate=True) as conn:
                with conn.begin():
                    yield conn
    except UNAVAILABLE as exc:
        raise _unavailable() from exc


def in_batches(
    engine: Engine, batch: Callable[[Connection], int | None], *, max_batches: int | None = None
) -> tuple[int, int]:
    """Run ``batch`` in one write transaction after another until it returns None (nothing
    was left) or ``max_batches`` have run: a purge in bounded transactions, which can run
    beside live traffic. Returns the sum of what the batches returned, and how many ran (the
    last, empty one included)."""
    total = runs = 0
    while max_batches is None or runs < max_batches:
        runs += 1
        with write(engine) as conn:
            n = batch(conn)
        if n is None:
            break
        total += n
    return total, runs


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read transaction; database trouble becomes 503."""
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    except UNAVAILABLE as exc:
        raise _unavailable() from exc


def ping(engine: Engine) -> bool:
    """True when the database answers a query now (``/readyz``)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        return False


# -- the hot statements: compiled once per dialect, run on the driver connection ----------


class Statement:
    """A Core statement, compiled once per dialect and run straight on the DBAPI connection.

    SQLAlchemy's execution machinery (execution context, result wrapping, events) costs more
    CPU than a short statement on the driver; the hot path keeps the Core statement as the
    one definition of its SQL and skips the machinery. Parameters are always a mapping
    (SQLite compiled to ``:name``, psycopg to ``%(name)s``); literals of the statement are
    bound from the compiled defaults.
    """

    def __init__(self, stmt: sa.sql.expression.Executable, *, writes: bool | None = None) -> None:
        self.stmt = stmt
        #: Whether it changes the database (on SQLite it then takes the write lock): DML, or
        #: as ``writes`` says (a SELECT over data-modifying CTEs).
        self.writes = bool(getattr(stmt, "is_dml", False)) if writes is None else writes
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}
        #: A SELECT, or DML with RETURNING: its rows are fetched. Known once compiled, so
        #: that the driver's ``cursor.description`` (psycopg builds a column object per
        #: column on every call) is never asked.
        self.returns_rows = False

    def sql(self, dialect: sa.engine.Dialect) -> tuple[str, dict[str, Any]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            if dialect.name == "sqlite":
                from sqlalchemy.dialects import sqlite as sqlite_dialect

                dialect = sqlite_dialect.dialect(paramstyle="named")
            compiled = self.stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
            self.returns_rows = bool(
                getattr(self.stmt, "is_select", False) or compiled.effective_returning
            )
            found = self._compiled[dialect.name] = (compiled.string, dict(compiled.params))
        return found


class _Slot:
    """One thread's own DBAPI connection for the hot statements, outside the pool."""

    __slots__ = ("busy", "conn", "dbapi", "lost", "stale", "used")

    def __init__(self) -> None:
        self.conn: Any = None  # the driver's connection (sqlite3 or psycopg)
        self.dbapi: Any = None  # the same, as SQLAlchemy's dialect sees it
        self.used = 0.0
        self.busy = False
        self.stale = False  # the engine was disposed while this slot was in use
        self.lost = False  # its last connection failed (the server may have gone away)


class HotConnections:
    """Per engine: each thread's connection for the hot statements (:func:`execute`).

    A request's statement runs on its thread's own connection, held from one request to
    the next: checking a connection out of SQLAlchemy's pool and back in (events, the
    fairy, the reset) costs more CPU than the statement. The connection comes from the
    pool (so it is set up like every other) and is then detached from it, so the pool's
    size still bounds the connections of everything else. On PostgreSQL it stays in
    autocommit, and is pinged before use after ``PING_IDLE_SECONDS`` idle, as the pool
    does; one that failed is closed and the next statement gets a fresh one. A slot is
    found by thread id, so a thread that ends leaves its slot to the next thread with
    that id; :meth:`close_all` (on ``engine.dispose()``) closes them all.
    """

    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    def acquire(self, engine: Engine) -> _Slot:
        """This thread's slot, connected and marked busy (a nested use gets a slot of its
        own, closed on release)."""
        if self._pid != os.getpid():
            self._forked()
        ident = threading.get_ident()
        slot = self._slots.get(ident)
        if slot is None or slot.busy:
            nested = slot is not None
            slot = _Slot()
            if nested:
                slot.stale = True
            else:
                with self._lock:
                    self._slots[ident] = slot
        slot.busy = True
        try:
            if slot.conn is None:
                self._connect(engine, slot, check=slot.lost)
            elif self.postgres and time.monotonic() - slot.used >= PING_IDLE_SECONDS:
                if slot.conn.closed or not _ping(engine, slot.dbapi):
                    _close(slot)
                    self._connect(engine, slot, check=True)
        except BaseException:
            slot.busy = False
            raise
        return slot

    def release(self, engine: Engine, slot: _Slot, failed: BaseException | None = None) -> None:
        slot.used = time.monotonic()
        slot.busy = False
        if slot.stale:
            _close(slot)
            slot.stale = False
        elif failed is not None and self._broken(engine, slot, failed):
            _close(slot)
            slot.lost = True

    def close_all(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                if slot.busy:
                    slot.stale = True  # closed by its thread when the statement is done
                else:
                    _close(slot)

    def _connect(self, engine: Engine, slot: _Slot, *, check: bool) -> None:
        """Take a connection from the pool (set up like every other, pinged there if idle)
        and detach it. With ``check`` (the last one was lost: the server went away, and the
        pool's recently used connections went with it) each is pinged first and a dead one
        dropped from the pool, until a live or new one comes."""
        tries = engine.pool.size() * 2 + 1 if check and self.postgres else 1  # type: ignore[attr-defined]
        for _ in range(tries):
            fairy = engine.raw_connection()
            if tries > 1 and not _ping(engine, fairy.dbapi_connection):
                fairy.invalidate()
                fairy.close()
                continue
            break
        else:
            raise _unavailable()
        slot.conn, slot.dbapi = fairy.driver_connection, fairy.dbapi_connection
        fairy.detach()
        slot.lost = False
        if self.postgres:
            slot.conn.autocommit = True
        if CONNECTION_HOOK is not None:
            slot.conn = CONNECTION_HOOK(engine, slot.conn)

    def _broken(self, engine: Engine, slot: _Slot, exc: BaseException) -> bool:
        """Whether a connection whose statement raised ``exc`` must not be used again."""
        if not self.postgres:
            return False  # sqlite3 errors leave the connection as it was (ROLLBACK aside)
        if slot.conn.closed or slot.conn.info.transaction_status != _PG_IDLE:
            return True
        return isinstance(exc, psycopg.Error) and engine.dialect.is_disconnect(
            exc,  # type: ignore[arg-type]
            slot.dbapi,
            None,
        )

    def _forked(self) -> None:
        # The parent's connections share their sockets with it: never use or close them
        # here (closing would end the parent's sessions); keep them referenced, unused.
        _INHERITED.extend(self._slots.values())
        self._slots = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()


_PG_IDLE = psycopg.pq.TransactionStatus.IDLE

#: Wraps each new hot connection, once, when it is made: set by linksvc.ops.tracing (spans for
#: the statements that bypass SQLAlchemy); None, and never called, with tracing off.
CONNECTION_HOOK: Callable[[Engine, Any], Any] | None = None
_INHERITED: list[_Slot] = []


def _ping(engine: Engine, dbapi_conn: Any) -> bool:
    try:
        return bool(engine.dialect.do_ping(dbapi_conn))
    except Exception:
        return False


def _close(slot: _Slot) -> None:
    conn, slot.conn, slot.dbapi = slot.conn, None, None
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


# Weak: an engine disposed and dropped (tests build hundreds) takes its slots with it.
_HOT: weakref.WeakKeyDictionary[Engine, HotConnections] = weakref.WeakKeyDictionary()


def hot_connections(engine: Engine) -> HotConnections:
    found = _HOT.get(engine)
    if found is None:
        found = _HOT[engine] = HotConnections(engine)
    return found


#: What the driver raises when the database is not answering (a 503, like UNAVAILABLE).
_DRIVER_UNAVAILABLE = (sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError)
#: Either, through SQLAlchemy or straight from the driver: the one error mapping of the hot
#: statements (:func:`driver`, :func:`run`).
_ANY_UNAVAILABLE = (*UNAVAILABLE, *_DRIVER_UNAVAILABLE)


@contextlib.contextmanager
def driver(engine: Engine, *, writes: bool) -> Iterator[Any]:
    """This thread's own DBAPI connection (:class:`HotConnections`) in autocommit: each
    statement is its own transaction, committed (durably: ``synchronous=FULL``,
    ``synchronous_commit=on``) before it returns, so a write statement is one round trip.
    Database trouble becomes 503; a connection that failed is closed."""
    hot = hot_connections(engine)
    try:
        with write_lock(engine) if writes else contextlib.nullcontext():
            slot = hot.acquire(engine)
            try:
                yield slot.conn
            except BaseException as exc:
                hot.release(engine, slot, exc)
                raise
            hot.release(engine, slot)
    except _ANY_UNAVAILABLE as exc:
        raise _unavailable() from exc


class DriverTransaction:
    """A write transaction on this thread's hot connection (:func:`driver_transaction`)."""

    __slots__ = ("conn", "engine")

    def __init__(self, engine: Engine, conn: Any) -> None:
        self.engine = engine
        self.conn = conn


def _in_transaction(engine: Engine, conn: Any) -> bool:
    # By the dialect, not the connection's type: with tracing on it is a proxy (ops/tracing.py).
    if engine.dialect.name == "sqlite":
        return bool(conn.in_transaction)
    return bool(conn.info.transaction_status != _PG_IDLE)


@contextlib.contextmanager
def driver_transaction(engine: Engine) -> Iterator[DriverTransaction]:
    """A write transaction on this thread's driver connection (:func:`driver`): BEGIN
    (IMMEDIATE on SQLite: the write lock up front), COMMIT when the block ends — durable
    before it returns — or ROLLBACK when it raises. For a hot change of a few statements
    that must commit together, without SQLAlchemy's execution machinery around each; its
    statements run through :func:`run`."""
    with driver(engine, writes=True) as conn:
        conn.execute("BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else "BEGIN")
        try:
            yield DriverTransaction(engine, conn)
            conn.execute("COMMIT")
        except BaseException:
            if _in_transaction(engine, conn):
                conn.execute("ROLLBACK")
            raise


#: Where a statement runs, as its caller chooses: an ``Engine`` — alone, in autocommit, on
#: this thread's hot connection (durable when it returns); a SQLAlchemy ``Connection`` — in
#: the caller's transaction (:func:`write`, :func:`read`); a :class:`DriverTransaction` — in
#: a transaction on the hot connection.
On = Engine | Connection | DriverTransaction


def run(on: On, stmt: Statement, params: Mapping[str, Any]) -> Sequence[Any]:
    """Run ``stmt`` where ``on`` says; its rows (``RETURNING`` / ``SELECT``), none for a plain
    write. The one executor of the statements defined once as :class:`Statement`."""
    if isinstance(on, Engine):
        return _autocommit(on, stmt, params, stmt.writes)
    if isinstance(on, DriverTransaction):
        sql, defaults = stmt.sql(on.engine.dialect)
        cur = on.conn.execute(sql, {**defaults, **params} if defaults else params)
        rows = cur.fetchall() if stmt.returns_rows else []
        cur.close()
        return rows
    result = on.execute(stmt.stmt, params)
    return result.all() if result.returns_rows else []


def execute(
    engine: Engine, stmt: Statement, params: Mapping[str, Any], *, writes: bool
) -> Sequence[Any] | None:
    """:func:`run` on ``engine`` (alone, in autocommit), taking the write lock as ``writes``
    says; its first row (``RETURNING`` / ``SELECT``) or None."""
    rows = _autocommit(engine, stmt, params, writes)
    return rows[0] if rows else None


def _autocommit(
    engine: Engine, stmt: Statement, params: Mapping[str, Any], writes: bool
) -> Sequence[Any]:
    """:func:`run` on an engine: the statement alone on this thread's hot connection (see
    :func:`driver`). Spelled out rather than through :func:`driver`: this is every request's
    statement, and a generator context manager costs a few microseconds."""
    sql, defaults = stmt.sql(engine.dialect)
    if defaults:
        params = {**defaults, **params}
    hot = hot_connections(engine)
    lock = _WRITE_LOCKS.get(engine) if writes else None
    try:
        if lock is not None:
            lock.acquire()
        try:
            slot = hot.acquire(engine)
            try:
                cur = slot.conn.execute(sql, params)
                # fetchall, not fetchone: SQLite commits an autocommit statement when it has
                # run to its end, and an error of that commit must reach us, not be lost at
                # cursor reset.
                rows: Sequence[Any] = cur.fetchall() if stmt.returns_rows else []
                cur.close()
            except BaseException as exc:
                hot.release(engine, slot, exc)
                raise
            hot.release(engine, slot)
        finally:
            if lock is not None:
                lock.release()
    except _ANY_UNAVAILABLE as exc:
        raise _unavailable() from exc
    return rows
