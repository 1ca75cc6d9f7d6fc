"""IPVS collector against the real kernel (generic netlink transport, the missing IPVS family) and
through the real exporter process on fixture trees. This kernel has no IPVS, so the table itself
comes from fixture files; see tests/unit/test_ipvs.py for the netlink decoder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from collectors import ipvs
from exporter.contract import Context, Paths, SourceUnavailable
from tests.helpers import FIXTURES, Exporter, samples, value

FIX = FIXTURES / "ipvs"
HOST_HAS_IPVS = os.path.exists("/proc/net/ip_vs")


def ip_vs_loadable() -> bool:
    """ip_vs exists as a module of the running kernel (asking netlink for IPVS would load it)."""
    try:
        deps = (Path("/lib/modules") / os.uname().release / "modules.dep").read_text()
    except OSError:
        return False
    return "/ip_vs.ko" in deps


def test_genl_transport_against_the_kernel():
    """The same client the collector uses: a family lookup and a multi-part dump (of nlctrl, the
    generic netlink controller, which every kernel has), read until NLMSG_DONE."""
    genl = ipvs.GenlSocket()
    try:
        assert genl.family_id("nlctrl") == ipvs.GENL_ID_CTRL
        chunks = genl.request(
            ipvs.GENL_ID_CTRL, ipvs.NLM_F_REQUEST | ipvs.NLM_F_DUMP, ipvs.CTRL_CMD_GETFAMILY, 1, b""
        )
        names = set()
        for buf, off, end in ipvs.genl_messages(chunks, ipvs.GENL_ID_CTRL):
            start, stop = ipvs._attrs(buf, off, end)[ipvs.CTRL_ATTR_FAMILY_NAME]
            names.add(bytes(buf[start:stop]).rstrip(b"\0").decode())
        assert {"nlctrl"} <= names and len(names) > 1
        # the socket is usable again after a complete dump
        assert genl.family_id("nlctrl") == ipvs.GENL_ID_CTRL
    finally:
        genl.close()


def test_unknown_family_is_netlink_unavailable():
    """ENOENT from the real kernel's controller. (Not asked for "IPVS" unless ip_vs is loaded:
    the lookup would make a kernel with ip_vs as a module load it.)"""
    genl = ipvs.GenlSocket()
    try:
        with pytest.raises(ipvs.NetlinkUnavailable, match="family NETSTACK_NONE is not registered"):
            genl.family_id("NETSTACK_NONE")
        if HOST_HAS_IPVS:
            assert genl.family_id("IPVS") > ipvs.GENL_ID_CTRL
    finally:
        genl.close()


def test_probe_on_this_host_names_both_missing_sources():
    if HOST_HAS_IPVS:
        pytest.skip("this host has IPVS; the unavailable reason cannot be observed")
    collector = ipvs.IpvsCollector(Context(paths=Paths(), options={}))
    with pytest.raises(SourceUnavailable) as e:
        collector.probe()
    assert str(e.value) == (
        "IPVS not available (ip_vs module not loaded?): netlink: not asked, ip_vs "
        "is not loaded (not in /proc/modules or /sys/module); /proc/net/ip_vs "
        "does not exist"
    )


def test_exporter_serves_the_fixture_table():
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ipvs",
        "--collector.ipvs.backends",
        "--collector.ipvs.source=procfs",
        f"--path.procfs={FIX / 'full'}",
        f"--path.sysfs={FIX / 'sysfs'}",
    ) as exporter:
        m = exporter.scrape()
    assert value(m, "netstack_scrape_collector_success", collector="ipvs") == 1
    assert value(m, "netstack_ipvs_services") == 11
    assert value(m, "netstack_ipvs_services_without_backends") == 3
    assert value(m, "netstack_ipvs_connections_total") == 0x1A2B
    assert (
        value(
            m,
            "netstack_ipvs_service_backends",
            protocol="UDP",
            address="10.96.0.10",
            port="53",
            scheduler="rr",
        )
        == 2
    )
    assert len(samples(m, "netstack_ipvs_backend_weight")) == 13
    assert value(m, "netstack_kernel_module_loaded", module="nf_conntrack") == 1
    assert value(m, "netstack_ipvs_sysctl", sysctl="net.ipv4.conf.all.arp_announce") == 2


def test_exporter_auto_source_falls_back_to_procfs_on_this_kernel():
    """The fixture says ip_vs is loaded, so the collector asks the real kernel, which says ENOENT."""
    if HOST_HAS_IPVS or ip_vs_loadable():
        pytest.skip("this kernel has IPVS (or could load it); auto would read or load the real table")
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ipvs",
        f"--path.procfs={FIX / 'full'}",
        f"--path.sysfs={FIX / 'sysfs'}",
    ) as exporter:
        m = exporter.scrape()
        log = exporter.log()
    assert value(m, "netstack_ipvs_source_info", source="procfs") == 1
    assert value(m, "netstack_ipvs_services") == 11
    assert "family IPVS is not registered" in log and "Traceback" not in log


def test_exporter_keeps_serving_when_the_table_is_malformed(tmp_path):
    (tmp_path / "net").mkdir()
    shutil.copy(FIX / "malformed/net/ip_vs", tmp_path / "net/ip_vs")
    shutil.copy("/proc/stat", tmp_path / "stat")  # for the cpu collector, which must keep working
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ipvs",
        "--collector.cpu",
        "--collector.ipvs.source=procfs",
        f"--path.procfs={tmp_path}",
    ) as exporter:
        m = exporter.scrape()
        log = exporter.log()
    assert value(m, "netstack_scrape_collector_success", collector="ipvs") == 0
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
    assert not samples(m, "netstack_ipvs_services")
    failures = [line for line in log.splitlines() if "collector=ipvs" in line]
    assert len(failures) == 1 and f"{tmp_path}/net/ip_vs:5: unexpected line" in failures[0]
    assert "Traceback" not in log


def test_exporter_reports_ipvs_unavailable(tmp_path):
    if HOST_HAS_IPVS:
        pytest.skip("this host has IPVS")
    (tmp_path / "modules").write_text("nf_conntrack 196608 1 nf_nat, Live 0x0000000000000000\n")
    (tmp_path / "sys").mkdir()
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ipvs",
        f"--path.procfs={tmp_path}",
        f"--path.sysfs={tmp_path / 'sys'}",
    ) as exporter:
        m = exporter.scrape()
        log = exporter.log()
    assert value(m, "netstack_collector_available", collector="ipvs") == 0
    assert value(m, "netstack_scrape_collector_success", collector="ipvs") == 0
    assert "IPVS not available" in log and "Traceback" not in log
    # Still said while unavailable: which prerequisite is missing.
    assert value(m, "netstack_kernel_module_loaded", module="ip_vs") == 0
    assert value(m, "netstack_kernel_module_loaded", module="nf_conntrack") == 1
