"""Operational telemetry: Prometheus metrics (``metrics``), OpenTelemetry traces (``tracing``)
and their wiring into the app (``app``). docs/observability.md describes them."""
