"""netstack-exporter: the process (CLI, HTTP server, scheduling, self-metrics)."""

__version__ = "0.1.0"
