"""Entry point: parse flags, build collectors, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from aiohttp import web

from collectors import available_collectors
from . import __version__, logs
from .cli import load_config
from .contract import Context, Paths
from .logs import log_event
from .scheduling import CollectorRunner, Scheduler
from .selfmetrics import SelfMetrics
from .server import build_app

log = logging.getLogger("netstack.exporter")


async def serve(config, runners: list[CollectorRunner]) -> int:
    self_metrics = SelfMetrics()
    scheduler = Scheduler(runners, self_metrics.families, config.scrape_timeout)
    app = build_app(scheduler, config.telemetry_path, config.enabled)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_host, config.listen_port, shutdown_timeout=0.5)
    try:
        await site.start()
    except OSError as e:
        log_event(log, logging.ERROR, "cannot listen", address=f"{config.listen_host or ''}:{config.listen_port}",
                  error=e.strerror or str(e))
        await runner.cleanup()
        return 1
    log_event(log, logging.INFO, "listening", address=f"{config.listen_host or ''}:{config.listen_port}",
              path=config.telemetry_path, version=__version__,
              collectors=",".join(r.name for r in runners))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Warm up: probe and collect once now, so /readyz turns ready without waiting for a scrape.
    warmup = asyncio.ensure_future(scheduler.snapshot())
    await stop.wait()
    log_event(log, logging.INFO, "shutting down")
    warmup.cancel()
    await asyncio.to_thread(scheduler.close, 0.5)
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    classes = available_collectors()
    config = load_config(sys.argv[1:] if argv is None else argv, os.environ, classes)
    logs.setup(config.log_level, config.log_format)
    paths = Paths(procfs=config.procfs, sysfs=config.sysfs)
    runners = [CollectorRunner(cls(Context(paths=paths, options=config.collector_options[cls.name])))
               for cls in classes if config.enabled[cls.name]]
    # Everything allocated so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise walk it again after every few large collections.
    gc.freeze()
    return asyncio.run(serve(config, runners))
