"""exporter/http.py over real sockets on 127.0.0.1: the listener and protocol run on an event
loop in a thread, the client is a plain socket, so every byte on the wire is the test's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

import pytest

from exporter.http import MAX_HEAD, Request, Response, parse_head
from exporter.listener import Listener
from exporter.server import App


@contextlib.contextmanager
def serving(app, *, read_header_timeout: float = 5.0, idle_timeout: float = 5.0, cap: int = 100):
    """A Listener on 127.0.0.1 serving `app` on its own loop in a thread; yields (port, listener)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    listener = Listener(
        app, max_connections=cap, idle_timeout=idle_timeout, read_header_timeout=read_header_timeout
    )

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(listener.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield listener.addresses[0][1], listener
    finally:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_response(s: socket.socket, buffered: bytearray, head_only: bool = False) -> tuple[int, dict, bytes]:
    """One response from `s` (bytes past it stay in `buffered`): (status, headers, body)."""
    while b"\r\n\r\n" not in buffered:
        chunk = s.recv(65536)
        assert chunk, f"closed before a full response head: {bytes(buffered)!r}"
        buffered += chunk
    end = buffered.index(b"\r\n\r\n")
    lines = bytes(buffered[:end]).decode().split("\r\n")
    del buffered[: end + 4]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    length = 0 if head_only else int(headers["content-length"])
    while len(buffered) < length:
        chunk = s.recv(65536)
        assert chunk, "closed inside a body"
        buffered += chunk
    body = bytes(buffered[:length])
    del buffered[:length]
    return int(lines[0].split()[1]), {"_version": lines[0].split()[0], **headers}, body


def closed(s: socket.socket, within: float = 5) -> bool:
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


async def echo(request: Request) -> Response:
    """The path and the method back; '/slow' takes 0.3 s, '/big' is 4 MB."""
    if request.path == "/slow":
        await asyncio.sleep(0.3)
    if request.path == "/big":
        return Response(b"x" * 4_000_000)
    if request.path == "/pieces":
        return Response(PIECES)
    if request.path == "/boom":
        raise KeyError("bug")
    return Response(f"{request.method} {request.path} {request.headers.get('x-n', '')}")


# An exposition as the snapshot gives it: pieces of every size, some larger than a write slice.
PIECES = tuple(bytes([65 + i % 26]) * (i * 37_001 % 300_000) for i in range(40)) + (b"end\n",)


def test_an_answer_in_pieces_is_written_whole_and_in_order():
    """Pieces are sent a slice at a time as the client reads (the transport never holds a copy
    of the answer): the body is their concatenation, HEAD gives its length, a pipelined request
    is answered after it, and Connection: close closes only once all of it is written."""
    whole = b"".join(PIECES)
    with serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # the answer waits for us
        s.sendall(b"GET /pieces HTTP/1.1\r\n\r\nHEAD /pieces HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert status == 200 and int(headers["content-length"]) == len(whole) and body == whole
        assert read_response(s, buf, head_only=True)[1]["content-length"] == str(len(whole))
        assert read_response(s, buf)[2] == b"GET /a "
        s.sendall(b"GET /pieces HTTP/1.1\r\nConnection: close\r\n\r\n")
        time.sleep(0.2)  # the server has written what the buffers take, and waits
        assert read_response(s, buf)[2] == whole and closed(s)


def test_keep_alive_head_and_http_1_0():
    with serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        s.sendall(b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert (status, body) == (200, b"GET /a ")
        assert headers["server"] == "netstack-exporter" and "date" in headers
        assert headers["content-type"] == "text/plain; charset=utf-8"
        s.sendall(b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection
        status, headers, _ = read_response(s, buf, head_only=True)
        assert status == 200 and headers["content-length"] == str(len(b"HEAD /b "))
        s.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[2] == b"GET /c "  # nothing of a HEAD body came before it
        s.sendall(b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert headers["connection"] == "close" and closed(s)

        s, buf = connect(port), bytearray()
        s.sendall(b"GET /e HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert headers["_version"] == "HTTP/1.0" and body == b"GET /e " and closed(s)
        s, buf = connect(port), bytearray()
        s.sendall(b"GET /f HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        assert read_response(s, buf)[1]["connection"] == "keep-alive"
        s.sendall(b"GET /g HTTP/1.0\r\n\r\n")
        assert read_response(s, buf)[2] == b"GET /g " and closed(s)


def test_pipelined_requests_are_answered_in_order():
    with serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        # the first is the slowest: served concurrently, its answer would come last
        s.sendall(
            b"".join(
                f"GET /{p} HTTP/1.1\r\nX-N: {i}\r\n\r\n".encode() for i, p in enumerate(["slow", "a", "b"])
            )
        )
        bodies = [read_response(s, buf)[2] for _ in range(3)]
        assert bodies == [b"GET /slow 0", b"GET /a 1", b"GET /b 2"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 100), 431),  # never finished
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),  # int() refuses it
        (b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", 400),  # no bodies
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / FTP/1.0\r\n\r\n", 400),
        (b"GET relative HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS to the plain port: at once
    ],
)
def test_malformed_requests_are_answered_and_closed(request_bytes, status):
    with serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        s.sendall(request_bytes)
        got, headers, _ = read_response(s, buf)
        assert (got, headers["_version"], headers["connection"]) == (status, "HTTP/1.0", "close")
        assert closed(s)
        s, buf = connect(port), bytearray()  # and the server goes on
        s.sendall(b"GET /ok HTTP/1.1\r\n\r\n")
        assert read_response(s, buf)[0] == 200


def test_a_zero_content_length_and_leading_empty_lines_are_fine():
    with serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        s.sendall(b"\r\nGET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert read_response(s, buf)[:1] == (200,)
        s.sendall(b"GET http://host:9977/b%2Dc?q HTTP/1.1\r\n\r\n")  # absolute form, percent-decoded
        assert read_response(s, buf)[2] == b"GET /b-c "


def test_the_connection_cap_closes_the_oldest_idle_connection_never_a_busy_one():
    """Past the cap a newcomer closes the oldest connection that serves nothing and never
    completed a request (a flood's), before a kept-alive one that did (Prometheus'); a
    connection whose request is in flight is never closed: its client gets the answer."""

    def wait(condition) -> None:
        deadline = time.monotonic() + 5
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    with serving(echo, cap=4) as (port, listener):
        kept, kept_buf = connect(port), bytearray()
        kept.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        assert read_response(kept, kept_buf)[0] == 200
        busy, busy_buf = connect(port), bytearray()
        busy.sendall(b"GET /slow HTTP/1.1\r\n\r\n")  # 0.3 s in the handler
        wait(lambda: any(c.active for c in listener.conns))
        flood = []
        for n in range(5):
            flood.append(connect(port))
            wait(lambda n=n: len(listener.conns) + listener.evicted == 3 + n)
        assert listener.evicted == 3 and len(listener.conns) == 4
        assert all(closed(s, 1) for s in flood[:3])  # the oldest never-served ones
        assert read_response(busy, busy_buf)[0] == 200
        kept.sendall(b"GET /b HTTP/1.1\r\n\r\n")
        assert read_response(kept, kept_buf)[2] == b"GET /b "
        # nothing never-served left: the oldest kept-alive one goes, never the busy one
        for s in flood[3:]:
            s.close()
        wait(lambda: len(listener.conns) == 2)
        served = [connect(port), connect(port)]
        for s in served:
            s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
            assert read_response(s, bytearray())[0] == 200
        busy.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
        wait(lambda: any(c.active for c in listener.conns))
        newcomer = connect(port)
        wait(lambda: listener.evicted == 4)
        assert closed(kept, 1)
        assert read_response(busy, busy_buf)[0] == 200
        assert not any(closed(s, 0.2) for s in (*served, newcomer))
        for s in (kept, busy, newcomer, *flood, *served):
            s.close()


def test_a_client_that_never_reads_blocks_nobody_and_is_closed():
    """Twenty pipelined requests for 4 MB each and no reading: the others are answered at once,
    the server holds at most one answer for it, and closes it after the header timeout."""
    with serving(echo, read_header_timeout=1.0, idle_timeout=30) as (port, listener):
        hog = connect(port)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.sendall(b"GET /big HTTP/1.1\r\n\r\n" * 20)
        time.sleep(0.5)
        for _ in range(5):
            start = time.monotonic()
            s, buf = connect(port), bytearray()
            s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
            assert read_response(s, buf)[0] == 200
            assert time.monotonic() - start < 0.5
            s.close()
        blocked = [c for c in listener.conns if c.write_blocked_since is not None]
        assert len(blocked) == 1
        assert blocked[0].transport.get_write_buffer_size() <= 4_000_000 + 65536
        time.sleep(2)  # past the header timeout, without reading
        assert not listener.conns
        assert closed(hog, 5)  # aborted: a reset or an end, not 80 MB of answers


def test_a_slow_reader_is_not_cut_off_by_the_write_stall_timeout():
    """A 4 MB answer read at ~1.3 MB/s takes longer than the 1 s header timeout: the buffer
    shrinks between sweeps, so the connection is not taken for a stalled one."""
    with serving(echo, read_header_timeout=1.0, idle_timeout=30) as (port, listener):
        s = connect(port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        deadline = time.monotonic() + 5
        while not listener.conns:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # a small kernel buffer on our side too: the answer waits in the transport's buffer
        (conn,) = listener.conns
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        start, got = time.monotonic(), 0
        while got < 4_000_000:
            chunk = s.recv(16384)
            assert chunk, f"closed after {got} bytes, {time.monotonic() - start:.1f} s"
            got += len(chunk)
            time.sleep(0.01)
        assert time.monotonic() - start > 1.5  # slower than the timeout, or the test proves nothing


def test_a_handler_error_is_a_500_and_the_server_goes_on(caplog):
    with caplog.at_level(logging.DEBUG, logger="netstack.http"), serving(echo) as (port, _):
        s, buf = connect(port), bytearray()
        s.sendall(b"GET /boom HTTP/1.1\r\n\r\n")
        assert read_response(s, buf)[0] == 500 and closed(s)
        s, buf = connect(port), bytearray()
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        assert read_response(s, buf)[0] == 200
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["error handling request"]
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)


def test_routing_404_405_with_allow():
    app = App(scheduler=None, telemetry_path="/metrics", enabled={})  # type: ignore[arg-type]
    with serving(app) as (port, _):
        s, buf = connect(port), bytearray()
        s.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        s.sendall(b"GET /nope HTTP/1.1\r\n\r\n")
        assert read_response(s, buf)[0] == 404
        s.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        status, headers, _ = read_response(s, buf, head_only=True)
        assert status == 200 and headers["content-length"] == "3"
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert read_response(s, buf)[2] == b"ok\n"


def test_parse_head_joins_repeated_headers_and_lowers_names():
    r = parse_head(b"GET /metrics HTTP/1.1\r\nAccept: a\r\naccept: b\r\nX-Y:\t z \r\nEmpty:", "p")
    assert (r.method, r.path, r.version, r.peer) == ("GET", "/metrics", "HTTP/1.1", "p")
    assert r.headers == {"accept": "a, b", "x-y": "z", "empty": ""}
