"""`python -m exporter` and the `netstack-exporter` command.

Shutdown signals are made quiet exits before anything heavy is imported (asyncio, aiohttp and
the collectors take a while), so that a signal during start-up never prints a traceback.
exporter.main replaces these handlers with its clean-shutdown ones once it serves.
"""

import signal


def _stop_during_import(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def run() -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, _stop_during_import)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
