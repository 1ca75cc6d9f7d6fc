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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .contract import Collector, Option

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
    web: WebLimits = field(default_factory=lambda: WebLimits())
    extra: dict[str, Any] = field(default_factory=dict)  # a subcommand's own flags, by flag


@dataclass
class WebLimits:
    """--web.* settings beyond the address: the web config file and the connection limits."""

    config_file: str | None = None
    max_requests: int = 40
    max_connections: int = 0  # 0: derived from the open-file limit at startup
    idle_timeout: float = 120.0
    read_header_timeout: float = 10.0


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
        raise ValueError(f"invalid duration {_shown(text)} (use Prometheus syntax, e.g. 500ms, 30s, 1m)")
    if any(g and len(g) > 12 for g in m.groups()):  # int() of thousands of digits is slow
        raise ValueError(f"duration {_shown(text)} is too large")
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS) if g)


def _shown(text: str) -> str:
    """A bad value as it appears in an error line: quoted, and cut when long."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} characters)"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {_shown(text)} (use true or false)")


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """'host:port', ':port' (all interfaces), '[v6]:port' or '[v4]:port' (what the chart's
    '[$(HOST_IP)]:port' gives for either family)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {_shown(text)} (want host:port, :port or [::1]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid IP address in brackets in {_shown(text)}") from None
    elif ":" in host:
        raise ValueError(f"invalid listen address {_shown(text)} (put IPv6 addresses in brackets)")
    return (host or None), int(port_text)


def parse_optional_path(text: str) -> str | None:
    return os.path.abspath(text) if text else None


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes as fio writes them: '2300', '64k', '22m', '1g' (powers of 1024)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1:] if t[-1:] in "kmg" else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit() or len(number) > 12:
        raise ValueError(f"invalid size {_shown(text)} (bytes, or with k, m, g: e.g. 22m)")
    return int(number) * _SIZE_UNITS[unit]


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


def parse_int(text: str) -> int:
    if len(text.strip()) > 18:
        raise ValueError(f"integer {_shown(text)} is too large")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid integer {_shown(text)}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid number {_shown(text)}") from None


def parse_regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"invalid regular expression {_shown(text)}: {e}") from None


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
    option: Option

    @property
    def kind(self) -> str:
        return self.option.kind


def _add(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: list[_Setting],
    flag: str,
    option: Option,
    parse: Any = None,
    metavar: str | None = None,
) -> None:
    """One flag for `option`: parsed by `parse` (by default the parser of the option's kind),
    then bounded by the option's choices, min, max and validator."""
    dest = flag.lstrip("-").replace(".", "__").replace("-", "_")
    kind, default = option.kind, option.default
    shown = "" if default in (None, [], "") else f" (default: {_show(default, kind)})"
    help_text = option.help
    if option.choices and kind != "bool":
        help_text = help_text.removesuffix(".") + f"; one of {', '.join(option.choices)}"
    help_full = f"{help_text}{shown} [env {env_name(flag)}]"
    metavar = metavar or OPTION_METAVARS.get(kind)
    if kind == "bool":
        parser.add_argument(
            flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_full
        )
    elif kind == "list":
        parser.add_argument(
            flag,
            dest=dest,
            action="append",
            default=None,
            metavar=metavar or "VALUE",
            help=help_full + " (repeatable; env: comma-separated)",
        )
    else:
        parser.add_argument(flag, dest=dest, default=None, metavar=metavar or "VALUE", help=help_full)
    settings.append(_Setting(flag, dest, parse or OPTION_PARSERS[kind], option))


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


