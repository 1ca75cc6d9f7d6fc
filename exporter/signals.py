"""The signals a user may send to stop the exporter, and what they do before it serves.

Kept apart from exporter.main (and light) so that `python -m exporter` and the
`netstack-exporter` command install these before anything heavy is imported (asyncio, ssl and
the collectors take a while): a signal during start-up never prints a traceback. exporter.main
replaces the handlers with its clean-shutdown ones once it serves.
"""

import os
import signal

# Every signal a user may send to stop a daemon: each shuts down cleanly once the exporter serves
# (collectors closed, the fsync probe file removed). SIGHUP reloads instead.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _exit_now(signum: int, _frame) -> None:
    os._exit(128 + signum)


def _exit_cleanly(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def quiet_signals(cleanup: bool = False) -> None:
    """Until the event loop handles them: a shutdown signal is a quiet exit, SIGHUP is ignored
    (nothing to reload yet). The daemon ends at once (cleanup False): nothing it made before its
    event loop needs closing, and a SystemExit raised where Python ignores exceptions (a weakref
    callback of an import in progress) would be lost and the start-up go on. With cleanup (the
    check subcommand, whose probe file must go) the signal raises SystemExit instead."""
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, _exit_cleanly if cleanup else _exit_now)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
