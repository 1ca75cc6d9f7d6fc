"""The exporter's own metrics, from a fixture /proc/self (a command name with spaces and
parentheses, five descriptors) and from the real one; rendered with the exporter's encoder."""

import os
import resource

from exporter import __version__
from exporter.exposition import encode_text
from exporter.selfmetrics import SelfMetrics
from tests.helpers import FIXTURES, parse_metrics, value

TICKS = os.sysconf("SC_CLK_TCK")
BTIME = 1764547200  # tests/fixtures/selfproc/stat


def scrape(self_metrics: SelfMetrics) -> dict:
    return parse_metrics(encode_text(self_metrics.families()).decode())


def test_process_metrics_from_a_fixture_proc():
    m = scrape(SelfMetrics(str(FIXTURES / "selfproc")))
    assert value(m, "process_cpu_seconds_total") == (1234 + 566) / TICKS  # utime + stime
    assert value(m, "process_start_time_seconds") == BTIME + 5000 / TICKS
    assert value(m, "process_virtual_memory_bytes") == 123456789
    assert value(m, "process_resident_memory_bytes") == 2500 * resource.getpagesize()
    assert value(m, "process_open_fds") == 5
    assert value(m, "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_build_platform_and_gc_metrics():
    m = scrape(SelfMetrics(str(FIXTURES / "selfproc")))
    build = [k for k in m if k[0] == "netstack_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0][1] and m[build[0]] == 1
    assert [k for k in m if k[0] == "python_info"]
    assert [k for k in m if k[0] == "python_gc_collections_total"]


def test_by_default_the_real_proc_self():
    m = scrape(SelfMetrics())
    assert value(m, "process_resident_memory_bytes") > 1e6
    assert 0 < value(m, "process_open_fds") < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with open("/proc/self/stat") as f:
        starttime = int(f.read().rpartition(")")[2].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    assert value(m, "process_start_time_seconds") == btime + starttime / TICKS


def test_each_collection_reads_anew(tmp_path):
    import shutil

    tree = tmp_path / "proc"
    shutil.copytree(FIXTURES / "selfproc", tree)
    metrics = SelfMetrics(str(tree))
    stat = tree / "self/stat"
    stat.write_text(stat.read_text().replace(" 1234 566 ", " 2234 566 "))
    (tree / "self/fd/5").touch()
    m = scrape(metrics)
    assert value(m, "process_cpu_seconds_total") == (2234 + 566) / TICKS
    assert value(m, "process_open_fds") == 6
