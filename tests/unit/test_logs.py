"""Log lines: logfmt and JSON, one line per event whatever the values hold, stack traces only at
debug level, and a malformed HTTP request reported as one debug line with the reason."""

from __future__ import annotations

import json
import logging
import re

import pytest

from exporter import logs
from exporter.logs import JsonFormatter, LogfmtFormatter, log_event


def record(
    level: int, msg: str, exc: BaseException | None = None, name: str = "netstack.cpu", **kv
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    r = logging.LogRecord(name, level, __file__, 1, msg, (), exc_info)
    r.kv = kv
    return r


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:
        return e


def test_logfmt_line():
    line = LogfmtFormatter().format(
        record(
            logging.WARNING, "collector failed", collector="cpu", error="ParseError: /proc/stat:3: truncated"
        )
    )
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warn logger=netstack\.cpu "
        r'msg="collector failed" collector=cpu error="ParseError: /proc/stat:3: truncated"',
        line,
    ), line


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', r'"say \"hi\""'),
        ("line\nnext", r'"line\nnext"'),
        ("back\\slash and space", r'"back\\slash and space"'),
        ("cr\rhere", r'"cr\rhere"'),
        ("tab\there", r'"tab\there"'),
        ("esc\x1b[31mred", r'"esc\u001b[31mred"'),
        ("del\x7f", r'"del\u007f"'),
        ("µs", "µs"),
        (12, "12"),
        (None, "None"),
    ],
)
def test_logfmt_values_are_quoted_and_escaped_so_a_line_stays_one_line(value, written):
    line = LogfmtFormatter().format(record(logging.INFO, "m", key=value))
    assert line.endswith(f" key={written}"), line
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_json_line_is_one_object_with_the_fields():
    class Odd:
        def __str__(self):
            return "odd"

    line = JsonFormatter().format(
        record(logging.ERROR, "cannot listen", address="[::1]:9100", error='in "use"\n', obj=Odd())
    )
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["level"] == "error" and fields["logger"] == "netstack.cpu"
    assert fields["msg"] == "cannot listen" and fields["address"] == "[::1]:9100"
    assert fields["error"] == 'in "use"\n' and fields["obj"] == "odd"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"])


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_a_traceback_only_at_debug_level(formatter):
    exc = raised(ValueError("boom"))
    for level in (logging.INFO, logging.WARNING, logging.ERROR):
        assert "Traceback" not in formatter.format(record(level, "collector failed", exc))
    line = formatter.format(record(logging.DEBUG, "collector traceback", exc))
    assert "\n" not in line
    assert "Traceback" in line and "ValueError: boom" in line


def test_level_names():
    names = {
        level: LogfmtFormatter().format(record(level, "m")).split()[1]
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    }
    assert list(names.values()) == ["level=debug", "level=info", "level=warn", "level=error", "level=error"]


@pytest.fixture
def configured(capsys):
    """logs.setup() for one test; the root logger restored afterwards."""
    names = ("",)
    saved = [
        (
            logging.getLogger(n),
            logging.getLogger(n).level,
            list(logging.getLogger(n).handlers),
            list(logging.getLogger(n).filters),
        )
        for n in names
    ]

    def setup(level: str, fmt: str = "logfmt"):
        logs.setup(level, fmt)
        return lambda: capsys.readouterr().err

    yield setup
    for logger, level, handlers, filters in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.filters[:] = filters


def test_setup_sets_level_and_format(configured):
    read = configured("warn", "json")
    log = logging.getLogger("netstack.test")
    log_event(log, logging.INFO, "hidden")
    log_event(log, logging.WARNING, "shown", collector="x")
    lines = read().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["shown"]


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_malformed_request_is_one_debug_line_with_the_reason(configured, level):
    # Issue 11.16: a client's malformed request is not our error: nothing at error level, and at
    # debug level one line with the peer, the status answered and the reason.
    from tests.unit.test_http_server import connect, echo, read_response, serving

    read = configured(level)
    requests = (
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n",
    )
    with serving(echo) as (port, _):
        for request in requests:
            with connect(port) as s:
                s.sendall(request)
                read_response(s, bytearray())
    lines = [line for line in read().splitlines() if "logger=netstack.http" in line]
    if level == "info":
        assert lines == []
        return
    assert len(lines) == 3, lines
    for line in lines:
        assert "level=debug" in line and 'msg="malformed HTTP request"' in line, line
        assert "peer=127.0.0.1" in line and "status=" in line
        assert "Traceback" not in line and len(line) < 400
    assert "reason=" in lines[0] and "Ho st" in lines[0] and "status=400" in lines[0]
    assert "Content-Length abc" in lines[1].replace(":", "").replace("'", "")
    assert "status=431" in lines[2]


def test_a_handler_error_is_still_an_error_with_its_trace_at_debug(configured):
    from tests.unit.test_http_server import connect, echo, read_response, serving

    for level in ("info", "debug"):
        read = configured(level)
        with serving(echo) as (port, _), connect(port) as s:
            s.sendall(b"GET /boom HTTP/1.1\r\n\r\n")
            assert read_response(s, bytearray())[0] == 500
        lines = [line for line in read().splitlines() if "logger=netstack.http" in line]
        assert "level=error" in lines[0] and "error handling request" in lines[0] and "KeyError" in lines[0]
        traces = [line for line in lines if "Traceback" in line]
        assert len(traces) == (level == "debug"), lines
