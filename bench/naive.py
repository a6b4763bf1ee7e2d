"""The straightforward baseline: the same four calls written the way a developer would
write them first — Flask, the SQLAlchemy ORM with a scoped session, PyJWT ES256, one row
per link, default database settings (durable: SQLite's rollback journal with
``synchronous=FULL``, PostgreSQL's ``synchronous_commit=on``).

No history, no rate limits, no metrics, no logs, no strict token parsing beyond PyJWT's
``decode`` with the algorithm pinned, and a redemption that reads the row and then
updates it (two statements in one transaction; not even race-safe on SQLite's deferred
transactions — a first draft). Served like hello-world:
``gunicorn -c gunicorn.conf.py bench.naive:app`` with ``BENCH_DATABASE_URL``,
``BENCH_KEY_FILE`` (a PEM ES256 key) and ``BENCH_API_KEY`` in the environment.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from flask import Flask, abort, jsonify, request
from sqlalchemy import BigInteger, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

ISSUER = "http://bench.invalid"
AUDIENCE = "cl_bench"


class Base(DeclarativeBase):
    pass


class Link(Base):
    __tablename__ = "naive_links"
    jti: Mapped[str] = mapped_column(String(43), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(12), default="issued")
    exp: Mapped[int] = mapped_column(BigInteger)
    consumed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


def create_app(database_url: str, key_pem: bytes, api_key: str) -> Flask:
    app = Flask(__name__)
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    Session = scoped_session(sessionmaker(engine))
    private_key = serialization.load_pem_private_key(key_pem, None)
    public_key = private_key.public_key()  # type: ignore[union-attr]
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()

    @app.teardown_appcontext
    def _remove(_exc: Any) -> None:
        Session.remove()

    @app.before_request
    def _auth() -> None:
        if request.path == "/healthz":
            return
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if hashlib.sha256(given.encode()).hexdigest() != key_hash:
            abort(401)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    @app.post("/api/v1/links")
    def mint() -> Any:
        body = request.get_json()
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        link = Link(
            jti=jti, subject=body["subject"], purpose=body["purpose"], state="issued", exp=now + 300
        )
        Session.add(link)
        Session.commit()
        token = jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": body["subject"],
                "pur": body["purpose"],
                "jti": jti,
                "iat": now,
                "nbf": now,
                "exp": now + 300,
            },
            private_key,
            algorithm="ES256",
            headers={"kid": "k1", "typ": "link+jwt"},
        )
        return jsonify({"token": token, "jti": jti}), 201

    def _claims(body: dict[str, Any]) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                body["token"], public_key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
            )
        except jwt.InvalidTokenError:
            abort(401)
        if claims.get("pur") != body["purpose"]:
            abort(401)
        return claims

    @app.post("/api/v1/links/verify")
    def verify() -> Any:
        claims = _claims(request.get_json())
        link = Session.get(Link, claims["jti"])
        if link is None:
            abort(404)
        Session.commit()
        return jsonify({"valid": link.state == "issued", "jti": link.jti, "state": link.state})

    @app.post("/api/v1/links/redeem")
    def redeem() -> Any:
        claims = _claims(request.get_json())
        link = Session.get(Link, claims["jti"])
        if link is None:
            abort(404)
        if link.state != "issued":
            abort(409)
        link.state = "consumed"
        link.consumed_at = int(time.time())
        Session.commit()
        return jsonify({"subject": link.subject, "purpose": link.purpose, "jti": link.jti})

    return app


def premint(database_url: str, key_pem: bytes, n: int, ttl: int = 900) -> list[str]:
    """``n`` tokens recorded as issued, for first-use redemptions."""
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    private_key = serialization.load_pem_private_key(key_pem, None)
    now = int(time.time())
    out, rows = [], []
    for i in range(n):
        jti = secrets.token_urlsafe(16)
        rows.append({"jti": jti, "subject": f"pre-{i}", "purpose": "magic_link", "exp": now + ttl})
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
    with engine.begin() as conn:
        conn.execute(Link.__table__.insert(), rows)
    engine.dispose()
    return out


def _from_env() -> Flask | None:
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        return None
    return create_app(
        url, Path(os.environ["BENCH_KEY_FILE"]).read_bytes(), os.environ["BENCH_API_KEY"]
    )


app = _from_env()
