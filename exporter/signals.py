"""The signals a user may send to stop the exporter, and what they do before it serves.

Kept apart from exporter.main (and light: signal only) so that `python -m exporter` and the
`netstack-exporter` command install these before anything heavy is imported (asyncio, ssl and
the collectors take a while): a signal during start-up never prints a traceback. exporter.main
replaces the handlers with its clean-shutdown ones once it serves.
"""

import signal

# Every signal a user may send to stop a daemon: each shuts down cleanly once the exporter serves
# (collectors closed, the fsync probe file removed). SIGHUP reloads instead.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _exit_quietly(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def quiet_signals() -> None:
    """Until the event loop handles them: a shutdown signal is a quiet exit (nothing runs yet
    that needs closing), SIGHUP is ignored (nothing to reload yet)."""
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, _exit_quietly)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
