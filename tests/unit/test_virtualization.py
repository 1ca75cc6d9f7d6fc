"""virtualization collector on fixture trees: firecracker/ is captured from the test machine (a
real Firecracker KVM guest with /.dockerenv in its root filesystem); the others are built by
tests/fixtures/virtualization/build.py from the strings each platform publishes."""

from __future__ import annotations

import shutil

import pytest

from collectors.virtualization import (
    VirtualizationCollector,
    acpi_oem_id,
    detect,
    modules_loadable,
    parse_environ,
    read_facts,
)
from exporter.contract import Context, Paths
from tests.helpers import FIXTURES

TREES = FIXTURES / "virtualization"


def paths(tree) -> Paths:
    return Paths(procfs=str(tree / "proc"), sysfs=str(tree / "sys"))


def collect(tree) -> dict:
    c = VirtualizationCollector(Context(paths(tree), {"modules-path": str(tree / "lib" / "modules")}))
    return {f.name: {tuple(s.labels.items()): s.value for s in f.samples} for f in c.collect()}


@pytest.mark.parametrize(
    "tree, kind, role, reason",
    [
        ("kvm", "kvm", "guest", "none"),
        ("xen", "xen", "guest", "none"),
        ("xen-dom0", "none", "none", "none"),
        ("vmware", "vmware", "guest", "none"),
        ("hyperv", "hyperv", "guest", "none"),
        ("firecracker", "firecracker", "guest", "no_module_support"),
        ("openvz", "openvz", "container", "shared_kernel"),
        ("lxc", "lxc", "container", "shared_kernel"),
        ("docker", "docker", "container", "shared_kernel"),
        ("docker-cgroup-v1", "docker", "container", "shared_kernel"),
        ("none", "none", "none", "none"),
    ],
)
def test_fixture_trees(tree, kind, role, reason):
    got = collect(TREES / tree)
    assert got["netstack_virtualization_info"] == {(("type", kind), ("role", role)): 1}
    assert got["netstack_kernel_modules_loadable"] == {(("reason", reason),): int(reason == "none")}


def test_firecracker_guest_with_a_dockerenv_marker_is_not_a_container():
    facts = read_facts(paths(TREES / "firecracker"))
    assert facts.dockerenv and facts.pid2_kthreadd and facts.pid1_cgroups == ["/"] * 10
    assert not facts.dmi and facts.cpu_hypervisor_flag and "kvm-clock" in facts.clocksources
    assert detect(facts)[:2] == ("firecracker", "guest")


def test_firecracker_without_acpi_tables_is_kvm(tmp_path):
    tree = tmp_path / "fc"
    shutil.copytree(TREES / "firecracker", tree)
    shutil.rmtree(tree / "sys" / "firmware")
    assert detect(read_facts(paths(tree)))[:2] == ("kvm", "guest")


def test_qemu_without_kvm_clock_is_plain_qemu(tmp_path):
    tree = tmp_path / "tcg"
    shutil.copytree(TREES / "kvm", tree)
    (tree / "sys/devices/system/clocksource/clocksource0/available_clocksource").write_text("tsc hpet\n")
    assert detect(read_facts(paths(tree)))[0] == "qemu"


def test_modules_disabled_and_missing_module_tree(tmp_path):
    tree = tmp_path / "none"
    shutil.copytree(TREES / "none", tree)
    (tree / "proc/sys/kernel/modules_disabled").write_text("1\n")
    assert modules_loadable(paths(tree), "none", str(tree / "lib/modules")) == (False, "modules_disabled")
    (tree / "proc/sys/kernel/modules_disabled").write_text("0\n")
    assert modules_loadable(paths(tree), "none", str(tmp_path / "nowhere")) == (False, "no_modules_directory")


def test_container_variable_from_systemd_file(tmp_path):
    tree = tmp_path / "nspawn"
    shutil.copytree(TREES / "none", tree)
    (tree / "proc/1/environ").unlink()  # no ptrace access to PID 1's environment
    (tree / "proc/1/root/run/systemd").mkdir(parents=True)
    (tree / "proc/1/root/run/systemd/container").write_text("systemd-nspawn\n")
    assert detect(read_facts(paths(tree)))[:2] == ("systemd-nspawn", "container")


def test_openvz_host_node_is_not_a_container(tmp_path):
    tree = tmp_path / "vzhost"
    shutil.copytree(TREES / "none", tree)
    (tree / "proc/vz").mkdir()
    (tree / "proc/bc").mkdir()
    assert detect(read_facts(paths(tree)))[1] == "none"
    shutil.rmtree(tree / "proc/vz")
    (tree / "proc/user_beancounters").write_text("Version: 2.5\n")
    assert detect(read_facts(paths(tree)))[1] == "none"  # the host node has /proc/bc


def test_openvz_container_known_by_its_beancounters_alone(tmp_path):
    # /proc/vz hidden from the container: /proc/user_beancounters without /proc/bc still says OpenVZ
    tree = tmp_path / "vz"
    shutil.copytree(TREES / "openvz", tree)
    shutil.rmtree(tree / "proc/vz")
    evidence = "/proc/user_beancounters without /proc/bc"
    assert detect(read_facts(paths(tree))) == ("openvz", "container", evidence)
    assert collect(tree)["netstack_kernel_modules_loadable"] == {(("reason", "shared_kernel"),): 0}


def test_empty_tree_is_none(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").mkdir()
    assert detect(read_facts(paths(tmp_path)))[:2] == ("none", "none")


def test_small_parsers():
    assert parse_environ(b"container=lxc\0TERM=linux\0junk\0") == {"container": "lxc", "TERM": "linux"}
    header = (TREES / "firecracker/sys/firmware/acpi/tables/FACP").read_bytes()[:36]
    assert acpi_oem_id(header) == "FIRECK"
    assert acpi_oem_id(b"short") is None
