"""Tracing switch: OpenTelemetry is imported only when the ``OTEL_*`` environment asks for it.

Off by default. ``OTEL_TRACES_EXPORTER=otlp`` (OTLP over HTTP/protobuf, to
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) or ``console``
switches it on, unless ``OTEL_SDK_DISABLED=true``; the SDK itself reads the sampler
(``OTEL_TRACES_SAMPLER``/``_ARG``), the resource (``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SERVICE_NAME``) and the batch processor's settings. With tracing off nothing of
OpenTelemetry is imported and no hook is installed: the request path runs the same code as
without this module. docs/tracing.md says what is traced and what never is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from linksvc.config import ConfigError, environment

#: What an incoming ``traceparent`` header does (``LINKSVC_TRACEPARENT``): ``link`` (the
#: default) starts a trace of linksvc's own and links it to the caller's, so that nobody on
#: the internet chooses a trace id or switches sampling off for their own requests;
#: ``continue`` makes the request a child of it (behind a proxy that sets or strips the
#: header); ``ignore`` drops it.
TRACEPARENT_MODES = ("link", "continue", "ignore")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment switches tracing on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = {n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return bool(names - {"", "none"})


def init_app(app: Flask, environ: Mapping[str, str] | None = None) -> None:
    """Switch tracing on for ``app`` when the environment asks for it (at start-up only)."""
    # The OTEL_* variables as they are; LINKSVC_TRACEPARENT also from the LINKSVC_CONFIG file.
    env = environment(os.environ if environ is None else environ)
    if not wanted(env):
        return
    names = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    if names - {"otlp", "console"}:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER",
            "linksvc exports traces with 'otlp' (HTTP/protobuf) or 'console';"
            " 'none' switches tracing off",
        )
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if env.get(var, "http/protobuf") != "http/protobuf":
            raise ConfigError(var, "linksvc exports OTLP over 'http/protobuf' only")
    mode = env.get("LINKSVC_TRACEPARENT", "link").strip().lower()
    if mode not in TRACEPARENT_MODES:
        raise ConfigError("LINKSVC_TRACEPARENT", f"one of {', '.join(TRACEPARENT_MODES)}")
    from linksvc.ops import otel  # imports opentelemetry

    otel.install(app, exporters=names, traceparent=mode)
