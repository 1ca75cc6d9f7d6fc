"""HTTP endpoints (served by exporter/http.py): metrics (text or OpenMetrics, optionally gzip), health, readiness, landing page."""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Awaitable, Callable

from . import __version__
from .http import Request, Response
from .scheduling import Scheduler
from .snapshot import CONTENT_TYPES, OPENMETRICS, TEXT
from .webconfig import LiveWebConfig

log = logging.getLogger("netstack.http")

TIMEOUT_MARGIN = 0.5  # seconds kept back from Prometheus' scrape timeout for encoding and transfer
# The shortest collection a scrape timeout header can ask for: a header of 0, -1 or 0.001 must not
# leave collectors no time at all.
TIMEOUT_FLOOR = 0.5
# Cheap pages that kubelet probes: neither counted against --web.max-requests nor behind basic auth
# (they tell "ok" or "ready", nothing else; kubelet cannot send credentials).
PROBE_PATHS = ("/healthz", "/readyz")


def negotiate_format(accept: str) -> str:
    """OpenMetrics when the client asks for it (Prometheus does), the 0.0.4 text format otherwise."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media != "application/openmetrics-text":
            continue
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            if float(q) > 0:
                return OPENMETRICS
        except ValueError:
            continue
    return TEXT


def _qualities(header: str) -> dict[str, float]:
    """{coding: q} of an Accept-Encoding header (lower case; a missing q is 1, a bad one 0)."""
    out = {}
    for part in header.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if not coding:
            continue
        q = 1.0
        for param in params:
            name, _, text = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(text)
                except ValueError:
                    q = 0.0
        out[coding.lower()] = q
    return out


def wants_gzip(accept_encoding: str) -> bool:
    """gzip when the client accepts it: named with q > 0, or not named and '*' has q > 0."""
    q = _qualities(accept_encoding)
    return q.get("gzip", q.get("*", 0.0)) > 0


def scrape_timeout(header: str | None) -> float | None:
    """The collection budget a X-Prometheus-Scrape-Timeout-Seconds header asks for: its value
    less the margin, never below TIMEOUT_FLOOR; None (the configured timeout) for a missing,
    unparsable, zero, negative or non-finite value."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return max(TIMEOUT_FLOOR, seconds - TIMEOUT_MARGIN)


class App:
    """The exporter's HTTP application: routing, --web.max-requests, basic auth and response
    headers from the web config, then the handlers. Called by exporter/http.py per request."""

    ALLOW = "GET, HEAD"

    def __init__(
        self,
        scheduler: Scheduler,
        telemetry_path: str,
        enabled: dict[str, bool],
        verdicts: Callable[[], list] = list,
        max_requests: int = 0,
        live: LiveWebConfig | None = None,
    ):
        """`verdicts` gives the field guide's verdicts over the recent collections for the landing
        page (objects with status, title, value, threshold, why, action)."""
        self.scheduler = scheduler
        self.telemetry_path = telemetry_path
        self.enabled = enabled
        self.verdicts = verdicts
        self.limit = RequestLimit(max_requests)
        self.live = live
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            telemetry_path: self.metrics,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/": self.landing,
        }

    async def __call__(self, request: Request) -> Response:
        if request.path in PROBE_PATHS:
            response = await self._route(request)
        else:
            response = await self.limit.run(request, self._authorized)
        if self.live is not None:
            response.headers.update(self.live.current.config.headers)
        return response

    async def _authorized(self, request: Request) -> Response:
        auth = self.live.current.auth if self.live is not None else None
        if (
            auth is not None
            and auth.enabled
            and not await auth.authorized(request.headers.get("authorization"))
        ):
            return Response("Unauthorized\n", status=401, headers={"WWW-Authenticate": "Basic"})
        return await self._route(request)

    async def _route(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return Response("404: Not Found", status=404)
        if request.method not in ("GET", "HEAD"):
            return Response("405: Method Not Allowed", status=405, headers={"Allow": self.ALLOW})
        return await handler(request)

    async def metrics(self, request: Request) -> Response:
        scheduler = self.scheduler
        header = request.headers.get("x-prometheus-scrape-timeout-seconds")
        snapshot = await scheduler.snapshot(scrape_timeout(header))
        fmt = negotiate_format(request.headers.get("accept", ""))
        compress = wants_gzip(request.headers.get("accept-encoding", ""))
        body = await snapshot.encoded(fmt, compress, scheduler.encoder)
        headers = {"Vary": "Accept, Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return Response(body, headers=headers, content_type=CONTENT_TYPES[fmt])

    async def healthz(self, request: Request) -> Response:
        return Response("ok\n")

    async def readyz(self, request: Request) -> Response:
        if self.scheduler.ready:
            return Response("ready\n")
        return Response("not ready: first collection has not completed\n", status=503)

    async def landing(self, request: Request) -> Response:
        return Response(await landing_page(self), content_type="text/html; charset=utf-8")


def _age(ts: float | None) -> str:
    return "never" if ts is None else f"{time.time() - ts:.0f}s ago"


async def landing_page(app: App) -> str:
    scheduler = app.scheduler
    path = app.telemetry_path
    rows = []
    for name, _enabled in app.enabled.items():
        runner = next((r for r in scheduler.runners if r.name == name), None)
        if runner is None:
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>no</td><td></td><td></td><td></td><td></td></tr>"
            )
            continue
        available = {None: "not probed yet", True: "yes", False: "no"}[runner.available]
        duration = "" if runner.last_duration is None else f"{runner.last_duration * 1000:.1f} ms"
        problem = runner.reason if runner.available is False else runner.last_error
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>yes</td><td>{available}</td><td>{duration}</td>"
            f"<td>{_age(runner.last_success_time)}</td><td>{html.escape(problem)}</td></tr>"
        )
    if time.monotonic() - scheduler.collected_at > LANDING_FRESHNESS:
        await scheduler.snapshot()  # a fresh reading, so the verdicts' rates reach up to now
    verdicts = _verdict_rows(app.verdicts())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>netstack-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left;vertical-align:top}}
