"""Conntrack parsing on fixtures in the kernel's formats.

Fixtures (tests/fixtures/conntrack):
  stat-6.18.txt   /proc/net/stat/nf_conntrack read on this machine (kernel 6.18), 12 entries
  stat-6.x.txt    6.x header (clashres, chainlength), 4 CPUs; column i on CPU r holds (i << 8) + r
  stat-5.x.txt    5.x header (clashres, delete_list), same value scheme
  stat-4.x.txt    4.x header (searched ... search_restart), same value scheme
  stat-3.x.txt    3.x header (no search_restart, trailing space on rows), same value scheme
  dump-6.18.bin   a ctnetlink IPCTNL_MSG_CT_GET dump read from kernel 6.18: tcp ESTABLISHED x3
                  (IPv4) + x1 (IPv6), SYN_SENT x1, TIME_WAIT x2, udp x4, icmp x1
The value scheme makes a column read from the wrong position show up as a wrong number.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_stats, nfct_stats_cpu

from collectors import conntrack
from collectors.conntrack import (
    COLLECTOR,
    ConntrackCollector,
    Snapshot,
    count_dump,
    count_from_netlink,
    parse_procfs_stats,
    stats_from_netlink,
)
from exporter.contract import Context, ParseError, Paths, SourceUnavailable
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily
from tests.helpers import FIXTURES

DIR = FIXTURES / "conntrack"


def column_sum(index: int, cpus: int = 4) -> int:
    """Sum over CPUs of column `index` in the (i << 8) + r fixtures."""
    return sum((index << 8) + r for r in range(cpus))


def summed(stats: dict[int, dict[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for row in stats.values():
        total.update(row)
    return dict(total)


@pytest.mark.parametrize(
    "name, expected",
    [
        # key -> header position in that layout
        (
            "stat-6.x.txt",
            {
                "clash_resolve": 1,
                "found": 2,
                "invalid": 4,
                "chain_toolong": 7,
                "insert": 8,
                "insert_failed": 9,
                "drop": 10,
                "early_drop": 11,
                "error": 12,
                "search_restart": 16,
            },
        ),
        (
            "stat-5.x.txt",
            {
                "clash_resolve": 1,
                "found": 2,
                "invalid": 4,
                "insert": 8,
                "insert_failed": 9,
                "drop": 10,
                "early_drop": 11,
                "error": 12,
                "search_restart": 16,
            },
        ),
        (
            "stat-4.x.txt",
            {
                "found": 2,
                "invalid": 4,
                "insert": 8,
                "insert_failed": 9,
                "drop": 10,
                "early_drop": 11,
                "error": 12,
                "search_restart": 16,
            },
        ),
        (
            "stat-3.x.txt",
            {
                "found": 2,
                "invalid": 4,
                "insert": 8,
                "insert_failed": 9,
                "drop": 10,
                "early_drop": 11,
                "error": 12,
            },
        ),
    ],
)
def test_procfs_columns_are_mapped_by_header_name(name, expected):
    entries, stats = parse_procfs_stats((DIR / name).read_text(), name)
    assert entries == 0x1F4
    assert sorted(stats) == [0, 1, 2, 3]
    assert stats[2]["insert_failed"] == (9 << 8) + 2
    # exactly the columns this layout has, none invented as zero
    assert summed(stats) == {key: column_sum(i) for key, i in expected.items()}


def test_procfs_real_file_from_this_kernel():
    entries, stats = parse_procfs_stats((DIR / "stat-6.18.txt").read_text())
    assert entries == 12
    assert summed(stats)["insert"] == 12 and summed(stats)["drop"] == 0
    assert len(stats) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("cpu found\n00000001 00000002\n", "header without an 'entries' column"),
        ("entries  found drop\n00000001  00000002\n", "x:2: 2 fields, header has 3"),
        ("entries  found drop\n00000001  0000000g 00000003\n", "x:2: a column is not a 32-bit hex counter"),
        # issue 11.7: wider than the kernel's unsigned int, down to a ~3,600-digit value
        ("entries  found drop\n00000001  100000000 00000003\n", "x:2: a column is not a 32-bit hex counter"),
        (
            "entries  found drop\n00000001  " + "f" * 3600 + " 00000003\n",
            "x:2: a column is not a 32-bit hex counter",
        ),
    ],
)
def test_procfs_bad_input_is_one_clear_error(text, message):
    with pytest.raises(ParseError) as e:
        parse_procfs_stats(text, "x")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def ctnetlink(cls, msg_type: int, attrs, res_id: int = 0, seq: int = 1, flags: int = 2) -> bytes:
    """A ctnetlink reply as the kernel lays it out, encoded by pyroute2's message classes."""
    msg = cls()
    msg["nfgen_family"], msg["res_id"], msg["attrs"] = 0, res_id, attrs
    msg["header"]["type"], msg["header"]["flags"] = msg_type, flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


