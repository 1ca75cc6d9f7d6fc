import re
import subprocess
import sys

import pytest

from collectors import available_collectors
from exporter.cli import ConfigError, env_name, parse_config, parse_duration, parse_listen_address
from tests.helpers import ROOT

CLASSES = available_collectors()


def config(*argv, env=None):
    return parse_config(list(argv), env or {}, CLASSES)


@pytest.mark.parametrize(
    "text,seconds",
    [("30s", 30), ("1m", 60), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("1d", 86400), ("0", 0)],
)
def test_durations_in_prometheus_syntax(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1.5s", "s", "1x", "-1s", "1s1m"])
def test_bad_durations_rejected(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text,result",
    [
        (":9977", (None, 9977)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:9977", ("::1", 9977)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_listen_addresses(text, result):
    assert parse_listen_address(text) == result


@pytest.mark.parametrize("text", ["9977", "host:", ":99999", "::1:9977", "[zz]:1", "h:p"])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError):
        parse_listen_address(text)


def test_defaults():
    c = config()
    assert (c.listen_host, c.listen_port, c.telemetry_path) == (None, 9977, "/metrics")
    assert (c.procfs, c.sysfs, c.log_level, c.log_format) == ("/proc", "/sys", "info", "logfmt")
    assert c.enabled["cpu"] and c.enabled["softirq"]
    assert c.collector_options["softirq"] == {"all-vectors": False}


def test_flags_beat_environment_and_environment_beats_defaults():
    env = {
        "NETSTACK_WEB_LISTEN_ADDRESS": "127.0.0.1:1234",
        "NETSTACK_PATH_PROCFS": "/host/proc",
        "NETSTACK_COLLECTOR_SOFTIRQ_ALL_VECTORS": "true",
        "NETSTACK_COLLECTOR_CPU": "false",
    }
    c = config(env=env)
    assert (c.listen_port, c.procfs, c.enabled["cpu"]) == (1234, "/host/proc", False)
    assert c.collector_options["softirq"]["all-vectors"] is True
    c = config("--web.listen-address=:5555", "--collector.cpu", "--no-collector.softirq.all-vectors", env=env)
    assert (c.listen_port, c.enabled["cpu"], c.collector_options["softirq"]["all-vectors"]) == (
        5555,
        True,
        False,
    )


def test_disable_defaults_then_enable_one():
    c = config("--collector.disable-defaults", "--collector.softirq")
    assert c.enabled["softirq"] and not c.enabled["cpu"]


def test_env_names_follow_flags():
    assert env_name("--collector.softirq.all-vectors") == "NETSTACK_COLLECTOR_SOFTIRQ_ALL_VECTORS"


@pytest.mark.parametrize(
    "argv,env,needle",
    [
        (["--web.listen-address=nope"], {}, "--web.listen-address"),
        (["--web.telemetry-path=metrics"], {}, "--web.telemetry-path"),
        (["--web.telemetry-path=/healthz"], {}, "--web.telemetry-path"),
        (["--log.level=loud"], {}, "--log.level"),
        (["--scrape.timeout=10"], {}, "--scrape.timeout"),
        ([], {"NETSTACK_COLLECTOR_CPU": "maybe"}, "NETSTACK_COLLECTOR_CPU"),
        ([], {"NETSTACK_LOG_FORMAT": "xml"}, "NETSTACK_LOG_FORMAT"),
    ],
)
def test_bad_values_name_the_flag(argv, env, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config(*argv, env=env)


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--web.listen-address=1.2.3.4"],
        ["--no-such-flag"],
        ["--scrape.timeout=soon"],
        # values that used to start (collector "unavailable") or die with a traceback
        ["--collector.ipvs.source=bogus"],
        ["--collector.fsync.writes=0"],
        ["--scrape.timeout=0"],
        ["--collector.fsync.block-size=1000000000000"],
        ["--scrape.timeout=" + "9" * 309 + "ms"],
        ["--collector.fsync.block-size=" + "9" * 5000],
        ["--collector.overlay.device-include=("],
        ["--collector.ipvs.max-series=-1"],
        ["--collector.ipvs.modules=ip_vs;rm"],
    ],
)
def test_bad_flag_exits_2_with_one_line_naming_it(args):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netstack-exporter: error:"), result.stderr
    flag = args[0].split("=")[0]
    assert flag in lines[0] and len(lines[0]) < 300, lines[0]


def test_bad_environment_value_exits_2_naming_the_variable():
    import os

    env = {**os.environ, "NETSTACK_COLLECTOR_FSYNC_INTERVAL": "-5s"}
    result = _run(env=env)
    assert result.returncode == 2
    assert (
        "NETSTACK_COLLECTOR_FSYNC_INTERVAL" in result.stderr and "--collector.fsync.interval" in result.stderr
    )


# issue 10's values that used to start or die with a traceback, in their environment form
ISSUE_VALUES = [
    ("--collector.ipvs.source", "bogus", "invalid value 'bogus' (one of auto, netlink, procfs)"),
    ("--collector.fsync.writes", "0", "0 is below the minimum 1"),
    ("--scrape.timeout", "0", "0s is below the minimum 0.01s"),
    ("--collector.fsync.block-size", "1000000000000", "1000000000000 is above the maximum 268435456"),
    ("--scrape.timeout", "9" * 309 + "ms", "(311 characters) is too large"),
]


@pytest.mark.parametrize("flag,raw,reason", ISSUE_VALUES)
def test_bad_environment_values_exit_2_with_one_line_naming_variable_and_flag(flag, raw, reason):
    import os

    variable = env_name(flag)
    result = _run(env={**os.environ, variable: raw})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"netstack-exporter: error: {variable} (env for {flag}): ")
    assert reason in lines[0], lines[0]


@pytest.mark.parametrize("flag,raw,reason", ISSUE_VALUES)
def test_bad_flag_line_says_what_is_wrong(flag, raw, reason):
    result = _run(f"{flag}={raw}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"netstack-exporter: error: {flag}: ") and reason in result.stderr


def test_every_option_has_its_default_in_the_context():
    from exporter.contract import Context

    c = config()
    for cls in CLASSES:
        assert set(c.collector_options[cls.name]) == {o.name for o in cls.options}
        collector = cls(Context(options=c.collector_options[cls.name]))
        for opt in cls.options:
            assert collector.option(opt.name) is not None or opt.default is None


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--collector.ipvs.source=procfs"], ("ipvs", "source", "procfs")),
        (["--collector.fsync.interval=1m30s"], ("fsync", "interval", 90)),
        (
            ["--collector.fsync.directory=/a", "--collector.fsync.directory=/b"],
            ("fsync", "directory", ["/a", "/b"]),
        ),
    ],
)
def test_good_values_are_parsed_once(argv, expected):
    name, option, value = expected
    assert config(*argv).collector_options[name][option] == value