tr:nth-child(even){{background:#f3f3f3}}.ok{{color:#1a7f37}}.warn{{color:#9a6700}}.fail{{color:#cf222e}}
.skip{{color:#6e7781}}.status{{font-weight:bold;text-transform:uppercase}}small{{color:#57606a}}</style></head>
<body><h1>netstack-exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(path)}">Metrics</a> &middot; <a href="/healthz">healthz</a> &middot;
<a href="/readyz">readyz</a> &middot; collections so far: {scheduler.collections}</p>
<h2>Verdicts</h2>
<p><small>The field guide's checks over the last minute of collections (the same as
<code>netstack-exporter check</code>).</small></p>
<table id="verdicts"><tr><th>status</th><th>check</th><th>measured</th><th>threshold</th><th>why / what to do</th></tr>
{verdicts}
</table>
<h2>Collectors</h2>
<table><tr><th>collector</th><th>enabled</th><th>available</th><th>last duration</th>
<th>last success</th><th>last error / why unavailable</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    return page


# The landing page collects only when the last collection is older than this: a person who keeps
# reloading / (or a client that hammers it) costs at most one collection per interval.
LANDING_FRESHNESS = 5.0


def _verdict_rows(verdicts: list) -> str:
    if not verdicts:
        return '<tr><td colspan="5">no collection yet</td></tr>'
    order = {"fail": 0, "warn": 1, "skip": 2, "ok": 3}  # the answer first
    rows = []
    for v in sorted(verdicts, key=lambda v: order.get(v.status, 9)):
        advice = (
            f"{html.escape(v.why)}<br><small>{html.escape(v.action)}</small>"
            if v.status in ("warn", "fail")
            else ""
        )
        rows.append(
            f'<tr class="verdict {v.status}"><td class="status {v.status}">{v.status}</td>'
            f"<td>{html.escape(v.title)}</td><td>{html.escape(v.value)}</td>"
            f"<td>{html.escape(v.threshold)}</td><td>{advice}</td></tr>"
        )
    return "\n".join(rows)


class RequestLimit:
    """--web.max-requests: requests served at the same time; past it 503 at once (0: no limit)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self.rejected = 0

    async def run(self, request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
        if not self.limit:
            return await handler(request)
        if self.active >= self.limit:
            self.rejected += 1
            return Response(
                f"too many requests at once (limit {self.limit})\n", status=503, headers={"Retry-After": "1"}
            )
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1