DONE = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)


def test_netlink_replies_map_to_the_same_keys():
    # IPCTNL_MSG_CT_GET_STATS_CPU (one message per CPU) and _GET_STATS, encoded by pyroute2
    cpu_msgs = [
        ctnetlink(
            nfct_stats_cpu,
            conntrack.CT_GET_STATS_CPU,
            [
                ("CTA_STATS_INSERT_FAILED", 3),
                ("CTA_STATS_DROP", 5),
                ("CTA_STATS_CHAIN_TOOLONG", 1),
                ("CTA_STATS_ERROR", 2),
            ],
            res_id=0,
        ),
        ctnetlink(
            nfct_stats_cpu,
            conntrack.CT_GET_STATS_CPU,
            [("CTA_STATS_INSERT_FAILED", 4), ("CTA_STATS_SEARCHED", 9)],
            res_id=1,
        ),
    ]
    assert stats_from_netlink([cpu_msgs[0], cpu_msgs[1] + DONE]) == {
        0: {"insert_failed": 3, "drop": 5, "chain_toolong": 1, "error": 2},
        1: {"insert_failed": 4},
    }
    count = [
        ctnetlink(
            nfct_stats,
            conntrack.CT_GET_STATS,
            [("CTA_STATS_GLOBAL_ENTRIES", 17), ("CTA_STATS_GLOBAL_MAX_ENTRIES", 65536)],
        )
    ]
    assert count_from_netlink(count) == (17, 65536)
    old = [ctnetlink(nfct_stats, conntrack.CT_GET_STATS, [("CTA_STATS_GLOBAL_ENTRIES", 17)])]
    assert count_from_netlink(old) == (17, None)


def test_dump_from_the_kernel_counts_protocols_and_tcp_states():
    counts: Counter = Counter()
    assert count_dump([(DIR / "dump-6.18.bin").read_bytes()], counts) is True
    assert counts == {
        ("tcp", "ESTABLISHED"): 4,
        ("tcp", "SYN_SENT"): 1,
        ("tcp", "TIME_WAIT"): 2,
        ("udp", "none"): 4,
        ("icmp", "none"): 1,
    }