def test_help_lists_flags_and_their_environment_variables():
    result = _run("--help")
    assert result.returncode == 0
    for needle in (
        "--web.listen-address",
        "NETSTACK_WEB_LISTEN_ADDRESS",
        "--collector.cpu",
        "--no-collector.cpu",
        "--collector.disable-defaults",
        "--collector.softirq.all-vectors",
        "NETSTACK_COLLECTOR_SOFTIRQ_ALL_VECTORS",
        "--log.format",
        "--version",
        ":9977",
        "exits with status 2 and one line naming it",
    ):
        assert needle in " ".join(result.stdout.split()), needle


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and re.match(r"netstack-exporter \d+\.\d+\.\d+", result.stdout)


def backends(c) -> tuple[str, str]:
    return c.collector_options["ebpf_softirq"]["backend"], c.collector_options["ebpf_drops"]["backend"]


def test_a_group_flag_sets_the_option_of_every_collector_that_shares_it():
    assert backends(config()) == ("auto", "auto")
    assert backends(config("--collector.ebpf.backend=bcc")) == ("bcc", "bcc")
    assert backends(config(env={"NETSTACK_COLLECTOR_EBPF_BACKEND": "libbpf"})) == ("libbpf", "libbpf")
    # a collector's own flag or variable wins over the group's
    assert backends(config("--collector.ebpf.backend=bcc", "--collector.ebpf_drops.backend=libbpf")) == (
        "bcc",
        "libbpf",
    )
    own_env = {"NETSTACK_COLLECTOR_EBPF_SOFTIRQ_BACKEND": "libbpf"}
    assert backends(config("--collector.ebpf.backend=bcc", env=own_env)) == ("libbpf", "bcc")


def test_a_group_flag_is_validated_like_the_collectors_own(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("--collector.ebpf.backend: ")):
        config("--collector.ebpf.backend=clang")
    with pytest.raises(ConfigError, match=re.escape("--collector.ebpf.btf-path: ")):
        config(f"--collector.ebpf.btf-path={tmp_path / 'missing.btf'}")
    btf = tmp_path / "vmlinux.btf"
    btf.write_bytes(b"\x9f\xeb")
    c = config(f"--collector.ebpf.btf-path={btf}")
    assert (
        c.collector_options["ebpf_softirq"]["btf-path"]
        == c.collector_options["ebpf_drops"]["btf-path"]
        == str(btf)
    )
