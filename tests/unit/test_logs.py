"""Log lines: logfmt and JSON, one line per event whatever the values hold, stack traces only at
debug level, and aiohttp's report of a malformed request turned into one debug line with the
reason."""

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
    """logs.setup() for one test; the root logger and aiohttp's loggers restored afterwards."""
    names = ("", "aiohttp.server", "aiohttp.access")
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


def _malformed(exc_class, *args):
    from aiohttp import http_exceptions

    return raised(getattr(http_exceptions, exc_class)(*args))


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_malformed_request_is_one_debug_line_with_the_reason(configured, level):
    # Issue 11.16: aiohttp logs "Error handling request" at error level, the reason only in a
    # trace that is printed at debug level only.
    read = configured(level)
    server = logging.getLogger("aiohttp.server")
    server.exception(
        "Error handling request from %s", "127.0.0.1", exc_info=_malformed("InvalidHeader", b"Ho st")
    )
    server.exception(
        "Error handling request from %s",
        "127.0.0.1",
        exc_info=_malformed("BadHttpMessage", "Content-Length: abc"),
    )
    server.exception(
        "Error handling request from %s",
        "127.0.0.1",
        exc_info=_malformed("LineTooLong", b"GET /" + b"x" * 9000, "8190"),
    )
    lines = read().splitlines()
    if level == "info":
        assert lines == []
        return
    assert len(lines) == 3
    for line in lines:
        assert "level=debug" in line and 'msg="malformed HTTP request"' in line, line
        assert "peer=127.0.0.1" in line and "status=400" in line
        assert "Traceback" not in line and len(line) < 400
    assert "reason=" in lines[0] and "Ho st" in lines[0]
    assert "Content-Length: abc" in lines[1]


def test_a_handler_error_is_still_an_error_with_its_trace_at_debug(configured):
    read = configured("info")
    logging.getLogger("aiohttp.server").exception(
        "Error handling request from %s", "127.0.0.1", exc_info=raised(KeyError("bug"))
    )
    line = read().strip()
    assert "level=error" in line and "Error handling request" in line
