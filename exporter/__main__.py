"""`python -m exporter` and the `netstack-exporter` command: the shutdown signals are made quiet
exits first (exporter.signals), then the exporter is imported and run."""

from .signals import quiet_signals


def run() -> int:
    quiet_signals()
    from .main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
