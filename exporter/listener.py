"""The listening sockets: TLS handshakes, a cap on open connections, idle and header timeouts,
and event-loop errors (EMFILE from accept) logged at most once a second with a count.

Every accepted TCP connection is registered before anything else happens on it, with its raw
transport, so it can be closed at any stage: during the TLS handshake, while its request headers
trickle in, or idle between requests. When the cap is reached, the oldest connection that is not
serving a request is closed (one that never completed a request first): a flood of idle or
slowloris connections then costs the flooder its own connections, never a scrape its answer, and
the process stays below its open-file limit, so accept() keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import struct
import time

from .http import App, Connection, HTTPProtocol
from .logs import log_event
from .webconfig import LiveWebConfig, peer_sans

log = logging.getLogger("netstack.web")

RESERVED_FDS = 256  # kept free for collectors, accept bursts (backlog) and the fds being closed
BACKLOG = 128
SWEEP_INTERVAL = 0.5
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, drops unsent data


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do at start); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(requested: int, open_file_limit: int) -> int:
    """--web.max-connections, or (0) the open-file limit less the reserve; never above that."""
    room = max(16, open_file_limit - RESERVED_FDS)
    return room if requested <= 0 else min(requested, room)


class _Accepted(asyncio.Protocol):
    """The first protocol of every connection: registers it, then hands it on."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the first bytes (a TLS ClientHello) are for the next protocol
        self.conn = self.listener.accepted(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.conn is not None:
            self.listener.forget(self.conn)


class Listener:
    def __init__(
        self,
        app: App,
        *,
        max_connections: int,
        idle_timeout: float,
        read_header_timeout: float,
        live: LiveWebConfig | None = None,
    ):
        self.app = app
        self.cap = max_connections
        self.idle_timeout = idle_timeout
        self.read_header_timeout = read_header_timeout
        self.live = live
        self.conns: dict[Connection, None] = {}  # insertion order = accept order
        self.evicted = 0
        self.timed_out = 0
        self.handshake_failures = 0
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str | None, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        server = await self._loop.create_server(
            lambda: _Accepted(self), host, port, backlog=BACKLOG, reuse_address=True
        )
        self._servers.append(server)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    @property
    def addresses(self) -> list[tuple]:
        return [s.getsockname() for srv in self._servers for s in srv.sockets]

    # -- connection life --

    def accepted(self, transport: asyncio.Transport) -> Connection:
        now = time.monotonic()
        conn = Connection(transport, now, now)
        self.conns[conn] = None
        if len(self.conns) > self.cap:
            self._evict(conn)
            if conn not in self.conns:
                return conn
        context = self.live.ssl_context if self.live is not None else None
        if context is not None:
            conn.handshake = asyncio.ensure_future(self._start_tls(conn, context))
        else:
            handler = self._handler(conn)
            transport.set_protocol(handler)
            handler.connection_made(transport)
            transport.resume_reading()
        return conn

    def _handler(self, conn: Connection) -> HTTPProtocol:
        return HTTPProtocol(self.app, conn, self.forget)

    async def _start_tls(self, conn: Connection, context: ssl.SSLContext) -> None:
        handler = self._handler(conn)
        assert self._loop is not None
        try:
            tls = await self._loop.start_tls(
                conn.transport,
                handler,
                context,
                server_side=True,
                ssl_handshake_timeout=self.read_header_timeout + 1,
            )
        except (TimeoutError, OSError, ConnectionError) as e:
            # plain HTTP to the TLS port, no or a wrong client certificate, a port scanner
            self.handshake_failures += 1
            log_event(log, logging.DEBUG, "TLS handshake failed", error=str(e))
            conn.transport.abort()
            self.forget(conn)
            return
        finally:
            conn.handshake = None
        assert tls is not None
        if conn not in self.conns:  # evicted or timed out while the handshake finished
            tls.abort()
            return
        allowed = (
            self.live.current.config.tls.client_allowed_sans
            if (self.live is not None and self.live.current.config.tls)
            else ()
        )
        if allowed and not peer_sans(tls.get_extra_info("peercert")) & set(allowed):
            self.handshake_failures += 1
            log_event(log, logging.DEBUG, "TLS client refused", reason="no SAN of client_allowed_sans")
            tls.abort()
            self.forget(conn)
            return
        handler.connection_made(tls)

    def forget(self, conn: Connection) -> None:
        self.conns.pop(conn, None)

    def _close(self, conn: Connection) -> None:
        """Reset the connection: after a plain close() the kernel would go on holding (and
        trickling) up to megabytes of unsent answer for a client that does not read."""
        self.forget(conn)
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        conn.transport.abort()

    def _evict(self, newcomer: Connection) -> None:
        """Close the oldest connection that serves nothing, preferring one that never
        completed a request; the newcomer itself if every other one is busy."""
        fallback = None
        for conn in self.conns:
            if conn is newcomer or conn.active:
                continue
            if conn.served == 0:
                fallback = conn
                break
            if fallback is None:
                fallback = conn
        self.evicted += 1
        self._close(fallback or newcomer)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Close connections past the header timeout (handshake and headers; from accept for the
        first request, from the first byte for later ones), the idle timeout, or whose client
        has read nothing of our answer for the header timeout (a full write buffer that has not
        shrunk since the last sweep)."""
        expired = []
        for conn in self.conns:
            if conn.active:
                continue
            if conn.write_blocked_since is not None:
                left = conn.stream.get_write_buffer_size() if conn.stream is not None else 0
                if left < conn.write_left:  # a slow reader, not a stalled one
                    conn.write_left, conn.write_blocked_since = left, now
                late = now - conn.write_blocked_since > self.read_header_timeout
            elif conn.header_started is not None:
                late = now - conn.header_started > self.read_header_timeout
            elif conn.served == 0:
                late = now - conn.accepted > self.read_header_timeout
            else:
                late = now - conn.idle_since > self.idle_timeout
            if late:
                expired.append(conn)
        for conn in expired:
            self.timed_out += 1
            self._close(conn)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.conns):
            if not conn.active:
                self._close(conn)


class LoopErrorLog:
    """Event-loop exception handler: the same message at most once a second, with how many
    times it happened (accept() failing with EMFILE can happen thousands of times a second)."""

    INTERVAL = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pending: dict[str, list] = {}  # message -> [count since the last line, context]
        self._last: dict[str, float] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        message = context.get("message") or "event loop error"
        now = time.monotonic()
        if now - self._last.get(message, -self.INTERVAL) >= self.INTERVAL:
            self._last[message] = now
            self._emit(message, 1, context)
            return
        pending = self._pending.get(message)
        if pending is None:
            self._pending[message] = [1, context]
            self.loop.call_later(self.INTERVAL - (now - self._last[message]), self._flush, message)
        else:
            pending[0] += 1
            pending[1] = context

    def _flush(self, message: str) -> None:
        count, context = self._pending.pop(message)
        self._last[message] = time.monotonic()
        self._emit(message, count, context)

    @staticmethod
    def _emit(message: str, count: int, context: dict) -> None:
        exc = context.get("exception")
        error = (getattr(exc, "strerror", None) or repr(exc)) if exc is not None else ""
        log_event(log, logging.ERROR, message, error=error, count=count)
