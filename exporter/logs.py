"""One line per event, logfmt or JSON. Stack traces only at debug level."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def log_event(logger: logging.Logger, level: int, msg: str, **kv: Any) -> None:
    """Log one line with structured key=value fields (rendered as logfmt or JSON).
    Loggers are named netstack.<collector> for collectors, netstack.<part> for the exporter."""
    logger.log(level, msg, extra={"kv": kv})


def _fields(record: logging.LogRecord) -> dict:
    out = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": _LEVEL_NAMES.get(record.levelno, "info"),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update(getattr(record, "kv", {}) or {})
    if record.exc_info and record.levelno <= logging.DEBUG:
        out["trace"] = logging.Formatter().formatException(record.exc_info)
    return out


# Quoted in logfmt: what would end the value or the line, or is not printable (a file's
# content or a client's bytes must not break a line or reach the terminal as escapes).
_QUOTE = re.compile(r'[\x00-\x20"=\\\x7f]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE = re.compile(r'[\x00-\x1f"\\\x7f]')


def _logfmt_value(value) -> str:
    text = str(value)
    if text and not _QUOTE.search(text):
        return text
    escaped = _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), text)
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