def build_parser(
    collector_classes: Sequence[type[Collector]], extra: Sequence[Flag] = (), prog: str = PROG
) -> tuple[argparse.ArgumentParser, list[_Setting]]:
    parser = _Parser(
        prog=prog,
        description="Prometheus exporter for the node-level network and disk signals that break "
        "Kubernetes networking: CPU steal, softirq/softnet, conntrack, IPVS, overlay "
        "MTU and drops, fsync latency, eBPF softirq latency and drop reasons.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Durations use Prometheus syntax (500ms, 30s, 1m). Boolean flags have a --no- form. "
        "A bad value, as a flag or in the environment, exits with status 2 and one line naming it.",
    )
    settings: list[_Setting] = []
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for flag, option, parse, metavar in (*GLOBAL_FLAGS, *extra):
        _add(parser, settings, flag, option, parse, metavar)
    for cls in collector_classes:
        group = parser.add_argument_group(f"collector {cls.name}", cls.help or None)
        state = "enabled" if cls.default_enabled else "disabled"
        _add(
            group,
            settings,
            f"--collector.{cls.name}",
            Option(cls.name, f"Enable the {cls.name} collector ({state} by default)", None, "bool"),
        )
        for opt in cls.options:
            _add(group, settings, f"--collector.{cls.name}.{opt.name}", opt)
    for group_name, opts in shared_options(collector_classes).items():
        members = ", ".join(
            sorted({c.name for c in collector_classes for o in c.options if o.group == group_name})
        )
        group = parser.add_argument_group(
            f"collectors {members}", "Options they share; a collector's own flag wins."
        )
        for opt in opts:
            _add(group, settings, f"--collector.{group_name}.{opt.name}", opt)
    return parser, settings


def shared_options(collector_classes: Sequence[type[Collector]]) -> dict[str, list[Option]]:
    """group -> the options declared with that group (once each, by name)."""
    out: dict[str, dict[str, Option]] = {}
    for cls in collector_classes:
        for opt in cls.options:
            if opt.group:
                out.setdefault(opt.group, {}).setdefault(opt.name, opt)
    return {group: list(opts.values()) for group, opts in out.items()}


# Flags of the process itself: (flag, option with its bounds, parser, metavar).
Flag = tuple[str, Option, Any, "str | None"]
GLOBAL_FLAGS: tuple[Flag, ...] = (
    (
        "--web.listen-address",
        Option("listen-address", "Address to listen on", f":{DEFAULT_PORT}"),
        parse_listen_address,
        "HOST:PORT",
    ),
    (
        "--web.telemetry-path",
        Option("telemetry-path", "Path of the metrics endpoint", "/metrics"),
        parse_telemetry_path,
        "PATH",
    ),
    ("--path.procfs", Option("procfs", "procfs mount point (the host's /proc)", "/proc"), parse_path, "PATH"),
    ("--path.sysfs", Option("sysfs", "sysfs mount point (the host's /sys)", "/sys"), parse_path, "PATH"),
    (
        "--scrape.timeout",
        Option(
            "timeout",
            "Longest a collector may take in one collection; a Prometheus scrape timeout header lowers it",
            "9s",
            "duration",
            min=0.01,
            max=3600,
        ),
        None,
        None,
    ),
    ("--log.level", Option("level", "Log level", "info", choices=LOG_LEVELS), None, "LEVEL"),
    ("--log.format", Option("format", "Log format", "logfmt", choices=LOG_FORMATS), None, "FORMAT"),
    (
        "--web.config.file",
        Option(
            "config-file",
            "Web config file (exporter-toolkit format, as "
            "node_exporter's): TLS, basic auth, response headers; re-read on "
            "SIGHUP and when it or a file it names changes",
            "",
        ),
        parse_optional_path,
        "PATH",
    ),
    (
        "--web.max-requests",
        Option(
            "max-requests",
            "Requests served at the same time; past it 503 (0: no limit)",
            40,
            "int",
            min=0,
            max=100000,
        ),
        None,
        None,
    ),
    (
        "--web.max-connections",
        Option(
            "max-connections",
            "Open client connections; past it the "
            "longest-idle one is closed (0: the open-file limit minus 256)",
            0,
            "int",
            min=0,
            max=1000000,
        ),
        None,
        None,
    ),
    (
        "--web.idle-timeout",
        Option(
            "idle-timeout",
            "Keep-alive connections idle this long are closed",
            "2m",
            "duration",
            min=1,
            max=3600,
        ),
        None,
        None,
    ),
    (
        "--web.read-header-timeout",
        Option(
            "read-header-timeout",
            "Time a client has for the TLS handshake and a request's headers",
            "10s",
            "duration",
            min=0.1,
            max=600,
        ),
        None,
        None,
    ),
    (
        "--collector.disable-defaults",
        Option(
            "disable-defaults",
            "Disable all collectors that are on by default; enable the wanted ones explicitly",
            False,
            "bool",
        ),
        None,
        None,
    ),
)


