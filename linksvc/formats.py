"""Formats shared by the API, the tokens, the webhooks and the CLI: the one way times are
written (ISO 8601, UTC, whole seconds) and the one strict JSON decoder. Knows nothing of Flask."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any


@functools.lru_cache(maxsize=4096)
def iso_time(ts: int) -> str:
    """Epoch seconds as ISO 8601, UTC, whole seconds: ``2026-01-02T03:04:05Z``."""
    # Every answer names its iat and exp, and within a second they repeat: strftime once.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso(ts: int | None) -> str | None:
    """:func:`iso_time`, or ``None`` for no time."""
    return None if ts is None else iso_time(ts)


def _duplicate(key: str) -> Exception:
    return ValueError(f"duplicate member {key!r}")


def _constant(name: str) -> Exception:
    return ValueError(f"{name} is not JSON")


def strict_json_decoder(
    duplicate: Callable[[str], Exception] = _duplicate,
    constant: Callable[[str], Exception] = _constant,
) -> json.JSONDecoder:
    """A decoder that refuses what ``json.loads`` lets through: a member named twice (raises
    ``duplicate(key)``) and ``NaN``/``Infinity`` (raises ``constant(name)``). Build it once:
    ``json.loads`` with hooks builds a new decoder (and its scanner) per call."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise duplicate(key)
            obj[key] = value
        return obj

    def reject_constant(name: str) -> Any:
        raise constant(name)

    return json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=reject_constant)
