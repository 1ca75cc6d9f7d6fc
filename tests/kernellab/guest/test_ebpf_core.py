"""The CO-RE objects built on the host (kernel 6.18) loaded unchanged by the libbpf backend on
Debian's 6.1 kernel: exact NO_SOCKET counts under 6.1's own reason numbering, NET_RX wait
samples, a BTF file given with btf-path (and a garbage one named), and a program that cannot
attach reported by its collector only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.ebpf_drops import EbpfDrops
from collectors.ebpf_libbpf import LibbpfLoader, object_path
from collectors.ebpf_softirq import EbpfSoftirq
from exporter.contract import Context, SourceUnavailable
from tests.helpers import samples, value
from tests.kernellab.guest.conftest import GuestExporter

N = 5000
SEND = (
    "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[1])):\n    s.sendto(b'x', ('127.0.0.1', int(sys.argv[2])))\n"
)
ECHO = (
    "import socket, sys\nr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "r.bind(('127.0.0.1', 0))\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[1])):\n    s.sendto(b'x', r.getsockname())\n    r.recv(16)\n"
)
ARGS = (
    "--collector.disable-defaults",
    "--collector.ebpf_drops",
    "--collector.ebpf_softirq",
    "--collector.ebpf_drops.backend=libbpf",
    "--collector.ebpf_softirq.backend=libbpf",
)


def no_socket(metrics) -> float:
    return sum(samples(metrics, "netstack_skb_drops_total", reason="NO_SOCKET").values())


def both_loaded(metrics) -> bool:
    return all(
        value(metrics, "netstack_scrape_collector_success", collector=c) == 1
        for c in ("ebpf_drops", "ebpf_softirq")
    )


@pytest.fixture(scope="module")
def core_exporter():
    for name in ("softirq", "drops"):
        assert os.path.exists(object_path(name)), "built on the host by the package build"
    with GuestExporter(*ARGS) as exporter:
        exporter.scrape_until(both_loaded, what="both eBPF collectors loaded")
        yield exporter


def test_the_hosts_objects_run_here(core_exporter):
    digests = {
        n: hashlib.sha256(Path(object_path(n)).read_bytes()).hexdigest()[:12] for n in ("softirq", "drops")
    }
    print(f"kernel {os.uname().release}, objects {digests}")  # shown with -s: same files as host
    assert "backend=libbpf" in core_exporter.log()


def test_no_socket_counted_exactly_under_6_1_numbering(core_exporter):
    """6.1 numbers NO_SOCKET 2 (6.18: 3); the guest is a machine of its own, so nothing else
    drops: the increase is exactly N."""
    before = no_socket(core_exporter.scrape())
    subprocess.run([sys.executable, "-c", SEND, str(N), "9"], check=True, timeout=600)
    after = no_socket(core_exporter.scrape())
    assert after - before == N, (before, after)


def test_net_rx_wait_samples(core_exporter):
    def rx_wait(metrics):
        return value(metrics, "netstack_softirq_wait_seconds_count", vector="NET_RX")

    before = rx_wait(core_exporter.scrape())
    subprocess.run([sys.executable, "-c", ECHO, "500"], check=True, timeout=600)
    after = rx_wait(core_exporter.scrape())
    assert after - before >= 500


def test_sampled_net_rx_wait(core_exporter):
    """sample-every=4 on 6.1 (the verifier takes the sampling code there too): counts are the
    timed runs times 4 and still about one per datagram (the guest has no other traffic)."""
    softirq = EbpfSoftirq(Context(options={"backend": "libbpf", "sample-every": 4}))

    def rx_wait():
        [wait] = [f for f in softirq.collect() if f.name == "netstack_softirq_wait_seconds"]
        return sum(
            s.value for s in wait.samples if s.name.endswith("_count") and s.labels["vector"] == "NET_RX"
        )

    try:
        softirq.probe()
        softirq.start()
        assert softirq.load.wait(120)
        before = rx_wait()
        subprocess.run([sys.executable, "-c", ECHO, "800"], check=True, timeout=600)
        after = rx_wait()
    finally:
        softirq.close()
    assert after % 4 == 0 and before % 4 == 0
    assert 600 <= after - before <= 1200, (before, after)


def test_a_program_that_cannot_attach_is_reported_by_its_collector(tmp_path):
    """A drops object reading a fifth kfree_skb argument (6.1 has three): EINVAL at attach,
    reported by ebpf_drops; ebpf_softirq from the same directory works."""
    clang = shutil.which("clang")
    assert clang, "clang from the host's root"
    (tmp_path / "vmlinux.h").write_bytes(
        subprocess.run(
            ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
            check=True,
            capture_output=True,
        ).stdout
    )
    (tmp_path / "drops.bpf.c").write_text("""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16);
         __type(key, __u32); __type(value, __u64); } drops SEC(".maps");
SEC("raw_tp/kfree_skb")
int tracepoint__skb__kfree_skb(__u64 *ctx)
{
    __u32 key = ctx[5];
    __u64 one = 1;
    bpf_map_update_elem(&drops, &key, &one, BPF_ANY);
    return 0;
}
char LICENSE[] SEC("license") = "GPL";
""")
    subprocess.run(
        [
            clang,
            "-target",
            "bpf",
            "-O2",
            "-g",
            "-I",
            str(tmp_path),
            "-c",
            str(tmp_path / "drops.bpf.c"),
            "-o",
            str(tmp_path / "drops.bpf.o"),
        ],
        check=True,
    )
    shutil.copy(object_path("softirq"), tmp_path / "softirq.bpf.o")
    loader = LibbpfLoader(str(tmp_path))
    drops = EbpfDrops(Context(options={}), loader)
    softirq = EbpfSoftirq(Context(options={}), loader)
    try:
        for c in (drops, softirq):
            c.probe()
            c.start()
            assert c.load.wait(120)
        with pytest.raises(SourceUnavailable, match=r"raw tracepoint kfree_skb \(skb:kfree_skb\): EINVAL"):
            drops.program()
        wait, _service = list(softirq.collect())
        assert wait.name == "netstack_softirq_wait_seconds"
    finally:
        drops.close()
        softirq.close()


def test_btf_path_copy_of_the_kernels_btf_loads_and_counts(tmp_path):
    """--collector.ebpf_drops.btf-path with a copy of 6.1's own BTF (as a BTFHub file would be
    given): loads and counts exactly; a garbage file is named in the collector's reason."""
    btf = tmp_path / "vmlinux-6.1.btf"
    shutil.copy("/sys/kernel/btf/vmlinux", btf)
    garbage = tmp_path / "garbage.btf"
    garbage.write_bytes(b"not BTF at all\n" * 64)
    with GuestExporter(
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_drops.backend=libbpf",
        f"--collector.ebpf_drops.btf-path={btf}",
    ) as exporter:
        exporter.scrape_until(
            lambda m: value(m, "netstack_scrape_collector_success", collector="ebpf_drops") == 1,
            what="ebpf_drops loaded with btf-path",
        )
        before = no_socket(exporter.scrape())
        subprocess.run([sys.executable, "-c", SEND, str(N), "9"], check=True, timeout=600)
        assert no_socket(exporter.scrape()) - before == N
    drops = EbpfDrops(Context(options={"backend": "libbpf", "btf-path": str(garbage)}))
    with pytest.raises(SourceUnavailable, match=rf"BTF file {garbage} \(btf-path\) cannot be used"):
        drops.probe()
