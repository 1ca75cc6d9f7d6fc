"""HTTP/1.1 on asyncio's own transports: what a scrape target needs, nothing more.

- GET and HEAD style requests without bodies: a request with Content-Length > 0 or any
  Transfer-Encoding is answered 400 and the connection closed (its framing is not followed, so
  the connection cannot be trusted with another request).
- Keep-alive: HTTP/1.1 unless "Connection: close", HTTP/1.0 only with "Connection: keep-alive".
- Pipelined requests are answered one at a time, in order: the next one is parsed only when
  the previous answer has been handed to the transport.
- The request head (request line and headers) is at most MAX_HEAD bytes and MAX_HEADERS lines:
  431 past that, 400 for anything malformed; both close the connection after one debug log line
  with the reason (a client's mistake is not our error).
- Flow control: while the transport's write buffer is above its high-water mark (a client that
  does not read its answers), no further request is answered; while more than MAX_PENDING bytes
  of requests wait, reading stops. A connection stays bounded to one answer plus MAX_PENDING
  bytes, and the listener closes it when it stays blocked (exporter/listener.py).

The application is one coroutine function: Request -> Response (exporter/server.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from .logs import log_event

log = logging.getLogger("netstack.http")

MAX_HEAD = 8192  # bytes of request line + headers: Prometheus sends about 300
MAX_HEADERS = 100
MAX_PENDING = 65536  # bytes of received, not yet answered requests before reading stops
# An answer larger than this is written a slice at a time as the client reads it, so that the
# transport never holds a copy of it (asyncio buffers what a send() did not take).
WRITE_SLICE = 65536
SERVER = "netstack-exporter"  # no Python or library versions: they help only an attacker

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than tab
_VERSION = re.compile(rb"HTTP/\d\.\d")
_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # a TLS ClientHello starts with 0x16


@dataclass(eq=False)
class Connection:
    """One accepted connection, as the listener tracks it (timeouts, cap, eviction)."""

    transport: asyncio.Transport  # the TCP transport: abort() works before, during and after TLS
    accepted: float
    idle_since: float
    header_started: float | None = None  # first byte of a request not yet being served
    active: int = 0  # requests being served (0 or 1: pipelined requests wait their turn)
    served: int = 0
    write_blocked_since: float | None = None  # our write buffer is full and has not shrunk since
    write_left: int = 0  # bytes in that buffer when last looked at
    stream: asyncio.Transport | None = None  # what the HTTP protocol writes to (TLS or TCP)
    handshake: asyncio.Task | None = None  # the TLS handshake in progress (a reference keeps it alive)


class Request:
    __slots__ = ("headers", "method", "path", "peer", "target", "version")

    def __init__(self, method: str, target: str, path: str, version: str, headers: dict[str, str], peer: str):
        self.method = method
        self.target = target
        self.path = path  # without the query, percent-decoded
        self.version = version  # "HTTP/1.1" or "HTTP/1.0"
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        self.peer = peer


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str | tuple[bytes, ...] = b"",
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ):
        """body: bytes, text, or pieces of bytes sent one after another (a large exposition,
        never joined into a copy)."""
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = {"Content-Type": content_type}
        if headers:
            self.headers.update(headers)


App = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_head(head: bytes, peer: str = "") -> Request:
    """A request head (without its final blank line) -> Request; BadRequest says why not."""
    lines = head.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        raise BadRequest(431, f"more than {MAX_HEADERS} header lines")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest(400, f"invalid request line {lines[0][:100]!r}")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _VERSION.fullmatch(version):
            raise BadRequest(505, f"HTTP version {version.decode()} not supported")
        raise BadRequest(400, f"invalid request line {lines[0][:100]!r}")
    if _BAD_VALUE.search(target) or b" " in target:
        raise BadRequest(400, "control characters in the request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):  # also folded lines, which start with a space
            raise BadRequest(400, f"invalid header line {line[:100]!r}")
        if _BAD_VALUE.search(value):
            raise BadRequest(400, f"control characters in header {name.decode()}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    text_target = target.decode("latin-1")
    path = text_target
    if path.startswith(("http://", "https://")):  # absolute form: a proxy's request
        slash = path.find("/", path.index("//") + 2)
        path = path[slash:] if slash >= 0 else "/"
    elif not path.startswith("/"):
        if path == "*":  # OPTIONS *: answered 405 by an application with GET and HEAD only
            path = "*"
        else:
            raise BadRequest(400, f"invalid request target {text_target[:100]!r}")
    path = path.partition("?")[0].partition("#")[0]
    if "%" in path:
        from urllib.parse import unquote

        path = unquote(path, errors="replace")
    return Request(method.decode("ascii"), text_target, path, version.decode("ascii"), headers, peer)


def has_body(headers: dict[str, str]) -> bool:
    """Whether the request carries a body; BadRequest for an unreadable Content-Length."""
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length")
    if length is None:
        return False
    if not (length.isascii() and length.isdigit()):  # also two different lengths: "5, 6"
        raise BadRequest(400, f"invalid Content-Length {length[:50]!r}")
    return length.strip("0") != ""  # not int(): thousands of digits raise ValueError


def keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


_date: tuple[int, str] = (-1, "")


def http_date(now: float) -> str:
    """The Date header (RFC 9110 IMF-fixdate), formatted once a second."""
    global _date
    second = int(now)
    if _date[0] != second:
        _date = (second, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)))
    return _date[1]


def _slices(pieces: Iterable[bytes]) -> Iterator[memoryview]:
    for piece in pieces:
        view = memoryview(piece)
        for at in range(0, len(view), WRITE_SLICE):
            yield view[at : at + WRITE_SLICE]


class HTTPProtocol(asyncio.Protocol):
    """One connection's HTTP/1.x. `forget` is called once when the connection is gone."""

    def __init__(self, app: App, conn: Connection, forget: Callable[[Connection], None]):
        self.app = app
        self.conn = conn
        self.forget = forget
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for the end of the head
        self._busy = False  # a request is being served
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._closing = False
        self._tls = False
        self._task: asyncio.Task | None = None  # the request being served (a reference keeps it alive)
        self._unsent: Iterator[memoryview] | None = None  # the rest of the answer being written
        self._close_after = False  # close once it is written

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.stream = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        self._tls = transport.get_extra_info("sslcontext") is not None
        if self._buffer:  # bytes that came before (none today; kept correct for a hand-over)
            self._process()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        conn = self.conn
        if not self._busy and conn.header_started is None:
            conn.header_started = time.monotonic()
        self._buffer += data
        if len(self._buffer) > MAX_PENDING and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._process()

    def eof_received(self) -> bool:
        self._eof = True
        self._process()  # answers what was complete, then closes
        return not self._tls  # asyncio's TLS transport closes on EOF whatever we return (and warns)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        self._buffer.clear()
        self._unsent = None
        self.forget(self.conn)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.conn.write_blocked_since = time.monotonic()
        self.conn.write_left = self.transport.get_write_buffer_size() if self.transport else 0

    def resume_writing(self) -> None:
        self._write_paused = False
        self.conn.write_blocked_since = None
        self._send()
        self._process()

    # -- requests --

    def _process(self) -> None:
        """Start serving the next complete request, if any and if it is its turn."""
        if (
            self._busy
            or self._write_paused
            or self._unsent is not None
            or self._closing
            or self.transport is None
        ):
            return
        buf = self._buffer
        while buf[:2] == b"\r\n":  # empty lines before a request line are ignored (RFC 9112 2.2)
            del buf[:2]
        if not buf:
            self._scanned = 0
            if self._eof:
                self._close()
            return
        if buf[0] not in _METHOD_START:
            self._reject(400, "not an HTTP request (TLS to the plain HTTP port?)")
            return
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD + 4)
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > MAX_HEAD:
                self._reject(431, f"request head over {MAX_HEAD} bytes")
            elif self._eof:
                self._close()
            return
        head = bytes(buf[:end])
        del buf[: end + 4]
        self._scanned = 0
        if self._read_paused and len(buf) <= MAX_PENDING:
            self._read_paused = False
            self.transport.resume_reading()
        try:
            request = parse_head(head, self.peer)
            if has_body(request.headers):
                raise BadRequest(400, "request bodies are not accepted")
        except BadRequest as e:
            self._reject(e.status, e.reason)
            return
        self._busy = True
        self.conn.active += 1
        self.conn.header_started = None
        self._task = asyncio.ensure_future(self._serve(request))

    async def _serve(self, request: Request) -> None:
        keep = keep_alive(request)
        try:
            response = await self.app(request)
        except Exception as e:
            log_event(log, logging.ERROR, "error handling request", path=request.path, error=repr(e))
            log.debug("request handler traceback", exc_info=True)
            response = Response("500: Internal Server Error\n", status=500)
            keep = False
        finally:
            conn = self.conn
            conn.active -= 1
            conn.served += 1
            conn.idle_since = time.monotonic()
            self._busy = False
            self._task = None
        self._write(request, response, keep)
        if self._buffer and not self._closing:
            conn.header_started = time.monotonic()  # the next pipelined request's head clock
        self._process()

    def _write(self, request: Request, response: Response, keep: bool) -> None:
        transport = self.transport
        if transport is None or self._closing or transport.is_closing():
            return
        status = response.status
        body = response.body
        pieces = body if isinstance(body, tuple) else (body,)
        length = sum(map(len, pieces))
        lines = [
            f"{request.version} {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Server: {SERVER}\r\nDate: {http_date(time.time())}\r\nContent-Length: {length}\r\n"
        ]
        lines += [f"{name}: {value}\r\n" for name, value in response.headers.items()]
        if not keep:
            lines.append("Connection: close\r\n")
        elif request.version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode()
        if request.method == "HEAD" or not length:
            transport.write(head)
        elif length < WRITE_SLICE:  # one send() for a typical answer
            transport.write(b"".join((head, *pieces)))
        else:
            transport.write(head)
            self._unsent = _slices(pieces)
            self._send()
            if self._unsent is not None:  # the rest as the client reads
                self._close_after = not keep
                return
        if not keep:
            self._close()

    def _send(self) -> None:
        """Write the current answer's slices while the transport takes them (it buffers at
        most about a slice beyond its high-water mark); the rest when it resumes writing."""
        unsent = self._unsent
        transport = self.transport
        while unsent is not None and not self._write_paused:
            if transport is None or self._closing or transport.is_closing():
                self._unsent = None
                return
            piece = next(unsent, None)
            if piece is None:
                self._unsent = None
                if self._close_after:
                    self._close()
                return
            transport.write(piece)

    def _reject(self, status: int, reason: str) -> None:
        """Answer a request we cannot parse, then close: its framing cannot be trusted."""
        if log.isEnabledFor(logging.DEBUG):
            log_event(
                log,
                logging.DEBUG,
                "malformed HTTP request",
                peer=self.peer,
                status=status,
                reason=reason[:200],
            )
        self._buffer.clear()
        body = f"{status}: {REASONS[status]}\n".encode()  # the reason is logged, not echoed
        head = (
            f"HTTP/1.0 {status} {REASONS[status]}\r\nServer: {SERVER}\r\nDate: {http_date(time.time())}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head.encode() + body)
        self._close()

    def _close(self) -> None:
        """Close after what was written is sent (abort() is the listener's, for timeouts)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()