def test_dump_errors_are_reported_not_guessed():
    data = (DIR / "dump-6.18.bin").read_bytes()
    counts: Counter = Counter()
    # five whole messages, no NLMSG_DONE yet: the dump continues in the next datagram
    assert count_dump([data[:1248]], counts) is False and sum(counts.values()) == 5
    # a message cut short (the kernel never splits one across datagrams): bytes were lost
    with pytest.raises(ParseError, match="truncated"):
        count_dump([data[: len(data) // 2]], Counter())
    with pytest.raises(ParseError):
        count_dump([struct.pack("=IHHII", 8, 0x101, 0, 0, 0)], Counter())
    error = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -1) + b"\0" * 16  # NLMSG_ERROR, -EPERM
    with pytest.raises(PermissionError):
        count_dump([error], Counter())


def procfs_tree(tmp_path, stat: str | None, count=12, limit=65536, buckets=16384):
    netfilter = tmp_path / "sys" / "net" / "netfilter"
    netfilter.mkdir(parents=True)
    (netfilter / "nf_conntrack_count").write_text(f"{count}\n")
    (netfilter / "nf_conntrack_max").write_text(f"{limit}\n")
    (netfilter / "nf_conntrack_buckets").write_text(f"{buckets}\n")
    if stat:
        (tmp_path / "net" / "stat").mkdir(parents=True)
        (tmp_path / "net" / "stat" / "nf_conntrack").write_text((DIR / stat).read_text())
    return tmp_path


def collector(tmp_path, per_cpu=False, by_state=False) -> ConntrackCollector:
    return COLLECTOR(
        Context(paths=Paths(procfs=str(tmp_path)), options={"per-cpu": per_cpu, "by-state": by_state})
    )


def by_name(families) -> dict:
    return {f.name: f for f in families}


def test_procfs_snapshot_becomes_gauges_and_summed_counters(tmp_path):
    c = collector(procfs_tree(tmp_path, "stat-6.x.txt"))
    snap = c.read_procfs()
    assert (snap.source, snap.entries, snap.limit) == ("procfs", 0x1F4, 65536)
    fams = by_name(c.families(snap))
    assert fams["netstack_conntrack_source_info"].samples[0].labels == {"source": "procfs"}
    assert isinstance(fams["netstack_conntrack_entries"], GaugeMetricFamily)
    assert fams["netstack_conntrack_entries"].samples[0].value == 0x1F4
    assert fams["netstack_conntrack_entries_limit"].samples[0].value == 65536
    assert fams["netstack_conntrack_buckets"].samples[0].value == 16384
    insert_failed = fams["netstack_conntrack_insert_failed"]
    assert isinstance(insert_failed, CounterMetricFamily)
    assert [(s.name, s.labels, s.value) for s in insert_failed.samples] == [
        ("netstack_conntrack_insert_failed_total", {}, column_sum(9))
    ]
    assert fams["netstack_conntrack_chain_toolong"].samples[0].value == column_sum(7)


def test_per_cpu_adds_a_cpu_label(tmp_path):
    c = collector(procfs_tree(tmp_path, "stat-5.x.txt"), per_cpu=True)
    fams = by_name(c.families(c.read_procfs()))
    samples = {s.labels["cpu"]: s.value for s in fams["netstack_conntrack_drop"].samples}
    assert samples == {str(r): (10 << 8) + r for r in range(4)}
    assert "netstack_conntrack_chain_toolong" not in fams  # 5.x has no such column


def test_counters_stay_monotonic_when_a_cpu_counter_wraps(tmp_path):
    c = collector(procfs_tree(tmp_path, "stat-6.x.txt"))
    before = Snapshot("procfs", 1, 1, {0: {"drop": 0xFFFFFFF0}, 1: {"drop": 7}})
    after = Snapshot("procfs", 1, 1, {0: {"drop": 0x10}, 1: {"drop": 7}})
    later = Snapshot("procfs", 1, 1, {0: {"drop": 0x18}, 1: {"drop": 7}})
    first = by_name(c.families(before))["netstack_conntrack_drop"].samples[0].value
    second = by_name(c.families(after))["netstack_conntrack_drop"].samples[0].value
    third = by_name(c.families(later))["netstack_conntrack_drop"].samples[0].value
    assert second == first  # a drop is held back until the next reading confirms the wrap
    assert third - first == 0x28
    # a single 0 (a torn read) is held back and counted, never adopted
    glitch = Snapshot("procfs", 1, 1, {0: {"drop": 0}, 1: {"drop": 7}})
    back = Snapshot("procfs", 1, 1, {0: {"drop": 0x20}, 1: {"drop": 7}})
    fams = by_name(c.families(glitch))
    assert fams["netstack_conntrack_drop"].samples[0].value == third
    assert fams["netstack_conntrack_implausible_readings"].samples[0].value == 2  # the wrap's and this
    assert by_name(c.families(back))["netstack_conntrack_drop"].samples[0].value == third + 8


def test_kernel_without_procfs_stats_still_gives_count_and_max(tmp_path):
    c = collector(procfs_tree(tmp_path, None, count=42))
    snap = c.read_procfs()
    assert (snap.entries, snap.limit, snap.stats) == (42, 65536, {})
    names = set(by_name(c.families(snap)))
    assert names == {
        "netstack_conntrack_source_info",
        "netstack_conntrack_entries",
        "netstack_conntrack_entries_limit",
        "netstack_conntrack_buckets",
        "netstack_conntrack_implausible_readings",
    }


def test_bad_procfs_file_fails_the_collection_with_a_parse_error(tmp_path):
    tree = procfs_tree(tmp_path, "stat-6.x.txt")
    (tree / "net" / "stat" / "nf_conntrack").write_text("entries  drop\n00000001\n")
    with pytest.raises(ParseError, match="nf_conntrack:2: 1 fields, header has 2"):
        collector(tree).read_procfs()


def test_a_garbled_file_at_start_is_a_failure_not_an_absence(tmp_path):
    # Issue 11.1/11.7: the file is there, what it says is wrong: the collector stays available
    # (success 0, available 1) and each collection fails with the reason until it parses.
    tree = procfs_tree(tmp_path, "stat-6.x.txt")
    stat = tree / "net" / "stat" / "nf_conntrack"
    good = stat.read_text()
    stat.write_text("entries  drop\n00000001  " + "f" * 3600 + "\n")
    c = COLLECTOR(Context(paths=Paths(procfs=str(tree)), options={"source": "procfs"}))
    c.probe()  # no SourceUnavailable
    with pytest.raises(ParseError, match="nf_conntrack:2: a column is not a 32-bit hex counter"):
        list(c.collect())
    stat.write_text(good)
    assert "netstack_conntrack_drop" in by_name(c.collect())


def test_probe_without_nf_conntrack_is_unavailable_and_does_not_touch_netlink(tmp_path):
    reason = "nf_conntrack is not loaded: .*nf_conntrack_max does not exist"
    with pytest.raises(SourceUnavailable, match=reason):
        collector(tmp_path).probe()


def test_options_and_name():
    assert COLLECTOR.name == "conntrack" and COLLECTOR.default_enabled
    assert {(o.name, o.kind, o.default) for o in COLLECTOR.options} == {
        ("per-cpu", "bool", False),
        ("by-state", "bool", False),
        ("source", "str", "auto"),
    }


def sourced(tmp_path, source: str) -> ConntrackCollector:
    return COLLECTOR(
        Context(paths=Paths(procfs=str(procfs_tree(tmp_path, "stat-6.18.txt"))), options={"source": source})
    )


def refuse_netlink(monkeypatch) -> None:
    def refused():
        raise conntrack.NetlinkRefused("ctnetlink: Operation not permitted (needs CAP_NET_ADMIN)")

    monkeypatch.setattr(conntrack, "read_netlink", refused)


def test_source_procfs_never_asks_netlink(tmp_path, monkeypatch):
    def asked():
        raise AssertionError("ctnetlink was asked")

    monkeypatch.setattr(conntrack, "read_netlink", asked)
    c = sourced(tmp_path, "procfs")
    c.probe()
    fams = by_name(c.collect())
    assert fams["netstack_conntrack_source_info"].samples[0].labels == {"source": "procfs"}
    assert fams["netstack_conntrack_entries_limit"].samples[0].value == 65536


def test_source_netlink_does_not_fall_back(tmp_path, monkeypatch):
    refuse_netlink(monkeypatch)
    with pytest.raises(SourceUnavailable, match="needs CAP_NET_ADMIN"):
        sourced(tmp_path, "netlink").probe()


def test_source_auto_falls_back_to_procfs(tmp_path, monkeypatch):
    refuse_netlink(monkeypatch)
    c = sourced(tmp_path, "auto")
    c.probe()
    assert by_name(c.collect())["netstack_conntrack_source_info"].samples[0].labels == {"source": "procfs"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--collector.conntrack.source=bogus"], "invalid value 'bogus'"),
        (
            ["--collector.conntrack.source=procfs", "--collector.conntrack.by-state"],
            "by-state needs ctnetlink",
        ),
    ],
)
def test_unusable_source_is_a_command_line_error(argv, message):
    from exporter.cli import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {}, [ConntrackCollector])


def test_an_unreadable_buckets_sysctl_is_logged_once_and_the_rest_served(tmp_path, caplog):
    # Issue 11.16: this read error used to be silent.
    tree = procfs_tree(tmp_path, "stat-6.x.txt")
    (tree / "sys" / "net" / "netfilter" / "nf_conntrack_buckets").write_text("not a number\n")
    c = COLLECTOR(Context(paths=Paths(procfs=str(tree)), options={"source": "procfs"}))
    c.probe()
    for _ in range(2):
        families = by_name(c.collect())
        assert "netstack_conntrack_buckets" not in families
        assert families["netstack_conntrack_entries"].samples[0].value == 0x1F4
    warned = [r for r in caplog.records if r.getMessage() == "conntrack cannot read nf_conntrack_buckets"]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
