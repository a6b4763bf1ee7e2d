"""The app in-process: its keys made ready, and a registered client application talking to
the API through Flask's test client (what the ``api`` fixtures hand a test)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from linksvc.clients import registry as clients_mod
from linksvc.config import PURPOSES
from linksvc.links import keys
from linksvc.services import services
from linksvc.store import db

REDIRECT = "http://127.0.0.1:5001/callback"


def _prepare(app: Flask) -> None:
    svc = services(app).links
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, int(time.time()))


@dataclass
class ApiUser:
    """A registered client application talking to the API through the test client."""

    http: FlaskClient
    client: clients_mod.Client
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def mint(self, purpose: str = "magic_link", subject: str = "user-42", **fields: Any) -> Any:
        return self.http.post(
            "/api/v1/links",
            json={"purpose": purpose, "subject": subject, **fields},
            headers=self.headers,
        )

    def minted(
        self, purpose: str = "magic_link", subject: str = "user-42", **fields: Any
    ) -> dict[str, Any]:
        resp = self.mint(purpose, subject, **fields)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()

    def redeem(self, token: Any, purpose: str = "magic_link") -> Any:
        return self.http.post(
            "/api/v1/links/redeem", json={"token": token, "purpose": purpose}, headers=self.headers
        )

    def verify(self, token: Any, purpose: str = "magic_link") -> Any:
        return self.http.post(
            "/api/v1/links/verify", json={"token": token, "purpose": purpose}, headers=self.headers
        )

    def status(self, jti: str) -> Any:
        return self.http.get(f"/api/v1/links/{jti}", headers=self.headers)


def make_api_user(app: Flask, name: str = "acme", **kwargs: Any) -> ApiUser:
    svc = services(app).links
    options: dict[str, Any] = {
        "purposes": list(PURPOSES),
        "redirect_uris": [REDIRECT],
        "display_name": "Acme",
        "mint_limit": "100000 per minute",
        "subject_limit": "100000 per minute",
    }
    options.update(kwargs)
    with db.write(svc.engine) as conn:
        record, key = clients_mod.create(conn, name, now=int(time.time()), **options)
    return ApiUser(app.test_client(), record, key)
