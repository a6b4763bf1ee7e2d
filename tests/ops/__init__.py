"""Tests of linksvc.ops: metrics, Prometheus, tracing and logs."""
