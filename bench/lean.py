"""The ceiling: the same calls as lean as Flask + PyJWT + a durable database allow.

PyJWT ES256 with the algorithm pinned, one statement per request straight on the driver
(``sqlite3`` in WAL with ``synchronous=FULL``, or psycopg), in autocommit: the INSERT of a
mint, the ``UPDATE … RETURNING`` of a redemption and the SELECT of a verification are each
atomic on their own. No history, rate limits, metrics, logs or strict token parsing: this is
what the stack costs, not a service. Served with ``gunicorn -c gunicorn.conf.py
bench.lean:app`` and ``BENCH_DATABASE_URL``, ``BENCH_KEY_FILE``, ``BENCH_API_KEY`` set.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from flask import Flask, Response, abort, jsonify, request

ISSUER = "http://bench.invalid"
AUDIENCE = "cl_bench"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lean_links (jti VARCHAR(43) PRIMARY KEY, subject VARCHAR(255)"
    " NOT NULL, purpose VARCHAR(20) NOT NULL, state VARCHAR(12) NOT NULL, exp BIGINT NOT NULL,"
    " consumed_at BIGINT)"
)


class Db:
    """One autocommit driver connection per thread, and the placeholder style of the driver."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.mark = "?" if self.sqlite else "%s"
        self._local = threading.local()
        self.execute(SCHEMA)

    def conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.sqlite:
                c = sqlite3.connect(
                    self.url.split("///", 1)[1], isolation_level=None, check_same_thread=False
                )
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=FULL")
                c.execute("PRAGMA busy_timeout=15000")
            else:
                import psycopg

                c = psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql"))
                c.autocommit = True
            self._local.conn = c
        return c

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn().execute(sql.replace("?", self.mark), params)


def create_app(database_url: str, key_pem: bytes, api_key: str) -> Flask:
    app = Flask(__name__)
    db = Db(database_url)
    private_key = serialization.load_pem_private_key(key_pem, None)
    public_key = private_key.public_key()  # type: ignore[union-attr]
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()

    def body() -> dict[str, Any]:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if hashlib.sha256(given.encode()).hexdigest() != key_hash:
            abort(401)
        return request.get_json()  # type: ignore[no-any-return]

    def claims(b: dict[str, Any]) -> dict[str, Any]:
        try:
            c = jwt.decode(
                b["token"], public_key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
            )
        except jwt.InvalidTokenError:
            abort(401)
        if c.get("pur") != b["purpose"]:
            abort(401)
        return c

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.post("/api/v1/links")
    def mint() -> Any:
        b = body()
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        db.execute(
            "INSERT INTO lean_links (jti, subject, purpose, state, exp) VALUES (?, ?, ?, 'issued', ?)",
            (jti, b["subject"], b["purpose"], now + 300),
        )
        token = jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": b["subject"],
                "pur": b["purpose"],
                "jti": jti,
                "iat": now,
                "nbf": now,
                "exp": now + 300,
            },
            private_key,  # type: ignore[arg-type]
            algorithm="ES256",
            headers={"kid": "k1", "typ": "link+jwt"},
        )
        return jsonify({"token": token, "jti": jti}), 201

    @app.post("/api/v1/links/verify")
    def verify() -> Any:
        c = claims(body())
        row = db.execute("SELECT state FROM lean_links WHERE jti = ?", (c["jti"],)).fetchone()
        if row is None:
            abort(404)
        return jsonify({"valid": row[0] == "issued", "jti": c["jti"], "state": row[0]})

    @app.post("/api/v1/links/redeem")
    def redeem() -> Any:
        c = claims(body())
        row = db.execute(
            "UPDATE lean_links SET state = 'consumed', consumed_at = ?"
            " WHERE jti = ? AND state = 'issued' RETURNING subject, purpose",
            (int(time.time()), c["jti"]),
        ).fetchone()
        if row is None:
            abort(409)
        return jsonify({"subject": row[0], "purpose": row[1], "jti": c["jti"]})

    return app


def premint(database_url: str, key_pem: bytes, n: int, ttl: int = 900) -> list[str]:
    """``n`` tokens recorded as issued, for first-use redemptions."""
    db = Db(database_url)
    private_key = serialization.load_pem_private_key(key_pem, None)
    now = int(time.time())
    out, rows = [], []
    for i in range(n):
        jti = secrets.token_urlsafe(16)
        rows.append((jti, f"pre-{i}", "magic_link", now + ttl))
        out.append(
            jwt.encode(
                {
                    "iss": ISSUER,
                    "aud": AUDIENCE,
                    "sub": f"pre-{i}",
                    "pur": "magic_link",
                    "jti": jti,
                    "iat": now,
                    "nbf": now,
                    "exp": now + ttl,
                },
                private_key,  # type: ignore[arg-type]
                algorithm="ES256",
                headers={"kid": "k1", "typ": "link+jwt"},
            )
        )
    conn = db.conn()
    sql = "INSERT INTO lean_links (jti, subject, purpose, state, exp) VALUES (?, ?, ?, 'issued', ?)"
    if db.sqlite:
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    else:
        with conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)
    conn.close()
    return out


def _from_env() -> Flask | None:
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        return None
    return create_app(
        url, Path(os.environ["BENCH_KEY_FILE"]).read_bytes(), os.environ["BENCH_API_KEY"]
    )


app = _from_env()
