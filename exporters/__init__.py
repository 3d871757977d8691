"""Exporters: the Prometheus exposition and OTLP traces."""
