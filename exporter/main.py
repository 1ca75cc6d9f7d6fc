"""Entry point: parse flags, build collectors, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from collectors import available_collectors

from . import __version__, logs
from .check import VerdictHistory
from .check import main as check_main
from .cli import PROG, load_config
from .contract import Context, Paths
from .listener import Listener, LoopErrorLog, connection_cap, raise_open_file_limit
from .logs import log_event
from .scheduling import CollectorRunner, Scheduler
from .selfmetrics import SelfMetrics
from .server import App
from .signals import SHUTDOWN_SIGNALS, quiet_signals
from .webconfig import LiveWebConfig, WebConfigError

log = logging.getLogger("netstack.exporter")


async def serve(config, runners: list[CollectorRunner], live: LiveWebConfig | None) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(LoopErrorLog(loop))
    self_metrics = SelfMetrics()
    scheduler = Scheduler(runners, self_metrics.families, config.scrape_timeout)
    limits = config.web
    history = VerdictHistory(runners)
    scheduler.listeners.append(history.add)
    app = App(
        scheduler,
        config.telemetry_path,
        config.enabled,
        verdicts=history.verdicts,
        max_requests=limits.max_requests,
        live=live,
    )
    open_files = raise_open_file_limit()
    listener = Listener(
        app,
        max_connections=connection_cap(limits.max_connections, open_files),
        idle_timeout=limits.idle_timeout,
        read_header_timeout=limits.read_header_timeout,
        live=live,
    )
    address = f"{config.listen_host or ''}:{config.listen_port}"
    if config.listen_host and ":" in config.listen_host:
        address = f"[{config.listen_host}]:{config.listen_port}"
    try:
        await listener.start(config.listen_host, config.listen_port)
    except OSError as e:
        log_event(log, logging.ERROR, "cannot listen", address=address, error=e.strerror or str(e))
        return 1
    # Everything allocated so far (modules, the collectors, the server) lives as long as the
    # process: keep it out of the garbage collector's full passes, which otherwise walk it
    # again after every few large collections.
    gc.freeze()
    log_event(
        log,
        logging.INFO,
        "listening",
        address=address,
        path=config.telemetry_path,
        version=__version__,
        tls=bool(live and live.tls),
        basic_auth=bool(live and live.current.auth.enabled),
        max_connections=listener.cap,
        max_requests=limits.max_requests,
        collectors=",".join(r.name for r in runners),
    )

    stop = asyncio.Event()

    def shut_down(sig: signal.Signals) -> None:
        log_event(log, logging.INFO, "signal received, shutting down", signal=sig.name)
        stop.set()

    for sig in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, shut_down, sig)
    background: list[asyncio.Future] = []
    if live is not None:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: background.append(asyncio.ensure_future(live.reload_async("SIGHUP")))
        )
        background.append(asyncio.ensure_future(live.watch()))
    else:
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log_event(
                log, logging.INFO, "SIGHUP: nothing to reload (only --web.config.file is reloadable)"
            ),
        )
    # Warm up: probe and collect once now, so /readyz turns ready without waiting for a scrape.
    background.append(asyncio.ensure_future(scheduler.snapshot()))
    await stop.wait()
    log_event(log, logging.INFO, "shutting down")
    for task in background:
        task.cancel()
    await listener.close()
    await asyncio.to_thread(scheduler.close, 0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    # From the first instruction on, so that a signal while starting up is a quiet exit, not a
    # traceback or a default action (SIGQUIT dumps core, SIGHUP and SIGUSR1 kill silently).
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:  # the field guide's verdicts for this node (exporter/check.py)
        quiet_signals(cleanup=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # check handles Ctrl-C itself
        return check_main(argv[1:])
    quiet_signals()  # again: main() may be called without exporter/__main__.py
    classes = available_collectors()
    config = load_config(argv, os.environ, classes)
    logs.setup(config.log_level, config.log_format)
    live = None
    if config.web.config_file:
        try:
            live = LiveWebConfig(config.web.config_file)
        except WebConfigError as e:
            print(f"{PROG}: error: --web.config.file: {e}", file=sys.stderr)
            return 2
    paths = Paths(procfs=config.procfs, sysfs=config.sysfs)
    runners = [
        CollectorRunner(cls(Context(paths=paths, options=config.collector_options[cls.name])))
        for cls in classes
        if config.enabled[cls.name]
    ]
    return asyncio.run(serve(config, runners, live))
