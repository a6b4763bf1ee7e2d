"""What an operator sees: the health and readiness endpoints (``health``), Prometheus
metrics (``metrics``), tracing hooks and their OpenTelemetry exporter (``tracing``,
``otel``), the access log (``accesslog``) and the structured JSON log lines with their
redaction (``logs``). It observes the other packages and changes none of their behaviour.
"""
