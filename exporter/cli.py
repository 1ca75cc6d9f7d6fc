"""Command line and environment configuration, in node_exporter's flag style.

Every flag has an environment form: strip the dashes, upper-case, turn '.' and '-' into '_', and
prefix NETSTACK_ (--web.listen-address -> NETSTACK_WEB_LISTEN_ADDRESS). A flag on the command line
wins over the environment. A bad value exits with status 2 and one line naming the flag.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import __version__

DEFAULT_PORT = 9977
PROG = "netstack-exporter"
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
RESERVED_PATHS = ("/", "/healthz", "/readyz")


class ConfigError(Exception):
    """A flag or environment value is invalid; the message names it."""


@dataclass
class Config:
    listen_host: str | None
    listen_port: int
    telemetry_path: str
    procfs: str
    sysfs: str
    scrape_timeout: float
    log_level: str
    log_format: str
    enabled: dict[str, bool]
    collector_options: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- value parsers: each raises ValueError with a message that completes "<flag>: ..." ---------

_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def parse_duration(text: str) -> float:
    """Prometheus duration syntax ('30s', '1m30s', '500ms', '0') to seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise ValueError(f"invalid duration {text!r} (use Prometheus syntax, e.g. 500ms, 30s, 1m)")
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS) if g)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """'host:port', ':port' (all interfaces) or '[v6]:port'."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {text!r} (want host:port, :port or [::1]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {text!r}") from None
    elif ":" in host:
        raise ValueError(f"invalid listen address {text!r} (put IPv6 addresses in brackets)")
    return (host or None), int(port_text)


def parse_path(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return os.path.abspath(text)


def parse_telemetry_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    if text in RESERVED_PATHS:
        raise ValueError(f"{text} is reserved for the exporter's own pages")
    return text


def parse_choice(choices: Sequence[str]):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"invalid value {text!r} (one of {', '.join(choices)})")
        return text
    return parse


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid integer {text!r}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None


def parse_regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"invalid regular expression {text!r}: {e}") from None


OPTION_PARSERS = {
    "bool": parse_bool,
    "int": parse_int,
    "float": parse_float,
    "str": str,
    "duration": parse_duration,
    "regex": parse_regex,
    "list": str,
}


OPTION_METAVARS = {"int": "N", "float": "NUMBER", "duration": "DURATION", "regex": "REGEX"}


def env_name(flag: str) -> str:
    return "NETSTACK_" + re.sub(r"[.\-]", "_", flag.lstrip("-")).upper()


# --- the parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{PROG}: error: {message}\n")


@dataclass
class _Setting:
    flag: str
    dest: str
    parse: Any
    default: Any
    kind: str = "str"


def _add(parser: argparse.ArgumentParser, settings: list[_Setting], flag: str, help_text: str,
         default: Any, parse: Any, kind: str = "str", metavar: str | None = None) -> None:
    dest = flag.lstrip("-").replace(".", "__").replace("-", "_")
    shown = "" if default in (None, [], "") else f" (default: {_show(default, kind)})"
    help_full = f"{help_text}{shown} [env {env_name(flag)}]"
    if kind == "bool":
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                            default=None, help=help_full)
    elif kind == "list":
        parser.add_argument(flag, dest=dest, action="append", default=None, metavar=metavar or "VALUE",
                            help=help_full + " (repeatable; env: comma-separated)")
    else:
        parser.add_argument(flag, dest=dest, default=None, metavar=metavar or "VALUE", help=help_full)
    settings.append(_Setting(flag, dest, parse, default, kind))


def _show(value: Any, kind: str) -> str:
    if kind == "duration" and isinstance(value, (int, float)):
        return f"{value:g}s"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, re.Pattern):
        return value.pattern
    return str(value)


def build_parser(collector_classes: Sequence[type]) -> tuple[argparse.ArgumentParser, list[_Setting]]:
    parser = _Parser(
        prog=PROG,
        description="Prometheus exporter for the node-level network and disk signals that break "
                    "Kubernetes networking: CPU steal, softirq/softnet, conntrack, IPVS, overlay "
                    "MTU and drops, fsync latency, eBPF softirq latency and drop reasons.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Durations use Prometheus syntax (500ms, 30s, 1m). Boolean flags have a --no- form.",
    )
    settings: list[_Setting] = []
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add(parser, settings, "--web.listen-address", "Address to listen on", f":{DEFAULT_PORT}",
         parse_listen_address, metavar="HOST:PORT")
    _add(parser, settings, "--web.telemetry-path", "Path of the metrics endpoint", "/metrics",
         parse_telemetry_path, metavar="PATH")
    _add(parser, settings, "--path.procfs", "procfs mount point (the host's /proc)", "/proc",
         parse_path, metavar="PATH")
    _add(parser, settings, "--path.sysfs", "sysfs mount point (the host's /sys)", "/sys",
         parse_path, metavar="PATH")
    _add(parser, settings, "--scrape.timeout",
         "Longest a collector may take in one collection; a Prometheus scrape timeout header "
         "lowers it", "9s", parse_duration, metavar="DURATION")
    _add(parser, settings, "--log.level", "Log level: " + ", ".join(LOG_LEVELS), "info",
         parse_choice(LOG_LEVELS), metavar="LEVEL")
    _add(parser, settings, "--log.format", "Log format: " + ", ".join(LOG_FORMATS), "logfmt",
         parse_choice(LOG_FORMATS), metavar="FORMAT")
    _add(parser, settings, "--collector.disable-defaults",
         "Disable all collectors that are on by default; enable the wanted ones explicitly",
         False, parse_bool, kind="bool")

    for cls in collector_classes:
        group = parser.add_argument_group(f"collector {cls.name}", cls.help or None)
        state = "enabled" if cls.default_enabled else "disabled"
        _add(group, settings, f"--collector.{cls.name}", f"Enable the {cls.name} collector ({state} by default)",
             None, parse_bool, kind="bool")
        for opt in cls.options:
            _add(group, settings, f"--collector.{cls.name}.{opt.name}", opt.help, opt.default,
                 OPTION_PARSERS[opt.kind], kind=opt.kind, metavar=OPTION_METAVARS.get(opt.kind))
    return parser, settings


def _resolve(setting: _Setting, raw: Any, environ: Mapping[str, str]) -> Any:
    """Value from the command line, else the environment, else the default; parsed."""
    source = setting.flag
    if raw is None:
        env = environ.get(env_name(setting.flag))
        if env is not None:
            source = f"{env_name(setting.flag)} (env for {setting.flag})"
            raw = [v for v in env.split(",") if v] if setting.kind == "list" else env
    try:
        if raw is None:
            default = setting.default
            if isinstance(default, str) and setting.kind not in ("list",):
                return setting.parse(default)
            return list(default) if isinstance(default, (list, tuple)) else default
        if setting.kind == "bool":
            return raw if isinstance(raw, bool) else parse_bool(raw)
        if setting.kind == "list":
            return [setting.parse(v) for v in raw]
        return setting.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_config(argv: Sequence[str], environ: Mapping[str, str],
                 collector_classes: Sequence[type]) -> Config:
    parser, settings = build_parser(collector_classes)
    ns = vars(parser.parse_args(argv))
    values = {s.flag: _resolve(s, ns[s.dest], environ) for s in settings}
    host, port = values["--web.listen-address"]
    disable_defaults = bool(values["--collector.disable-defaults"])
    enabled = {}
    options: dict[str, dict[str, Any]] = {}
    for cls in collector_classes:
        explicit = values[f"--collector.{cls.name}"]
        enabled[cls.name] = explicit if explicit is not None else (cls.default_enabled and not disable_defaults)
        options[cls.name] = {opt.name: values[f"--collector.{cls.name}.{opt.name}"] for opt in cls.options}
    return Config(
        listen_host=host, listen_port=port,
        telemetry_path=values["--web.telemetry-path"],
        procfs=values["--path.procfs"], sysfs=values["--path.sysfs"],
        scrape_timeout=values["--scrape.timeout"],
        log_level=values["--log.level"], log_format=values["--log.format"],
        enabled=enabled, collector_options=options,
    )


def load_config(argv: Sequence[str], environ: Mapping[str, str], collector_classes: Sequence[type]) -> Config:
    """parse_config, exiting with one error line on a bad value."""
    try:
        return parse_config(argv, environ, collector_classes)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
