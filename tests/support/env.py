"""The ground every test helper stands on: the repository's root, CI's rules for skipping,
free ports, fresh secrets, a hermetic instance's settings and the real ``flask`` CLI."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, why: str) -> None:
    """Skip a test whose real dependency is absent — except in CI, where that is a failure."""
    message = f"{what} is not available ({why})"
    if IN_CI:
        pytest.fail(f"{message}; in CI every real dependency must be present", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_b64() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def base_env(instance: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """LINKSVC_* settings for a hermetic instance in ``instance``."""
    env = {
        "LINKSVC_ENV": "test",
        "LINKSVC_INSTANCE_PATH": str(instance),
        "LINKSVC_DATABASE_URL": database_url or f"sqlite:///{instance / 'linksvc.db'}",
        "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64(),
        "LINKSVC_SECRET_KEY": secret_b64(),
    }
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def flask_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full = {**_clean_environ(), **env}
    return subprocess.run(
        [venv_bin("flask"), "--app", "app", *args],
        cwd=ROOT,
        env=full,
        text=True,
        capture_output=True,
        check=check,
        timeout=120,
    )


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