def _resolve(setting: _Setting, raw: Any, environ: Mapping[str, str]) -> Any:
    """Value from the command line, else the environment, else the default; parsed and checked."""
    source = setting.flag
    if raw is None:
        env = environ.get(env_name(setting.flag))
        if env is not None:
            source = f"{env_name(setting.flag)} (env for {setting.flag})"
            raw = [v for v in env.split(",") if v] if setting.kind == "list" else env
    try:
        value = _parse(setting, raw)
        setting.option.check(value)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return value


def _parse(setting: _Setting, raw: Any) -> Any:
    if raw is None:
        default = setting.option.default
        if isinstance(default, str) and setting.kind != "list":
            return setting.parse(default)
        return list(default) if isinstance(default, (list, tuple)) else default
    if setting.kind == "bool":
        return raw if isinstance(raw, bool) else parse_bool(raw)
    if setting.kind == "list":
        return [setting.parse(v) for v in raw]
    return setting.parse(raw)


def parse_config(
    argv: Sequence[str],
    environ: Mapping[str, str],
    collector_classes: Sequence[type[Collector]],
    extra: Sequence[Flag] = (),
    prog: str = PROG,
) -> Config:
    """The configuration; `extra` flags (a subcommand's own) land in Config.extra by flag name."""
    parser, settings = build_parser(collector_classes, extra, prog)
    ns = vars(parser.parse_args(argv))
    values = {s.flag: _resolve(s, ns[s.dest], environ) for s in settings}
    given = {s.flag for s in settings if ns[s.dest] is not None or env_name(s.flag) in environ}
    host, port = values["--web.listen-address"]
    disable_defaults = bool(values["--collector.disable-defaults"])
    enabled = {}
    options: dict[str, dict[str, Any]] = {}
    for cls in collector_classes:
        explicit = values[f"--collector.{cls.name}"]
        enabled[cls.name] = (
            explicit if explicit is not None else (cls.default_enabled and not disable_defaults)
        )
        options[cls.name] = {}
        for opt in cls.options:
            own, shared = f"--collector.{cls.name}.{opt.name}", f"--collector.{opt.group}.{opt.name}"
            options[cls.name][opt.name] = values[
                shared if opt.group and own not in given and shared in given else own
            ]
        try:
            cls.check_options(options[cls.name])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return Config(
        listen_host=host,
        listen_port=port,
        telemetry_path=values["--web.telemetry-path"],
        procfs=values["--path.procfs"],
        sysfs=values["--path.sysfs"],
        scrape_timeout=values["--scrape.timeout"],
        log_level=values["--log.level"],
        log_format=values["--log.format"],
        enabled=enabled,
        collector_options=options,
        web=WebLimits(
            config_file=values["--web.config.file"],
            max_requests=values["--web.max-requests"],
            max_connections=values["--web.max-connections"],
            idle_timeout=values["--web.idle-timeout"],
            read_header_timeout=values["--web.read-header-timeout"],
        ),
        extra={flag: values[flag] for flag, *_ in extra},
    )


def load_config(
    argv: Sequence[str],
    environ: Mapping[str, str],
    collector_classes: Sequence[type[Collector]],
    extra: Sequence[Flag] = (),
    prog: str = PROG,
) -> Config:
    """parse_config, exiting with one error line on a bad value."""
    try:
        return parse_config(argv, environ, collector_classes, extra, prog)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
