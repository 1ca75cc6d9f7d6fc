"""Every default collector against Debian's 6.1 kernel: each one available and succeeding (those
that need something a node may lack say what), softnet's 13 columns and conntrack's per-CPU
statistics read right, and ip_vs never loaded by the exporter itself."""

from __future__ import annotations

from pathlib import Path

from collectors import available_collectors, ipvs
from tests.helpers import samples, value
from tests.kernellab.guest.conftest import loaded_modules

# Default collectors that are unavailable in the guest for a reason a real node can share.
UNAVAILABLE_HERE = {
    "bgp": "no Calico/BIRD control socket in the guest",
    "ipvs": "ip_vs is not loaded yet (test_exporter_does_not_load_ip_vs)",
}


def default_collectors() -> list[str]:
    return [c.name for c in available_collectors() if c.default_enabled]


def softnet_rows() -> list[list[int]]:
    return [
        [int(v, 16) for v in line.split()] for line in Path("/proc/net/softnet_stat").read_text().splitlines()
    ]


def conntrack_stats() -> dict[str, int]:
    """/proc/net/stat/nf_conntrack summed over CPUs, by column name."""
    header, *rows = Path("/proc/net/stat/nf_conntrack").read_text().splitlines()
    sums = dict.fromkeys(header.split(), 0)
    for row in rows:
        for name, v in zip(header.split(), row.split()):
            sums[name] += int(v, 16)
    return sums


def test_exporter_does_not_load_ip_vs(default_exporter):
    """The kernel loads ip_vs for anyone who asks generic netlink for the IPVS family; the
    exporter must not ask while ip_vs is absent. Proven here by asking afterwards ourselves."""
    m = default_exporter.scrape()
    m = default_exporter.scrape()
    assert "ip_vs" not in loaded_modules()
    assert value(m, "netstack_collector_available", collector="ipvs") == 0
    assert value(m, "netstack_kernel_module_loaded", module="ip_vs") == 0
    assert value(m, "netstack_kernel_module_loaded", module="nf_conntrack") == 1
    # The control: this kernel does autoload ip_vs through the family lookup.
    genl = ipvs.GenlSocket()
    try:
        assert genl.family_id("IPVS") > ipvs.GENL_ID_CTRL
    finally:
        genl.close()
    assert "ip_vs" in loaded_modules()


def test_every_default_collector_runs(default_exporter):
    m = default_exporter.scrape()
    enabled = {dict(k[1])["collector"] for k in samples(m, "netstack_collector_available")}
    assert enabled == set(default_collectors())
    for name in sorted(enabled):
        available = value(m, "netstack_collector_available", collector=name)
        if name in UNAVAILABLE_HERE:
            continue
        assert available == 1, f"{name} unavailable on 6.1: {default_exporter.log()[-2000:]}"
        assert value(m, "netstack_scrape_collector_success", collector=name) == 1, name
    assert "Traceback" not in default_exporter.log()


def test_softnet_thirteen_columns(default_exporter):
    before = softnet_rows()
    m = default_exporter.scrape()
    after = softnet_rows()
    assert {len(row) for row in before} == {13}, "6.1 prints 13 softnet_stat columns"
    processed = sum(samples(m, "netstack_softnet_processed_total").values())
    assert sum(r[0] for r in before) <= processed <= sum(r[0] for r in after)
    # one series per online CPU, labelled by the CPU number in the 13th column
    cpus = {dict(k[1])["cpu"] for k in samples(m, "netstack_softnet_backlog_packets")}
    assert cpus == {str(r[12]) for r in after}
    for name, column in (
        ("dropped", 1),
        ("times_squeezed", 2),
        ("received_rps", 9),
        ("flow_limit_count", 10),
    ):
        got = sum(samples(m, f"netstack_softnet_{name}_total").values())
        assert sum(r[column] for r in before) <= got <= sum(r[column] for r in after), name


def test_conntrack_statistics(default_exporter):
    before = conntrack_stats()
    m = default_exporter.scrape()
    after = conntrack_stats()
    assert {"found", "insert_failed", "drop", "early_drop", "search_restart"} <= set(before)
    for key in (
        "found",
        "invalid",
        "insert",
        "insert_failed",
        "drop",
        "early_drop",
        "error",
        "search_restart",
        "clash_resolve",
        "chain_toolong",
    ):
        if key not in before:
            continue
        got = value(m, f"netstack_conntrack_{key}_total")
        assert before[key] <= got <= after[key], key
    count = int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
    limit = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    assert value(m, "netstack_conntrack_entries_limit") == limit
    assert abs(value(m, "netstack_conntrack_entries") - count) <= 5
